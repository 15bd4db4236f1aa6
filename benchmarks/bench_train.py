"""Trainer speed: the bundled loop against a minimal hand-written loop, and fold-mode against no EQ.

All runs use the same model, batch, input size and AMP setting, with data already in memory
(``data.format = "synthetic"``), measured in the same process:

- ``minimal``: forward → loss → backward → AdamW step → zero_grad → lr update over batches already on
  the device (uint8, normalized there as the trainer does). The bar: trainer / minimal ≥ 0.97.
- ``trainer``: ``eqsurgeon.training.loop.train`` with ``eq.mode = "none"``; throughput from its own
  log windows after warm-up (evaluation and checkpointing at the end are not counted).
- ``trainer fold``: the same after in-loop calibration folded into the weights; folding changes no
  shape, so the target is 1.00 ± noise.
- ``trainer compile`` (``--compile``): ``run.compile = true``, compared with eager.

Runs alternate, in an order rotated every repeat, and repeat (``--repeats``). Each run is cut into
timing windows (``--window`` iterations,
the first dropped as warm-up); a variant's figure is its best window over all runs, as ``timeit`` takes
the fastest repeat, because a machine shared with other work only ever slows a window down. The
medians are printed too. CPU default: upernet_tiny, batch 8, 64×64, fp32. ``--device cuda``:
upernet_convnext_tiny, batch 16, 512×512, bf16, channels_last.

    python benchmarks/bench_train.py                       # CPU
    python benchmarks/bench_train.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from eqsurgeon.training.config import load_config
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.evaluate import autocast, to_input
from eqsurgeon.training.loop import train
from eqsurgeon.training.losses import segmentation_loss
from eqsurgeon.training.model import build_model
from eqsurgeon.training.optim import build_optimizer, build_scheduler


def main() -> None:
    args = _parse()
    gpu = args.device == "cuda"
    model = args.model or ("upernet_convnext_tiny" if gpu else "upernet_tiny")
    batch = args.batch or (16 if gpu else 8)
    size = args.size or (512 if gpu else 64)
    amp = args.amp or ("bf16" if gpu else "none")
    channels_last = gpu if args.channels_last is None else args.channels_last
    iters = args.iters or (60 if gpu else 40)
    sets = [
        f"model.name={model}",
        "model.kwargs={ num_classes = 150 }",
        "data.format=synthetic",
        "data.num_classes=150",
        f"data.crop_size=[{size}, {size}]",
        f"data.batch_size={batch}",
        f"data.workers={4 if gpu else 0}",
        f"schedule.iters={iters}",
        "schedule.warmup_iters=10",
        "optim.lr=1e-4",
        "eval.interval=0",
        "eval.max_images=1",
        "eval.scale=[]",
        f"checkpoint.interval={iters}",
        f"run.log_interval={args.window}",
        f"run.device={args.device}",
        f"run.amp={amp}",
        f"run.channels_last={str(channels_last).lower()}",
        "eq.images=16",
        "eq.batch_size=4",
    ]
    variants = {"minimal": None, "trainer": [], "trainer fold": ["eq.mode=fold"]}
    if args.compile:
        variants["trainer compile"] = ["run.compile=true"]
    results: dict[str, list[float]] = {name: [] for name in variants}
    peak: dict[str, float] = {}
    order = list(variants.items())
    for r in range(args.repeats):
        # Rotate the order each repeat: a variant that always ran last would carry position effects
        # (allocator growth, warm caches) into its figure.
        for name, extra in order[r % len(order) :] + order[: r % len(order)]:
            if extra is None:
                rates, mem = _minimal(sets, iters, args.window)
            else:
                rates, mem = _trainer([*sets, *extra])
            results[name].extend(rates)
            peak[name] = max(peak.get(name, 0.0), mem)
    rate = {name: max(v) for name, v in results.items()}
    median = {name: statistics.median(v) for name, v in results.items()}
    _table(
        rate, median, peak, f"{model}, batch {batch}, {size}x{size}, amp {amp}, channels_last {channels_last}"
    )
    summary = {
        "bench": "train",
        "device": _device_name(args.device),
        "model": model,
        "batch": batch,
        "size": size,
        "amp": amp,
        "channels_last": channels_last,
        "img_s": {k: round(v, 2) for k, v in rate.items()},
        "img_s_median": {k: round(v, 2) for k, v in median.items()},
        "trainer_vs_minimal": round(rate["trainer"] / rate["minimal"], 3),
        "fold_vs_none": round(rate["trainer fold"] / rate["trainer"], 3),
        "trainer_vs_minimal_median": round(median["trainer"] / median["minimal"], 3),
        "fold_vs_none_median": round(median["trainer fold"] / median["trainer"], 3),
        "windows": {k: len(v) for k, v in results.items()},
        "peak_mem_mb": {k: round(v) for k, v in peak.items()},
    }
    if args.compile:
        summary["compile_vs_eager"] = round(rate["trainer compile"] / rate["trainer"], 3)
    print(json.dumps(summary))


def _trainer(sets: list[str]) -> tuple[list[float], float]:
    windows: list[float] = []
    mem = 0.0
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [*sets, f'run.out="{Path(out) / "run"}"'])

        def on_log(record: dict) -> None:
            nonlocal mem
            if record["phase"] == "train":
                windows.append(record["img_s"])
                mem = max(mem, record["peak_mem_mb"])

        _reset_peak(cfg.run.device)
        train(cfg, on_log=on_log)
    # The first window holds warm-up (allocator, cudnn autotune, compilation): not counted.
    return windows[1:], mem


def _minimal(sets: list[str], iters: int, window: int) -> tuple[list[float], float]:
    cfg = load_config(None, sets)
    device = torch.device(cfg.run.device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data, _ = make_datasets(cfg)
    n, bs = len(data), cfg.data.batch_size
    batches = [
        (torch.stack([data[(i + j) % n][0] for j in range(bs)]).to(device),
         torch.stack([data[(i + j) % n][1] for j in range(bs)]).to(device).long())
        for i in range(0, n, bs)
    ]  # fmt: skip
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr)
    _reset_peak(cfg.run.device)
    rates = []
    start = time.perf_counter()
    for it in range(iters):
        images, masks = batches[it % len(batches)]
        with autocast(device, cfg.run.amp):
            loss = segmentation_loss(model(to_input(images, cfg.data, cfg.run.channels_last)), masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if (it + 1) % window == 0:
            loss.item()  # the trainer syncs once per log window too
            now = time.perf_counter()
            rates.append(window * bs / (now - start))
            start = now
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return rates[1:], mem


def _table(best: dict[str, float], median: dict[str, float], peak: dict[str, float], title: str) -> None:
    print(f"bench_train: {title}")
    print(
        f"{'variant':<17}{'best img/s':>11}{'vs minimal':>12}{'vs trainer':>12}{'median':>9}{'peak MiB':>10}"
    )
    for name, value in best.items():
        vs_min, vs_tr = value / best["minimal"], value / best["trainer"]
        print(f"{name:<17}{value:>11.1f}{vs_min:>12.3f}{vs_tr:>12.3f}{median[name]:>9.1f}{peak[name]:>10.0f}")


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"])
    p.add_argument(
        "--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None
    )
    p.add_argument("--iters", type=int, default=None, help="iterations per run (first window is warm-up)")
    p.add_argument("--window", type=int, default=10, help="iterations per timing window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time run.compile = true")
    return p.parse_args()


if __name__ == "__main__":
    main()
