"""The A/B the paper's claim needs: no equalization, fold and insert, several seeds, one GPU.

Three parts, each a command, so ``gpu_ab.sh`` can run each under its own time limit:

- ``train``: writes the multiscale synthetic dataset (``eqsurgeon demo-data --kind multiscale``: objects
  and textures at several scales, 9 classes that need both fine texture and the image's tint), then
  ``eqsurgeon.training.compare`` trains the zoo's UPerNet with eq.mode none / fold / insert for each
  seed (paired: one seed, one initialization and data order). Prints ΔmIoU (mode − none) mean ± std
  over seeds per mode, and each site's grad_ratio (max/min weight-gradient RMS over its inputs, logged
  by the trainer) against iterations, mean over seeds, per mode.
- ``steps``: the step time (forward, loss, backward, AdamW step) of insert mode against no
  equalization, on batches already on the device; ``--compile`` under ``torch.compile``. Windows
  alternate between the two models; each one's figure is its best window.
- ``summary DIR``: the parts' results from DIR side by side; the last line is one JSON object.

Every part prints a readable table and, as its last line, one JSON object. CPU defaults are tiny
(``--smoke``: upernet_tiny at 64², a few iterations); ``--device cuda`` defaults to
upernet_convnext_tiny at 512², batch 8, bf16, channels_last.

    python benchmarks/ab.py train --device cuda --out /tmp/ab
    python benchmarks/ab.py steps --device cuda --compile
    python benchmarks/ab.py summary /tmp/ab/logs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

MODES = ("none", "fold", "insert")


def main() -> None:
    args = _parse()
    if args.part == "summary":
        summary(Path(args.dir))
    elif args.part == "train":
        train_part(args)
    else:
        steps_part(args)


def train_part(args: argparse.Namespace) -> dict[str, Any]:
    """Data, then the comparison; prints ΔmIoU per mode and the grad_ratio curves."""
    from eqsurgeon.training.compare import compare
    from eqsurgeon.training.config import load_config
    from eqsurgeon.training.multiscale_data import NUM_CLASSES, make_multiscale_data

    s = _settings(args)
    out = Path(args.out)
    data = out / "data"
    if not (data / "val" / "masks").is_dir():
        t0 = time.perf_counter()
        make_multiscale_data(data, images=s["images"], size=s["size"], seed=0, force=True)
        print(f"wrote {s['images']} training images of {s['size']}² in {time.perf_counter() - t0:.1f} s")
    iters = s["iters"]
    sets = [
        f"model.name={s['model']}", f"model.kwargs={{ num_classes = {NUM_CLASSES} }}",
        "data.format=folder", f'data.root="{data}"', f"data.num_classes={NUM_CLASSES}",
        f"data.crop_size=[{s['size']}, {s['size']}]", f"data.scale=[{2 * s['size']}, {s['size']}]",
        f"data.batch_size={s['batch']}", f"data.workers={s['workers']}",
        f"optim.lr={s['lr']}", "optim.weight_decay=0.01", f"schedule.iters={iters}",
        f"schedule.warmup_iters={max(1, iters // 10)}", f"eval.interval={max(1, iters // 4)}",
        "eval.scale=[]",
        f"checkpoint.interval={iters}", "checkpoint.keep=1", f"run.log_interval={max(1, iters // 20)}",
        f"run.device={args.device}", f"run.amp={s['amp']}", f"run.channels_last={str(s['cl']).lower()}",
        f"eq.images={s['eq_images']}", f"eq.batch_size={min(8, s['eq_images'])}", f'run.out="{out / "runs"}"',
    ]  # fmt: skip
    cfg = load_config(None, sets)
    t0 = time.perf_counter()

    def announce(mode: str, seed: int, _: object) -> None:
        print(f"run {mode} seed {seed} ({time.perf_counter() - t0:.0f} s)", flush=True)

    result = compare(cfg, s["seeds"], force=True, on_run=announce)
    seconds = time.perf_counter() - t0
    doc = json.loads(result.json_path.read_text())
    rows = {r["mode"]: r["diff"] for r in doc["table"]}
    curves = grad_curves(doc["runs"])
    print(f"\n{s['model']}, {s['size']}², batch {s['batch']}, {iters} iterations, {s['seeds']} seeds, "
          f"{seconds:.0f} s")  # fmt: skip
    print(f"{'mode':<8}{'ΔmIoU (pts)':>20}")
    for mode, d in rows.items():
        print(f"{mode:<8}{_pm(d['mean'], d['std']):>20}")
    print_curves(curves)
    result_json = {
        "bench": "ab_train", "device": _device_name(args.device), "model": s["model"], "size": s["size"],
        "batch": s["batch"], "iters": iters, "seeds": s["seeds"], "seconds": round(seconds, 1),
        "miou": {r["mode"]: r["with_eq"]["mean"] for r in doc["table"]} | {"none": _none_miou(doc)},
        "delta_miou": {m: {"mean": d["mean"], "std": d["std"]} for m, d in rows.items()},
        "grad_ratio": curves, "compare_json": str(result.json_path), "png": str(result.png_path),
    }  # fmt: skip
    print(json.dumps(result_json))
    return result_json


def grad_curves(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[list[float]]]]:
    """{mode: {layer: [[iteration, grad_ratio mean over seeds], ...]}} from compare.json's runs.

    >>> runs = [{"mode": "none", "grad_ratio": [[2, {"a": 1.0}]]}]
    >>> grad_curves(runs + [{"mode": "none", "grad_ratio": [[2, {"a": 2.0}]]}])
    {'none': {'a': [[2, 1.5]]}}
    """
    pooled: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in runs:
        for it, ratios in run.get("grad_ratio", []):
            for layer, value in ratios.items():
                if value is not None:
                    pooled.setdefault(run["mode"], {}).setdefault(layer, {}).setdefault(it, []).append(value)
    return {
        mode: {layer: [[it, round(statistics.fmean(v), 4)] for it, v in sorted(points.items())]
               for layer, points in layers.items()}
        for mode, layers in pooled.items()
    }  # fmt: skip


def print_curves(curves: dict[str, dict[str, list[list[float]]]]) -> None:
    """Each site's grad_ratio against iteration, one column per mode (mean over seeds)."""
    layers = list(dict.fromkeys(layer for m in curves.values() for layer in m))
    for layer in layers:
        print(f"\ngrad_ratio at {layer} (mean over seeds)")
        points = {m: dict((int(i), v) for i, v in curves.get(m, {}).get(layer, [])) for m in MODES}
        iters = sorted({i for p in points.values() for i in p})
        print(f"{'iter':>6}" + "".join(f"{m:>9}" for m in MODES))
        for i in iters:
            cells = (f"{points[m][i]:>9.3f}" if i in points[m] else f"{'–':>9}" for m in MODES)
            print(f"{i:>6}" + "".join(cells))


