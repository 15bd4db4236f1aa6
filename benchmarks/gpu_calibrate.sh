#!/usr/bin/env bash
# Issue 3's GPU figures in one run (about 3 minutes on one H100/H200 with 16 CPU cores):
# bench_calibrate at 512x512 on upernet_convnext_tiny, fp32 and bf16 autocast, logs in $OUT/gpu_calibrate/.
#
#   bash benchmarks/gpu_calibrate.sh           # on the GPU machine, from the repository root
#   bash benchmarks/gpu_calibrate.sh --smoke   # on CPU at 64x64: checks the script, not the speed
set -u
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG_DIR="${OUT:-$(mktemp -d)}/gpu_calibrate"
mkdir -p "$LOG_DIR"
if [[ "${1:-}" == "--smoke" ]]; then
    ARGS=(--device cpu --size 64 --images 48 --batches 2 --repeats 1)
    LIMIT=120
else
    ARGS=(--device cuda --size 512 --model upernet_convnext_tiny --images 768 --workers 2)
    LIMIT=150
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "cpus", __import__("os").cpu_count())'
for amp in "" --amp; do
    name=bench_calibrate${amp:+_amp}
    echo "=== $name ${ARGS[*]} $amp"
    timeout --kill-after=5 "$LIMIT" "$PY" benchmarks/bench_calibrate.py "${ARGS[@]}" $amp 2>&1 | tee "$LOG_DIR/$name.log"
    echo "rc ${PIPESTATUS[0]}"
done
