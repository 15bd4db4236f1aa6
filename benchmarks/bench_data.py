"""Data-pipeline speed: images/s of the full training pipeline from JPEG/PNG files, against the GPU step rate.

Writes an ADE20K-like folder (``--images`` JPEG photos of ``--width``×``--height`` with PNG index masks of
150 classes), then reads it with the trainer's own dataset and loader settings (``make_datasets``: decode,
RandomResize 2048×512 ratio 0.5–2.0, RandomCrop 512 with cat_max_ratio 0.75, flip, PhotoMetricDistortion;
a ``DataLoader`` with the recipe's batch and ``--workers`` processes, pinned memory) and reports, for each
worker count, images/s and its ratio to ``--target`` (the trainer's images/s per GPU, e.g. from
``bench_train.py --device cuda``). A ratio ≥ 1 means the pipeline sustains the step rate.

To show where the time goes, one process also times each stage per image: decode (JPEG + PNG), then
each transform of the pipeline.

    python benchmarks/bench_data.py --workers 2 4 8 14 --target 141.8
    python benchmarks/bench_data.py --smoke         # tiny, for CI

Prints a table and, as its last line, one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqsurgeon.training.config import load_config
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.sampler import InfiniteSampler
from eqsurgeon.training.transforms import PadCollate


def main() -> None:
    args = _parse()
    if args.smoke:
        args.images, args.width, args.height, args.crop, args.batch = 8, 160, 120, 64, 4
        args.batches, args.workers = 3, [0, 2]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "data", args.images, args.width, args.height)
        sets = [
            f'data.root="{root}"',
            'data.format="folder"',
            "data.num_classes=150",
            f"data.crop_size=[{args.crop}, {args.crop}]",
            f"data.scale=[{4 * args.crop}, {args.crop}]",  # MMSeg's 2048x512 for a 512 crop
            f"data.batch_size={args.batch}",
        ]
        cfg = load_config(None, sets)
        train_set, _ = make_datasets(cfg)
        stages = _stage_times(train_set, min(args.images, 16))
        collate = PadCollate(cfg.data.crop_size, cfg.data.ignore_index)
        rates = {w: _loader_rate(train_set, args.batch, w, args.batches, collate) for w in args.workers}
    _table(rates, stages, args)
    best_w = max(rates, key=lambda w: rates[w])
    summary = {
        "bench": "data",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "image_size": [args.width, args.height],
        "crop": args.crop,
        "batch": args.batch,
        "img_s": {str(w): round(r, 1) for w, r in rates.items()},
        "target_img_s": args.target,
        "best_workers": best_w,
        "best_vs_target": round(rates[best_w] / args.target, 3) if args.target else None,
        "ms_per_image": {k: round(1000 * v, 2) for k, v in stages.items()},
    }
    print(json.dumps(summary))


def make_folder(root: Path, n: int, width: int, height: int) -> Path:
    """``n`` smooth colour JPEGs (quality 90, like photos) with blocky 150-class PNG masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        low = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((width, height), Image.BILINEAR)
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i:05d}.jpg", quality=90)
        cells = rng.integers(0, 150, (height // 32 + 1, width // 32 + 1), dtype=np.uint8)
        mask = np.kron(cells, np.ones((32, 32), dtype=np.uint8))[:height, :width]
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:05d}.png")
    return root


def _stage_times(dataset: torch.utils.data.Dataset, n: int) -> dict[str, float]:
    # Seconds per image in this process: decode (JPEG + PNG + checks), then each transform in turn.
    from torchvision import tv_tensors

    dataset[(0, 0)]  # warm-up (imports, first allocation)
    times: dict[str, float] = {"decode": 0.0}
    for i in range(n):
        start = time.perf_counter()
        image, mask = dataset.read(i)
        times["decode"] += time.perf_counter() - start
        x, y = tv_tensors.Image(image), tv_tensors.Mask(mask[None])
        torch.manual_seed(i)
        for t in dataset.transform.transforms:
            start = time.perf_counter()
            x, y = t(x, y)
            name = type(t).__name__
            times[name] = times.get(name, 0.0) + time.perf_counter() - start
    times = {k: v / n for k, v in times.items()}
    times["total"] = sum(times.values())
    return times


def _loader_rate(
    dataset: torch.utils.data.Dataset, batch: int, workers: int, batches: int, collate: PadCollate
) -> float:
    sampler = InfiniteSampler(len(dataset), seed=0, rank=0, world=1)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=torch.Generator(),
        collate_fn=collate,  # the trainer's: crops smaller than the crop size are padded per batch
    )
    it = iter(loader)
    # Warm-up: every worker's start-up, then the batches they prefetched meanwhile (prefetch_factor 2),
    # which would otherwise come out of the queue at no cost and inflate the rate.
    for _ in range(3 * workers if workers else 1):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - start)
    del it, loader
    return rate


def _table(rates: dict[int, float], stages: dict[str, float], args: argparse.Namespace) -> None:
    print(
        f"bench_data: {args.images} JPEG {args.width}x{args.height} + PNG masks -> crop {args.crop}, "
        f"batch {args.batch}, {os.cpu_count()} CPUs"
    )
    parts = ", ".join(f"{k} {1000 * v:.1f}" for k, v in stages.items())
    print(f"  one process, ms per image: {parts}")
    print(f"{'workers':>8}{'img/s':>10}{'vs target':>11}  sustains?")
    for w, r in rates.items():
        ratio = r / args.target if args.target else float("nan")
        verdict = "yes" if ratio >= 1 else "no" if args.target else "-"
        print(f"{w:>8}{r:>10.1f}{ratio:>11.2f}  {verdict}")
    if args.target:
        print(f"target: {args.target:.1f} img/s (the trainer's step rate per GPU)")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--target", type=float, default=141.8, help="images/s the GPU consumes (per process)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--width", type=int, default=683, help="ADE20K photos are about 683x512")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, not the speed")
    return p.parse_args()


if __name__ == "__main__":
    main()
