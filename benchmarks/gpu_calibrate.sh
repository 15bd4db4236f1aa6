#!/usr/bin/env bash
# Issue 3's GPU figures in one run (about 5 minutes on one H100/H200 with 16 CPU cores), logs in
# $OUT/gpu_calibrate/: a check that bf16 moments need no float32 copy and match float64 (and the CUDA
# test of it); bench_calibrate at 512x512 on upernet_convnext_tiny, fp32 and bf16 autocast; then
# bench_train (eager) for issue 6's figures.
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
DEV=${ARGS[1]}
FAILED=0
"$PY" - "$DEV" <<'PYEOF' 2>&1 | tee "$LOG_DIR/bf16_moments.log"
import sys, torch
from eqsurgeon.measure import batch_moments
dev = sys.argv[1]
x = (torch.randn(8, 2048, 128, 128, device=dev) * 0.7 + 0.5).relu().bfloat16()[:, 512:1024]
exact = x.double()
base = torch.cuda.memory_allocated() if dev == "cuda" else 0
if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
mean, var = batch_moments(x, one_pass=True)
extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev == "cuda" else float("nan")
print(f"bf16 slice {tuple(x.shape)} ({x.numel() * 2 / 2**20:.0f} MiB): extra memory {extra:.1f} MiB, "
      f"mean rel err {abs(mean.item() / exact.mean().item() - 1):.2e}, "
      f"var rel err {abs(var.item() / exact.var(unbiased=False).item() - 1):.2e}")
PYEOF
[[ "$DEV" == cuda ]] && timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_measure.py -k moments 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "cpus", __import__("os").cpu_count())'
for amp in "" --amp; do
    name=bench_calibrate${amp:+_amp}
    echo "=== $name ${ARGS[*]} $amp"
    timeout --kill-after=5 "$LIMIT" "$PY" benchmarks/bench_calibrate.py "${ARGS[@]}" $amp 2>&1 | tee "$LOG_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    echo "rc $rc"
    (( rc == 0 )) || FAILED=1
done
if [[ "$DEV" == cuda ]]; then
    echo "=== bench_train (eager; cudnn.benchmark on)"
    timeout --kill-after=5 150 "$PY" benchmarks/bench_train.py --device cuda --iters 50 --window 10 --repeats 2 2>&1 \
        | tee "$LOG_DIR/bench_train.log"
    rc=${PIPESTATUS[0]}
    echo "rc $rc"
    (( rc == 0 )) || FAILED=1
fi
exit $FAILED
