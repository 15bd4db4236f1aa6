#!/usr/bin/env bash
# The fold / insert / none A/B on one GPU, within about 8 minutes (H100/H200, 16 CPU cores).
#
#   bash benchmarks/gpu_ab.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_ab.sh --smoke    # on CPU, tiny sizes, about a minute: checks the script, not the claim
#
# What it prints (details: benchmarks/ab.py, docs/gradients.md):
#   ΔmIoU (mode − none) mean ± std over seeds, for fold and insert: upernet_convnext_tiny (random init)
#     on `eqsurgeon demo-data --kind multiscale` at 512², batch 8, bf16, AB_ITERS iterations × AB_SEEDS
#     seeds (AB_TRAIN_LIMIT_S bounds this part: raise it with them on a longer lease)
#   each fusion site's grad_ratio against iterations, per mode (logged by the trainer)
#   the step time of insert against none, eager and under torch.compile
# Logs go to $OUT/gpu_ab/ when OUT is set (else a temporary folder). Each part runs under its own time
# limit, so one that fails or hangs does not stop the others; the summary's last line is one JSON object.
#
#   part                   limit   (GPU)
#   train (A/B runs)        280 s   AB_ITERS (150) iterations × 3 modes × AB_SEEDS (3) seeds, data included
#   steps (eager)            40 s
#   steps --compile    the rest    two compilations (none, insert), at most 150 s
#   total              GPU_AB_BUDGET_S, default 470 s
set -u
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${GPU_AB_BUDGET_S:-470}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG_DIR="${OUT:-$(mktemp -d)}/gpu_ab"
mkdir -p "$LOG_DIR"
START=$(date +%s)

step() {  # step NAME LIMIT_S CMD...: run with a time limit, tee its log, never abort the script
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s): $*"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    [[ $rc -eq 0 ]] || echo "!!! $name exited with $rc (124 = over its time limit); the other parts go on"
    echo "$rc" > "$LOG_DIR/$name.rc"
}

if [[ $SMOKE -eq 1 ]]; then
    DEV=(--device cpu)
    TRAIN=("${DEV[@]}" --iters 4 --seeds 2 --images 8)
    TRAIN_LIMIT=240
    STEPS_LIMIT=60
    COMPILE=0  # torch.compile on 2 CPU cores takes minutes: the GPU run measures it
else
    DEV=(--device cuda)
    TRAIN=("${DEV[@]}" --iters "${AB_ITERS:-150}" --seeds "${AB_SEEDS:-3}")
    TRAIN_LIMIT=${AB_TRAIN_LIMIT_S:-280}
    STEPS_LIMIT=40
    COMPILE=1
fi

step env 20 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
    || echo 'no nvidia-smi'; nproc; $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", \
torch.cuda.is_available())'"
step train "$TRAIN_LIMIT" "$PY" benchmarks/ab.py train "${TRAIN[@]}" --out "$LOG_DIR/work"
step steps "$STEPS_LIMIT" "$PY" benchmarks/ab.py steps "${DEV[@]}"
LEFT=$(( BUDGET - ($(date +%s) - START) - 5 ))
(( LEFT > 150 )) && LEFT=150
if [[ $COMPILE -eq 1 ]]; then
    if (( LEFT >= 60 )); then
        step steps_compile "$LEFT" "$PY" benchmarks/ab.py steps "${DEV[@]}" --compile
    else
        echo "!!! steps --compile skipped: only ${LEFT}s of the ${BUDGET}s budget left"
    fi
fi

echo
echo "=== summary ($(( $(date +%s) - START ))s; logs in $LOG_DIR)"
"$PY" benchmarks/ab.py summary "$LOG_DIR" | tee "$LOG_DIR/summary.log"
