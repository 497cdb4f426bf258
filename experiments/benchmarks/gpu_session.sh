#!/usr/bin/env bash
# Issue 9's next measurements on the lent GPU machine, sized to fit one call (at most 10 minutes) together:
#
#   accuracy  the GPU check's accuracy part at 12 epochs with the sandwich rule as the third session settled
#             it (3 subnets a step at 0.4 of the recipe's rate; progressive shrinking left out, it trailed by
#             19-21 points) beside the three subnets from scratch (the third session has small and medium
#             from scratch at 12 epochs: 81.6%, 82.1%), ~350 s on an H200 (~14 s a sandwich epoch before the
#             in-place gradients, ~12 s for the three from-scratch epochs)
#   launch    the throughput part with --launch-bound: the supernet / static step at random subnets since
#             the active weights are one strided view each (1.28 in the third session, before), sandwich
#             steps with and without the in-place gradients, the step in a CUDA graph and at twice the
#             batch (~2.5 min)
#
#   experiments/benchmarks/gpu_session.sh OUT_DIR [accuracy|launch|all]     # on the GPU machine (default: all)
#   GPU_SESSION_TINY=1 experiments/benchmarks/gpu_session.sh /tmp/gs all     # CPU smoke of the same steps
#
# The CIFAR-10 part travels with the code, packed here beforehand (ignored by git; name it in the call's carry):
#   .venv/bin/python experiments/benchmarks/cifar_pack.py ../shared/data/cifar10 .gpu_data --train 30000 --test 5000
# Each part writes OUT_DIR/<part>/gpu_check.{json,md} as it goes and OUT_DIR/<part>.log; a part cut by its
# timeout keeps what it measured. Run `all` with the call's timeout_s at 600: the parts' own limits add to 590.
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
    run accuracy 400 --skip throughput --skip ps --epochs 12 --sandwich-subnets 3 --sandwich-lr-factor 0.4
fi
if [ "$part" = launch ] || [ "$part" = all ]; then
    run launch 190 --skip accuracy --launch-bound
fi
