"""Data-pipeline cost: CPU time per image against JPEG decoding alone, and whether the loader keeps up.

Writes an ADE20K-like folder (``--images`` JPEG photos of ``--width``×``--height`` with PNG index masks of
150 classes) and reads it with the trainer's own datasets (MMSeg's pipeline: RandomResize 2048×512 ratio
0.5–2.0, RandomCrop 512 with cat_max_ratio 0.75, flip, PhotoMetricDistortion; normalize, then pad).

1. **CPU cost per image**, in one process, every pipeline on the same images, as a ratio to decoding the
   JPEG alone (PIL, as the trainer decodes):

   - ``workers``: the whole per-sample pipeline in the loader workers (``data.augment = "workers"``);
   - ``device``: what the workers do when the device augments (``data.augment = "device"``, the default
     on CUDA): decode the JPEG and PNG, draw the plan, crop the mask. The target is ≤ 2.0;
   - ``device, nvjpeg``: the same with the JPEG handed to the GPU undecoded (what a CUDA run does);
     each (pipeline, image) keeps its fastest of ``--rounds`` interleaved runs;
   - and the device half (decode on the GPU when present, resize/crop/flip, colour, normalize) per image,
     on this machine's device.

2. **Loader rate**: images/s through a ``DataLoader`` with ``--workers`` processes and the device half,
   for the pipeline the trainer uses on this device, against ``--target`` (the trainer's images/s per
   GPU on data in memory, e.g. ``bench_train.py --device cuda``). A ratio ≥ 1 means the loader alone
   could feed the trainer.

3. **The trainer on the files** (``--train-iters N``): ``eqsurgeon.training.loop.train`` on the JPEG
   folder, with the best worker count, for N iterations; its images/s (best log window after the first)
   against ``--target``. This is the end-to-end answer: ≥ 0.97 means the loader keeps up with the trainer.
   On CUDA: upernet_convnext_tiny, bf16, channels_last (bench_train's GPU setting); on CPU upernet_tiny.

    python benchmarks/bench_data.py --workers 2 4 8 14 --target 141.8 --train-iters 60
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqsurgeon.training.config import DataConfig, load_config
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.device_data import PlannedDataset, collate_planned, model_input
from eqsurgeon.training.sampler import InfiniteSampler

TARGET_RATIO = 2.0


def main() -> None:
    args = _parse()
    if args.smoke:
        args.images, args.width, args.height, args.crop, args.batch = 8, 160, 120, 64, 4
        args.batches, args.workers, args.rounds = 3, [0, 2], 1
        args.train_iters = 6 if args.train_iters else 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        n = min(args.images, 16)
        cpu = cpu_costs(train_set, cfg.data, n, args.rounds)
        stages = _stage_times(train_set, n)
        device_ms = _device_half_ms(train_set, cfg.data, device, args.batch, args.rounds)
        planned = PlannedDataset(train_set, cfg.data, encoded_jpeg=device.type == "cuda")
        rates = {w: _loader_rate(planned, cfg.data, device, w, args.batches) for w in args.workers}
        best_w = max(rates, key=lambda w: rates[w])
        trained = _train_rate(sets, Path(tmp) / "run", device, best_w, args) if args.train_iters else None
    ratios = {k: v / cpu["jpeg decode"] for k, v in cpu.items()}
    _table(cpu, ratios, device_ms, stages, rates, device, args)
    if trained is not None:
        verdict = "keeps up" if args.target and trained / args.target >= 0.97 else "falls behind"
        print(f"trainer on the JPEG files ({best_w} workers): {trained:.1f} img/s; against {args.target:.1f} "
              f"in memory: {trained / args.target:.3f}, the loader {verdict} (bar 0.97)")
    summary = {
        "bench": "data",
        "device": device.type,
        "cpu_count": os.cpu_count(),
        "image_size": [args.width, args.height],
        "crop": args.crop,
        "batch": args.batch,
        "ratio_vs_decode": round(ratios["device"], 3),
        "target_ratio": TARGET_RATIO,
        "ratio_vs_decode_nvjpeg": round(ratios["device, nvjpeg"], 3),
        "ratio_vs_decode_workers_pipeline": round(ratios["workers"], 3),
        "cpu_ms_per_image": {k: round(1000 * v, 3) for k, v in cpu.items()},
        "device_ms_per_image": round(device_ms, 2),
        "pipeline": "device",
        "img_s": {str(w): round(r, 1) for w, r in rates.items()},
        "target_img_s": args.target,
        "best_workers": best_w,
        "best_vs_target": round(rates[best_w] / args.target, 3) if args.target else None,
        "ms_per_image": {k: round(1000 * v, 2) for k, v in stages.items()},
        "trainer_img_s": round(trained, 1) if trained is not None else None,
        "trainer_vs_target": round(trained / args.target, 3) if trained and args.target else None,
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


def cpu_costs(train_set: Dataset, data: DataConfig, n: int, rounds: int) -> dict[str, float]:
    """Seconds per image in this process: JPEG decode alone, then each pipeline.

    CPU time of the process (``time.process_time``), not wall time: what a loader worker's core pays, and
    far less sensitive to other work on a shared machine. Every pipeline runs on image i right after the
    others (the same caches), ``rounds`` times; each (pipeline, image) keeps its smallest time, and the
    figure is the mean of those over the images.
    """
    planned = PlannedDataset(train_set, data)
    encoded = PlannedDataset(train_set, data, encoded_jpeg=True)
    paths = train_set.samples.images

    def decode(i: int) -> object:
        with Image.open(paths[i]) as img:
            return np.asarray(img.convert("RGB"))

    jobs: dict[str, Callable[[int], object]] = {
        "jpeg decode": decode,
        "workers": lambda i: train_set[(0, i)],
        "device": lambda i: planned[(0, i)],
        "device, nvjpeg": lambda i: encoded[(0, i)],
    }
    # A DataLoader worker runs torch on one thread (torch/utils/data/_utils/worker.py sets it): measured
    # here with more, process_time would also count the idle spinning of the other intra-op threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _best_times(jobs, n, rounds)
    finally:
        torch.set_num_threads(threads)


def _best_times(jobs: dict[str, Callable[[int], object]], n: int, rounds: int) -> dict[str, float]:
    for job in jobs.values():  # warm-up: imports, first allocations
        job(0)
    best = {name: [float("inf")] * n for name in jobs}
    for _ in range(rounds):
        for i in range(n):
            for name, job in jobs.items():
                start = time.process_time()  # CPU time, all threads: what the loader's cores pay
                job(i)
                best[name][i] = min(best[name][i], time.process_time() - start)
    return {name: sum(times) / n for name, times in best.items()}


def _device_half_ms(
    train_set: Dataset, data: DataConfig, device: torch.device, batch: int, rounds: int
) -> float:
    # ms per image of model_input on planned batches (GPU decode included on CUDA), best round
    planned = PlannedDataset(train_set, data, encoded_jpeg=device.type == "cuda")
    items = [planned[(0, i % len(planned))] for i in range(batch)]
    model_input(collate_planned(items), data, device)  # warm-up (nvjpeg handle, kernels)
    best = float("inf")
    for _ in range(max(rounds, 2)):
        _sync(device)
        start = time.perf_counter()
        model_input(collate_planned(items), data, device)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / batch)
    return 1000 * best


def _stage_times(dataset: Dataset, n: int) -> dict[str, float]:
    # Seconds per image of the per-sample pipeline in this process: decode, then each transform in turn.
    from torchvision import tv_tensors

    dataset[(0, 0)]
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


def _loader_rate(planned: PlannedDataset, data: DataConfig, device: torch.device, workers: int,
                 batches: int) -> float:  # fmt: skip
    # images/s through the loader and the device half, as the trainer consumes them
    sampler = InfiniteSampler(len(planned), seed=0, rank=0, world=1)
    loader = DataLoader(
        planned,
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_planned,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator(),
    )
    it = iter(loader)
    # Warm-up: every worker's start-up, then the batches they prefetched meanwhile (prefetch_factor 2),
    # which would otherwise come out of the queue at no cost and inflate the rate.
    for _ in range(3 * workers if workers else 1):
        model_input(next(it), data, device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        model_input(next(it), data, device)
    _sync(device)
    rate = batches * data.batch_size / (time.perf_counter() - start)
    del it, loader
    return rate


def _train_rate(sets: list[str], out: Path, device: torch.device, workers: int,
                args: argparse.Namespace) -> float:  # fmt: skip
    # the trainer on the files: best images/s over its log windows after the first (warm-up)
    from eqsurgeon.training.loop import train

    gpu = device.type == "cuda"
    window = max(args.train_iters // 6, 1)
    cfg = load_config(None, [
        *sets,
        f"model.name={'upernet_convnext_tiny' if gpu else 'upernet_tiny'}",
        "model.kwargs={ num_classes = 150 }",
        f"data.workers={workers}",
        f"schedule.iters={args.train_iters}",
        "schedule.warmup_iters=0",
        f"run.log_interval={window}",
        f"run.out=\"{out}\"",
        f"run.amp={'bf16' if gpu else 'none'}",
        f"run.channels_last={'true' if gpu else 'false'}",
        "eval.interval=0",
        "eval.max_images=2",
        f"checkpoint.interval={args.train_iters}",
    ])  # fmt: skip
    train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_s"] for r in records if "img_s" in r]
    return max(rates[1:] or rates)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _table(
    cpu: dict[str, float],
    ratios: dict[str, float],
    device_ms: float,
    stages: dict[str, float],
    rates: dict[int, float],
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    print(
        f"bench_data: {args.images} JPEG {args.width}x{args.height} + PNG masks -> crop {args.crop}, "
        f"batch {args.batch}, {os.cpu_count()} CPUs, device {device.type}"
    )
    print(f"{'CPU per image (one process)':<34}{'ms':>8}{'vs decode':>11}")
    for name, seconds in cpu.items():
        print(f"  {name:<32}{1000 * seconds:>8.2f}{ratios[name]:>11.2f}")
    verdict = "meets" if ratios["device"] <= TARGET_RATIO else "misses"
    print(f"  device pipeline: {ratios['device']:.2f}x decoding, {verdict} the target <= {TARGET_RATIO}")
    print(f"  device half on {device.type}: {device_ms:.2f} ms per image")
    parts = ", ".join(f"{k} {1000 * v:.1f}" for k, v in stages.items())
    print(f"  per-sample pipeline by stage, ms per image: {parts}")
    print(f"{'workers':>8}{'img/s':>10}{'vs target':>11}  keeps up?")
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
    p.add_argument("--rounds", type=int, default=3, help="timing rounds for the CPU costs (best counts)")
    p.add_argument("--train-iters", type=int, default=0, help="also train on the files for N iterations")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, not the speed")
    return p.parse_args()


if __name__ == "__main__":
    main()
