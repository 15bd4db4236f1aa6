"""Benchmark calibrate: measuring-forward overhead, end-to-end images/s, images needed to converge.

1. Throughput of calibrate's measuring forward (the pass calibrate runs per site: moment hooks, the
   convergence check after every batch) against a plain ``torch.no_grad()`` forward, on the same
   in-memory batches, alternated and repeated, median taken. Target ratio >= 0.97.
2. End-to-end images/s of ``calibrate`` reading a generated image folder with ``--workers``.
3. Images convergence needed, and how far its σ is from the σ of the full folder (target: within the
   tolerance).

    python benchmarks/bench_calibrate.py                       # CPU, upernet_tiny at 128x128
    python benchmarks/bench_calibrate.py --device cuda --size 512 --model upernet_convnext_tiny

Prints a table, and as its last line one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqsurgeon.calibration import CalibrationOptions, CalibrationResult, calibrate
from eqsurgeon.images import IMAGENET_MEAN, IMAGENET_STD, LoaderOptions, image_loader
from eqsurgeon.inputs import model_normalization
from eqsurgeon.loading import load_model
from eqsurgeon.measure import MomentHooks, PassOptions, measure_step, measuring_mode
from eqsurgeon.records import FusionSite
from eqsurgeon.sites import find_sites
from fixtures.calibration import make_images

Norm = tuple[float, ...] | None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="upernet_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=6, help="in-memory batches per throughput run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=512, help="images in the generated folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=0.005)
    p.add_argument("--amp", action="store_true", help="bf16 autocast in both forwards")
    args = p.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = load_model(args.model).to(device)
    mean, std = model_normalization(model) or (IMAGENET_MEAN, IMAGENET_STD)
    amp = torch.bfloat16 if args.amp else None

    with tempfile.TemporaryDirectory() as tmp:
        folder = image_folder(Path(tmp) / "images", args.images, args.size + args.size // 4)
        loader, _ = image_loader(folder, LoaderOptions((args.size, args.size), args.batch_size, mean, std))
        batches = [b.to(device) for b, _ in zip(loader, range(args.batches), strict=False)]
        sites = [s for s in find_sites(model, batches[0]) if s.ok]
        plain, measuring = throughput(model, sites, batches, args.repeats, amp)
        print(f"throughput: plain {plain:.1f} img/s, measuring {measuring:.1f} img/s", flush=True)
        e2e, early = end_to_end(model, folder, args, mean, std, amp)
        print(f"end to end: {e2e}", flush=True)
        conv = convergence(model, folder, args, mean, std, amp, early)

    ratio = measuring / plain
    rows = [
        ("model / device / size", f"{args.model} / {device.type} / {args.size}x{args.size}"),
        ("sites", ", ".join(s.layer for s in sites)),
        ("plain no_grad forward (same BN mode)", f"{plain:.1f} img/s"),
        ("measuring forward", f"{measuring:.1f} img/s"),
        ("ratio (target >= 0.97)", f"{ratio:.3f}"),
        (
            f"end to end, --workers {args.workers}",
            f"{e2e['images_per_s']:.1f} img/s ({e2e['images']} images)",
        ),
        ("images to converge (per site)", ", ".join(str(n) for n in conv["images"])),
        (f"max |σ/σ_full - 1| (tolerance {args.tolerance})", f"{conv['max_rel_diff']:.4f}"),
        ("σ rel. SE reached (95% bound)", f"{conv['se']:.4f} ({conv['se_bound']:.4f})"),
        ("converged", str(early.converged)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(
        json.dumps(
            {
                "bench": "calibrate",
                "model": args.model,
                "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
                "size": args.size,
                "batch_size": args.batch_size,
                "amp": args.amp,
                "plain_images_per_s": round(plain, 2),
                "measuring_images_per_s": round(measuring, 2),
                "ratio_vs_forward": round(ratio, 4),
                "end_to_end_images_per_s": round(e2e["images_per_s"], 2),
                "workers": args.workers,
                "images_to_converge": conv["images"],
                "folder_images": args.images,
                "max_rel_sigma_diff_vs_full": round(conv["max_rel_diff"], 5),
                "std_rel_se": round(conv["se"], 5),
                "std_rel_se_bound": round(conv["se_bound"], 5),
                "converged": early.converged,
                "tolerance": args.tolerance,
                "within_tolerance": conv["max_rel_diff"] <= args.tolerance,
            }
        )
    )


def image_folder(root: Path, count: int, size: int) -> Path:
    """``count`` generated images in subfolders (the loader walks them), written by parallel processes:
    512 images at 640² take half a minute in one."""
    parts = min(os.cpu_count() or 1, 16, count)
    counts = [count // parts + (k < count % parts) for k in range(parts)]
    with ProcessPoolExecutor(parts) as pool:
        list(pool.map(make_images, [root / f"part{k:02d}" for k in range(parts)], counts, [size] * parts,
                      range(parts)))  # fmt: skip
    return root


def throughput(
    model: nn.Module,
    sites: list[FusionSite],
    batches: list[torch.Tensor],
    repeats: int,
    amp: torch.dtype | None,
) -> tuple[float, float]:
    """Images/s of a plain forward and of calibrate's measuring forward (``measure_step``: moment hooks
    on one site, moments pooled and the σ standard error checked after the batch).

    The two alternate batch by batch, so machine load hits both alike; both run in the same BN mode.
    """
    plain = measuring = 0.0
    images = 0
    pass_options = PassOptions(autocast_dtype=amp)
    with measuring_mode(model, "auto"), torch.no_grad():
        hooks = [MomentHooks(model, [site]) for site in sites]
        for i in range(repeats + 1):
            for b in batches:
                for hook in hooks:
                    t_plain = _timed(lambda b=b: _plain(model, b, amp), b)
                    with hook:
                        t_meas = _timed(
                            lambda b=b, h=hook: measure_step(model, b, h, 0, pass_options), b
                        )
                    if i > 0:  # the first round warms up allocators and cudnn autotuning
                        plain += t_plain
                        measuring += t_meas
                        images += b.shape[0]
    return images / plain, images / measuring


def _folder_options(args: argparse.Namespace, mean: Norm, std: Norm) -> LoaderOptions:
    pin = args.device.startswith("cuda")
    return LoaderOptions((args.size, args.size), args.batch_size, mean, std, args.workers, pin_memory=pin)


def _plain(model: nn.Module, b: torch.Tensor, amp: torch.dtype | None) -> None:
    with _autocast(b, amp):
        model(b)


def end_to_end(
    model: nn.Module, folder: Path, args: argparse.Namespace, mean: Norm, std: Norm, amp: torch.dtype | None
) -> tuple[dict, CalibrationResult]:
    """calibrate() from the folder with --workers, as the CLI runs it; images/s over all site passes."""
    loader, _ = image_loader(folder, _folder_options(args, mean, std))
    start = time.perf_counter()
    options = CalibrationOptions(tolerance=args.tolerance, autocast_dtype=amp)
    result = calibrate(copy.deepcopy(model), loader, options, device=args.device)
    _sync(args.device)
    elapsed = time.perf_counter() - start
    images = sum(s.images for s in result.sites)
    return {"images": images, "images_per_s": images / elapsed}, result


def convergence(
    model: nn.Module,
    folder: Path,
    args: argparse.Namespace,
    mean: Norm,
    std: Norm,
    amp: torch.dtype | None,
    early: CalibrationResult,
) -> dict:
    """σ after convergence (``early``, from end_to_end) against σ over every image of the folder."""
    loader, _ = image_loader(folder, _folder_options(args, mean, std))
    options = CalibrationOptions(tolerance=1e-12, autocast_dtype=amp)
    full = calibrate(copy.deepcopy(model), loader, options, device=args.device)
    diffs = [
        abs(a.std / b.std - 1)
        for se, sf in zip(early.sites, full.sites, strict=True)
        for a, b in zip(se.moments, sf.moments, strict=True)
    ]
    return {
        "images": [s.images for s in early.sites],
        "max_rel_diff": max(diffs),
        "se": max(s.std_rel_se for s in early.sites),
        "se_bound": max(s.std_rel_se_bound for s in early.sites),
    }


def _timed(fn: Callable[[], object], like: torch.Tensor) -> float:
    _sync(like.device.type)
    start = time.perf_counter()
    fn()
    _sync(like.device.type)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(b: torch.Tensor, amp: torch.dtype | None) -> AbstractContextManager:
    from contextlib import nullcontext

    return torch.autocast(b.device.type, dtype=amp) if amp is not None else nullcontext()


if __name__ == "__main__":
    main()
