"""Benchmark: analyze's cost against the least any analysis must pay, on the largest zoo model and on
the largest model of the public-model corpus (tests/_corpus.py).

    ratio = analyze (capture + leaf search + site finding + measuring forward)
            / (bare capture with the same frontend + one plain no_grad forward)

Target: ≤ 1.5 on the largest zoo model. The last line is one JSON object with the headline figures.

    python benchmarks/bench_analyze.py [--device cuda] [--size 512] [--batch-size 2] [--model NAME]
                                       [--no-corpus]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from eqsurgeon.api import analyze
from eqsurgeon.capture import _Tracer
from eqsurgeon.state import preserved_state
from eqsurgeon.zoo import create_model, list_models
from eqsurgeon.zoo.summary import summarize


def main() -> None:
    args = _parse()
    warnings.filterwarnings("ignore")
    device = args.device
    name = args.model or max(list_models(), key=lambda n: summarize(n, flops=False, sites=False).params)
    size = args.size or (512 if device == "cuda" else 256)
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    zoo = _bench(name, create_model(name).to(device), x, args.repeats, device)
    headline = {"bench": "analyze", **zoo["json"]}
    if not args.no_corpus:
        corpus_name, model = _largest_corpus_model()
        corpus = _bench(corpus_name, model.to(device), x, args.repeats, device)
        headline["corpus"] = corpus["json"]
    print(json.dumps(headline))


def _bench(name: str, model: torch.nn.Module, x: torch.Tensor, repeats: int, device: str) -> dict:
    result = analyze(model, [x]).analysis  # warm-up, and tells which frontend analyze uses
    frontend = result.frontend
    t_analyze, t_capture, t_forward = [], [], []
    for _ in range(repeats):
        t_analyze.append(_timed(device, lambda: analyze(model, [x]).analysis))
        t_capture.append(_timed(device, lambda: _bare_capture(model, x, frontend)))
        t_forward.append(_timed(device, lambda: _plain_forward(model, x)))
    a, c, f = (statistics.median(t) for t in (t_analyze, t_capture, t_forward))
    ratio = a / (c + f)
    batch, _, height, width = x.shape
    print(
        f"model {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
        f"batch {batch}x3x{height}x{width}, device {device}, frontend {frontend}, median of {repeats}"
    )
    print(f"{'step':<28}{'seconds':>10}")
    for label, value in (
        ("bare capture", c),
        ("plain forward", f),
        ("baseline (capture+forward)", c + f),
        ("analyze", a),
    ):
        print(f"{label:<28}{value:>10.3f}")
    print(f"analyze / baseline = {ratio:.3f}  (target <= 1.5)\n")
    return {
        "json": {
            "model": name,
            "device": device,
            "size": height,
            "batch": batch,
            "frontend": frontend,
            "sites": len(result.sites),
            "unsearched_leaves": len(result.unsearched),
            "analyze_s": round(a, 4),
            "capture_s": round(c, 4),
            "forward_s": round(f, 4),
            "ratio_vs_capture_plus_forward": round(ratio, 3),
        }
    }


def _largest_corpus_model() -> tuple[str, torch.nn.Module]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the corpus lives with the tests
    from tests._corpus import CORPUS

    best: tuple[int, str, torch.nn.Module] | None = None
    for entry in CORPUS:
        model = entry.build()
        params = sum(p.numel() for p in model.parameters())
        if best is None or params > best[0]:
            best = (params, entry.name, model)
    assert best is not None
    return best[1], best[2]


def _bare_capture(model: torch.nn.Module, x: torch.Tensor, frontend: str) -> object:
    # What any graph-based analysis pays at least: the trace itself, nothing else.
    with preserved_state(model), torch.no_grad():
        model.eval()
        if frontend == "fx":
            return torch.fx.GraphModule(model, _Tracer().trace(model))
        return torch.export.export(model, (x,), strict=False)


def _plain_forward(model: torch.nn.Module, x: torch.Tensor) -> object:
    with preserved_state(model), torch.no_grad():
        model.eval()
        return model(x)


def _timed(device: str, fn: Callable[[], object]) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="zoo name (default: the largest by parameters)")
    p.add_argument("--size", type=int, default=None, help="input side (default 512 on cuda, 256 on cpu)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-corpus", action="store_true", help="skip the largest public-model corpus entry")
    return p.parse_args()


if __name__ == "__main__":
    main()
