"""grad_ratio fresh / fold / insert on the tiny zoo: the table of docs/gradients.md.

For each toy zoo model (tag "tiny") and seed: demo data (``eqsurgeon demo-data``, 8 images at 64², one
batch), the model fresh, calibrated with fold, and calibrated with insert (on the same images), then
``analyze --gradients`` on each: cross-entropy with the masks, and the label-free surrogate (random
projection of the logits) on the same images. Per site it prints var_ratio (fresh), grad_ratio for the
three states, the relative-gradient ratio (max/min of grad_rms / weight_rms) and, over seeds, how often
insert's grad_ratio is below fresh's. The last line is one JSON object.

    python benchmarks/bench_gradients.py               # 3 seeds, about 3 minutes on 2 CPU cores
    python benchmarks/bench_gradients.py --seeds 1 --models upernet_tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from eqsurgeon.api import DataOptions, MeasureOptions, ModelRef, analyze, calibrate
from eqsurgeon.calibration import CalibrationOptions
from eqsurgeon.gradients import original_layer
from eqsurgeon.registry import list_models, model_entry
from eqsurgeon.stats import grad_ratio
from eqsurgeon.training.demo_data import make_demo_data

STATES = ("fresh", "fold", "insert")


def main() -> None:
    args = _parse()
    models = args.models or [n for n in list_models() if "tiny" in model_entry(n).tags]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_data(Path(tmp) / "demo", images=args.images, size=args.size)
        for name in models:
            for seed in range(args.seeds):
                rows.extend(_measure(name, seed, demo, args))
    sites = _table(rows)
    print(json.dumps({
        "bench": "gradients", "torch": torch.__version__, "size": args.size, "images": args.images,
        "seeds": args.seeds, "seconds": round(time.perf_counter() - t0, 1), "sites": sites,
    }))  # fmt: skip


def _measure(name: str, seed: int, demo: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    ref = ModelRef(name, {"num_classes": 5})
    opts = DataOptions(input_size=(args.size, args.size), batch_size=args.images, workers=0, device="cpu",
                       seed=seed)  # fmt: skip
    how = MeasureOptions(gradients=True)
    models = {"fresh": None}
    for mode in ("fold", "insert"):
        models[mode] = calibrate(ref, demo, options=CalibrationOptions(mode=mode), data_options=opts).model
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for state, model in models.items():
        target = ref if model is None else model
        for loss, data in (("ce", demo), ("rp", demo / "images")):  # images/ alone: no masks
            analysis = analyze(target, data, opts, how).analysis
            for site in (s for s in analysis.sites if s.ok):
                layer = site.layer if model is None else original_layer(model, site.layer)
                grads = analysis.gradients[site.layer]
                entry = figures.setdefault(layer, {}).setdefault(state, {})
                entry[loss] = analysis.grad_ratio(site)
                if loss == "ce":
                    entry["rel"] = grad_ratio([g.rel for g in grads])
                    entry["var"] = analysis.var_ratio(site)
    return [{"model": name, "seed": seed, "layer": layer, **{s: f[s] for s in STATES}}
            for layer, f in figures.items()]  # fmt: skip


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print("| model | site | var_ratio | grad_ratio fresh / fold / insert | insert < fresh | "
          "grad/weight ratio fresh / fold / insert | surrogate fresh / fold / insert |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    out = []
    keys = list(dict.fromkeys((r["model"], r["layer"]) for r in rows))
    for model, layer in keys:
        runs = [r for r in rows if (r["model"], r["layer"]) == (model, layer)]
        mean = {s: {k: statistics.fmean(r[s][k] for r in runs) for k in ("ce", "rp", "rel")} for s in STATES}
        var = statistics.fmean(r["fresh"]["var"] for r in runs)
        wins = sum(r["insert"]["ce"] < r["fresh"]["ce"] for r in runs)
        ce, rel, rp = (" / ".join(f"{mean[s][k]:.2f}" for s in STATES) for k in ("ce", "rel", "rp"))
        short = layer.removeprefix("decode_head.")
        print(f"| `{model}` | `{short}` | {var:.2f} | {ce} | {wins}/{len(runs)} | {rel} | {rp} |")
        out.append({"model": model, "layer": layer, "var_ratio": round(var, 3), "insert_below_fresh": wins,
                    "runs": len(runs), **{s: {k: round(v, 3) for k, v in mean[s].items()} for s in STATES}})
    return out


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--seeds", type=int, default=3, help="model initializations (the data stays the same)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=8, help="demo images, all in one batch")
    return p.parse_args()


if __name__ == "__main__":
    main()
