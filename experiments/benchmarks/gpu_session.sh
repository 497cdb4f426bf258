#!/usr/bin/env bash
# Issue 9's next measurements on the lent GPU machine, sized for one call (at most 10 minutes) each:
#
#   accuracy  the GPU check's accuracy part at 6 epochs with the sandwich rule at a quarter of the recipe's
#             learning rate (the H200 runs of 2026-11-26 diverged at 1.0 and trailed at 0.5), progressive
#             shrinking and the three from-scratch subnets beside it (~320 s on an H200)
#   launch    the throughput part with --launch-bound: the largest subnet's step in a CUDA graph and at
#             twice the batch, after the usual variants (~2-3 min)
#
#   experiments/benchmarks/gpu_session.sh OUT_DIR [accuracy|launch|all]     # on the GPU machine (default: all)
#   GPU_SESSION_TINY=1 experiments/benchmarks/gpu_session.sh /tmp/gs all     # CPU smoke of the same steps
#
# The CIFAR-10 part travels with the code, packed here beforehand (ignored by git; name it in the call's carry):
#   .venv/bin/python experiments/benchmarks/cifar_pack.py ../shared/data/cifar10 .gpu_data --train 30000 --test 5000
# Each part writes OUT_DIR/<part>/gpu_check.{json,md} as it goes and OUT_DIR/<part>.log; a part cut by its
# timeout keeps what it measured.
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [accuracy|launch|all]}
part=${2:-all}
python=${PYTHON:-python3}
data=${GPU_DATA:-.gpu_data}
cd "$(dirname "$0")/../.." || exit 2
case "$part" in accuracy|launch|all) ;; *) echo "gpu_session.sh: unknown part '$part'; allowed: accuracy, launch, all" >&2; exit 2;; esac
if [ ! -d "$data" ]; then
    echo "gpu_session.sh: no CIFAR-10 data at '$data' (pack it with cifar_pack.py, or set GPU_DATA)" >&2
    exit 2
fi
mkdir -p "$out"
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; "$python" -c "import torch; print('torch', torch.__version__)"; } \
    >"$out/machine.txt"
tiny=()
if [ -n "${GPU_SESSION_TINY:-}" ]; then tiny=(--tiny); fi

run() {  # run NAME TIMEOUT_S ARGS...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $python experiments/benchmarks/gpu_check.py --data $data --out $out/$name $* ${tiny[*]}" \
        | tee "$out/$name.log"
    timeout "$limit" "$python" experiments/benchmarks/gpu_check.py --data "$data" --out "$out/$name" "$@" \
        "${tiny[@]}" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$out/$name.log"
}

if [ "$part" = accuracy ] || [ "$part" = all ]; then
    run accuracy 400 --skip throughput --epochs 6 --sandwich-lr-factor 0.25
fi
if [ "$part" = launch ] || [ "$part" = all ]; then
    run launch 200 --skip accuracy --launch-bound
fi
