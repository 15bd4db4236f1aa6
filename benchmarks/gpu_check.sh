#!/usr/bin/env bash
# Every GPU figure of issues 6 and 3, in one run that fits 8 minutes on one H100/H200 with 16 CPU cores.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --smoke    # on CPU, tiny sizes: checks the script, not the speed
#
# Needs torch/torchvision/timm/... installed and the project importable (PYTHONPATH=$PWD is set here).
# Logs go to $OUT/gpu_check/ when OUT is set (else a temporary folder). Each bench runs under its own
# time limit, so one that fails or hangs does not stop the others; the summary at the end quotes the
# headline figures of those that finished.
#
#   bench                        limit   what it prints
#   env                            20 s  GPU, driver, torch, CPU count
#   bench_train (eager)           150 s  trainer / minimal loop, fold / none, peak memory
#   bench_data                    120 s  CPU per image vs JPEG decoding (target <= 2.0); loader images/s
#                                        with N workers; the trainer on JPEG files vs in memory (issue 14:
#                                        the loader keeps up when >= 0.97)
#   bench_calibrate (512x512)      90 s  issue 3: measuring forward / plain forward, end-to-end images/s
#   bench_train --compile     the rest   compile / eager (torch.compile warm-up included), at most 300 s
#   total                   GPU_CHECK_BUDGET_S, default 470 s (the summary takes a second)
set -u
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG_DIR="${OUT:-$(mktemp -d)}/gpu_check"
mkdir -p "$LOG_DIR"
START=$(date +%s)

step() {  # step NAME LIMIT_S CMD...: run with a time limit, tee its log, never abort the script
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s): $*"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    [[ $rc -eq 0 ]] || echo "!!! $name exited with $rc (124 = over its time limit); the other benches go on"
    echo "$rc" > "$LOG_DIR/$name.rc"
}

last_json() {  # the last line of a log that parses as a JSON object, or nothing
    [[ -f "$LOG_DIR/$1.log" ]] && grep '^{' "$LOG_DIR/$1.log" | tail -n 1
}

if [[ $SMOKE -eq 1 ]]; then
    DEVICE=cpu
    TRAIN=(--device cpu --model upernet_tiny --batch 2 --size 64 --amp none --iters 4 --window 2 --repeats 1)
    COMPILE=()  # torch.compile on 2 CPU cores takes minutes: the GPU run measures it
    DATA=(--smoke --train-iters 6)
    CALIB=(--device cpu --size 64 --images 16 --batches 2 --repeats 1 --workers 0)
else
    DEVICE=cuda
    # defaults on cuda: upernet_convnext_tiny, batch 16, 512x512, bf16, channels_last, data in memory
    TRAIN=(--device cuda --iters 50 --window 10 --repeats 2)
    COMPILE=(--device cuda --iters 40 --window 10 --repeats 1 --compile)
    DATA=(--workers 4 8 12 15 --images 96 --batches 20 --train-iters 60)
    CALIB=(--device cuda --size 512 --model upernet_convnext_tiny --images 512 --workers 2)
fi

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
    || echo 'no nvidia-smi'; nproc; $PY -c 'import torch, torchvision, timm; \
print(\"torch\", torch.__version__, \"torchvision\", torchvision.__version__, \"timm\", timm.__version__, \
\"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"\")'"
step bench_train 150 "$PY" benchmarks/bench_train.py "${TRAIN[@]}"
# The data pipeline must feed the trainer's measured step rate (fallback: the issue's H200 reference).
TARGET=$(last_json bench_train | "$PY" -c 'import json, sys
try:
    print(json.loads(sys.stdin.read())["img_s"]["trainer"])
except Exception:
    print(141.8)')
step bench_data 120 "$PY" benchmarks/bench_data.py "${DATA[@]}" --target "$TARGET"
if [[ -f benchmarks/bench_calibrate.py ]]; then
    step bench_calibrate 90 "$PY" benchmarks/bench_calibrate.py "${CALIB[@]}"
fi
# Compilation time is the least predictable: it runs last, with whatever the budget has left.
LEFT=$(( BUDGET - ($(date +%s) - START) - 5 ))
(( LEFT > 300 )) && LEFT=300
if [[ ${#COMPILE[@]} -gt 0 ]]; then
    if (( LEFT >= 60 )); then
        step bench_train_compile "$LEFT" "$PY" benchmarks/bench_train.py "${COMPILE[@]}"
    else
        echo "!!! bench_train --compile skipped: only ${LEFT}s of the ${BUDGET}s budget left"
    fi
fi

echo
echo "=== summary ($DEVICE, $(( $(date +%s) - START ))s; logs in $LOG_DIR)"
for name in bench_train bench_train_compile bench_data bench_calibrate; do
    printf '%s\n' "$(last_json "$name")" > "$LOG_DIR/$name.json"
done
"$PY" - "$LOG_DIR" <<'EOF'
import json, sys
from pathlib import Path

logs = Path(sys.argv[1])

def load(name):
    try:
        return json.loads((logs / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None

rows = []
train, comp, data, calib = (load(n) for n in ("bench_train", "bench_train_compile", "bench_data", "bench_calibrate"))
if train:
    rows += [("device", train.get("device")),
             ("setting", f"{train['model']}, batch {train['batch']}, {train['size']}x{train['size']}, "
                         f"{train['amp']}, channels_last {train['channels_last']}"),
             ("img/s minimal / trainer / fold", " / ".join(str(train["img_s"][k]) for k in ("minimal", "trainer", "trainer fold"))),
             ("trainer / minimal (target >= 0.97)", f"{train['trainer_vs_minimal']} (median {train['trainer_vs_minimal_median']})"),
             ("fold / none (target 1.00 +- 0.01)", f"{train['fold_vs_none']} (median {train['fold_vs_none_median']})"),
             ("peak memory MiB", train.get("peak_mem_mb"))]
else:
    rows.append(("bench_train", "no result (see bench_train.log)"))
if comp:
    rows += [("compile / eager", f"{comp.get('compile_vs_eager')} (img/s {comp['img_s'].get('trainer compile')} vs "
                                 f"{comp['img_s'].get('trainer')})"),
             ("peak memory MiB, compile", comp.get("peak_mem_mb", {}).get("trainer compile"))]
if data:
    rows += [("data CPU / JPEG decode (target <= 2.0)",
              f"{data['ratio_vs_decode']} (nvjpeg {data['ratio_vs_decode_nvjpeg']}, per-sample pipeline "
              f"{data['ratio_vs_decode_workers_pipeline']})"),
             ("data CPU ms per image", data["cpu_ms_per_image"]),
             ("data device half ms per image", data["device_ms_per_image"]),
             ("data img/s by workers", data["img_s"]),
             ("data best / step rate", f"{data['best_vs_target']} ({data['best_workers']} workers, target "
                                       f"{data['target_img_s']} img/s, {data['cpu_count']} CPUs)"),
             ("trainer on files / in memory (>= 0.97)", f"{data['trainer_vs_target']} "
                                                         f"({data['trainer_img_s']} img/s)"),
             ("data ms per image (1 process)", data["ms_per_image"])]
if calib:
    rows.append(("calibrate (issue 3)", {k: v for k, v in calib.items() if k != "bench"}))
width = max(len(k) for k, _ in rows)
for k, v in rows:
    print(f"{k:<{width}}  {v}")
(logs / "summary.json").write_text(json.dumps({"train": train, "compile": comp, "data": data,
                                               "calibrate": calib}, indent=1))
EOF