def steps_part(args: argparse.Namespace) -> dict[str, Any]:
    """Step time of insert mode against none (eager, or compiled with ``--compile``)."""
    s = _settings(args)
    device = torch.device(args.device)
    models = {"none": _model(s, device, None), "insert": _model(s, device, "insert")}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s["batch"], 3, s["size"], s["size"], generator=gen).to(device)
    y = torch.randint(0, 9, (s["batch"], s["size"], s["size"]), generator=gen).to(device)
    if s["cl"]:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = {name: _stepper(m, s, args.compile) for name, m in models.items()}
    windows: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up: allocator, cudnn autotuning, compilation
        t0 = time.perf_counter()
        for _ in range(s["warmup"]):
            step(x, y)
        _sync(device)
        print(f"{name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    for r in range(s["repeats"]):
        for name in (("none", "insert") if r % 2 == 0 else ("insert", "none")):
            t0 = time.perf_counter()
            for _ in range(s["window"]):
                steps[name](x, y)
            _sync(device)
            windows[name].append((time.perf_counter() - t0) / s["window"])
    best = {name: min(v) for name, v in windows.items()}
    ratio = best["insert"] / best["none"]
    label = "compiled" if args.compile else "eager"
    ms = {k: f"{1e3 * v:.1f} ms" for k, v in best.items()}
    print(f"\nstep time ({label}, {s['model']}, batch {s['batch']}, {s['size']}²): "
          f"none {ms['none']}, insert {ms['insert']}, insert/none {ratio:.3f}")  # fmt: skip
    result = {
        "bench": "ab_steps", "device": _device_name(args.device), "compile": bool(args.compile),
        "model": s["model"], "batch": s["batch"], "size": s["size"], "amp": s["amp"],
        "step_ms": {k: round(1e3 * v, 2) for k, v in best.items()}, "insert_vs_none": round(ratio, 4),
        "windows": s["repeats"],
    }  # fmt: skip
    print(json.dumps(result))
    return result


def summary(logs: Path) -> dict[str, Any]:
    """The parts' last JSON lines (``train.log``, ``steps.log``, ``steps_compile.log``) side by side."""
    parts = {name: _last_json(logs / f"{name}.log") for name in ("train", "steps", "steps_compile")}
    train, eager, comp = parts["train"], parts["steps"], parts["steps_compile"]
    print(f"A/B summary ({logs})")
    if train:
        print(f"  {train['model']}, {train['size']}², {train['iters']} iterations × {train['seeds']} seeds, "
              f"{train['device']}")  # fmt: skip
        for mode, d in train["delta_miou"].items():
            print(f"  ΔmIoU {mode:<7} {_pm(d['mean'], d['std'])} pts")
        for mode, layers in train["grad_ratio"].items():
            ends = ", ".join(f"{k.split('.')[-2] if '.' in k else k} {v[0][1]:.2f}→{v[-1][1]:.2f}"
                             for k, v in layers.items())  # fmt: skip
            print(f"  grad_ratio {mode:<7} {ends}")
    else:
        print("  train: no result (see train.log)")
    for label, part in (("eager", eager), ("compiled", comp)):
        print(f"  step time insert/none {label}: {part['insert_vs_none'] if part else 'no result'}")
    doc = {
        "bench": "ab",
        "device": (train or eager or {}).get("device"),
        "delta_miou": train["delta_miou"] if train else None,
        "grad_ratio_last": (
            {m: {k: v[-1][1] for k, v in layers.items()} for m, layers in train["grad_ratio"].items()}
            if train else None
        ),
        "step_insert_vs_none": {"eager": eager["insert_vs_none"] if eager else None,
                                "compile": comp["insert_vs_none"] if comp else None},
    }  # fmt: skip
    print(json.dumps(doc))
    return doc


def _model(s: dict[str, Any], device: torch.device, mode: str | None) -> torch.nn.Module:
    from eqsurgeon.api import calibrate
    from eqsurgeon.calibration import CalibrationOptions
    from eqsurgeon.registry import create_model

    torch.manual_seed(0)
    model = create_model(s["model"], num_classes=9).to(device)
    if mode is not None:
        gen = torch.Generator().manual_seed(1)
        batches = [torch.randn(4, 3, s["size"], s["size"], generator=gen).to(device) for _ in range(2)]
        model = calibrate(model, batches, options=CalibrationOptions(mode=mode, min_batches=2)).model
    return model.to(memory_format=torch.channels_last) if s["cl"] else model


def _stepper(model: torch.nn.Module, s: dict[str, Any], compiled: bool) -> Any:
    import torch.nn.functional as F

    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s["amp"])
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    gpu = args.device == "cuda"
    defaults = (
        dict(model="upernet_convnext_tiny", size=512, batch=8, amp="bf16", cl=True, iters=150, seeds=3,
             images=160, workers=8, lr=2e-4, eq_images=32, warmup=5, window=10, repeats=6)
        if gpu else
        dict(model="upernet_tiny", size=64, batch=4, amp="none", cl=False, iters=4, seeds=2, images=8,
             workers=0, lr=1e-3, eq_images=8, warmup=1, window=2, repeats=2)
    )  # fmt: skip
    for key in ("model", "size", "batch", "iters", "seeds", "images"):
        value = getattr(args, key, None)
        if value is not None:
            defaults[key] = value
    return defaults


def _none_miou(doc: dict[str, Any]) -> float | None:
    return doc["table"][0]["without_eq"]["mean"] if doc["table"] else None


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:+.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def _last_json(path: Path) -> dict[str, Any] | None:
    try:
        lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("train", "steps"):
        q = sub.add_parser(name)
        q.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        q.add_argument("--model", default=None)
        q.add_argument("--size", type=int, default=None)
        q.add_argument("--batch", type=int, default=None)
        if name == "train":
            q.add_argument("--out", required=True, help="folder for the data, the runs and compare.json")
            q.add_argument("--iters", type=int, default=None)
            q.add_argument("--seeds", type=int, default=None)
            q.add_argument("--images", type=int, default=None, help="training images to generate")
        else:
            q.add_argument("--compile", action="store_true")
    sub.add_parser("summary").add_argument("dir", help="the folder holding train.log, steps*.log")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
