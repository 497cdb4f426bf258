#!/usr/bin/env bash
# A GPU as a measured latency device (issue 14, item 6), in one command: for each batch size, build the
# lookup table of ofa_mbv3_w1.0 on local-cuda-b<B>-torch (CUDA-event timing), fit the predictors on timed
# subnets, and evaluate table and predictors on fresh subnets each timed twice (the repeat is the
# measurement's own floor). Runs without Ray or Optuna (in process, --no-ray).
#
#   experiments/benchmarks/gpu_latency.sh OUT_DIR [BATCH ...]          # on the GPU machine (default: 1 64)
#   GPU_LATENCY_DEVICE=local-cpu-1t-torch GPU_LATENCY_RES="160" GPU_LATENCY_SAMPLES=4 \
#       experiments/benchmarks/gpu_latency.sh /tmp/gl 1                  # CPU smoke run of the same steps
#
# Writes OUT_DIR/gpu_latency.txt (every command and its output) and OUT_DIR/gpu_latency.tar.gz (the device
# folders: tables, measurements, predictors, eval reports), to be unpacked into $HWNAS_HOME.
set -u
out=${1:?usage: gpu_latency.sh OUT_DIR [BATCH ...]}
shift
batches=${*:-1 64}
python=${PYTHON:-python3}
space=${GPU_LATENCY_SPACE:-ofa_mbv3_w1.0}
resolutions=${GPU_LATENCY_RES:-160 192 224}
samples=${GPU_LATENCY_SAMPLES:-30}
repeats=${GPU_LATENCY_REPEATS:-20}
home=${GPU_LATENCY_HOME:-$(mktemp -d /tmp/hwnas-gpu-latency.XXXXXX)}
mkdir -p "$home"
export HWNAS_HOME=$home
mkdir -p "$out"
log="$out/gpu_latency.txt"
: >"$log"
cd "$(dirname "$0")/../.." || exit 2

step() {
    echo "\$ $*" | tee -a "$log"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "[rc=$rc, $((SECONDS - t0)) s]" | tee -a "$log"
    return "$rc"
}

status=0
for b in $batches; do
    device=${GPU_LATENCY_DEVICE:-local-cuda-b$b-torch}
    [ -n "${GPU_LATENCY_DEVICE:-}" ] && [ "$b" != 1 ] && device="$device-b$b"
    common=(--space "$space" --device "$device" --resolutions $resolutions --no-ray --repeats "$repeats")
    step "$python" -m nas latency build "${common[@]}" --quiet || { status=1; continue; }
    step "$python" -m nas latency fit "${common[@]}" --samples "$samples" --quiet || status=1
    step "$python" -m nas latency eval "${common[@]}" --samples "$samples" --quiet || status=1
done
step "$python" -m nas devices --home "$home"
tar -czf "$out/gpu_latency.tar.gz" -C "$home" devices
exit $status
