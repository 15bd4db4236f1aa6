"""Benchmark: analyze's cost against the least any analysis must pay, on the largest zoo model.

    ratio = analyze (capture + site finding + measuring forward)
            / (bare capture with the same frontend + one plain no_grad forward)

Target: ≤ 1.5. The last line is one JSON object with the headline figures.

    python benchmarks/bench_analyze.py [--device cuda] [--size 512] [--batch-size 2] [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

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
    model = create_model(name).to(device)
    x = torch.randn(args.batch_size, 3, size, size, device=device)

    result = analyze(model, [x]).analysis  # warm-up, and tells which frontend analyze uses
    frontend = result.frontend
    t_analyze, t_capture, t_forward = [], [], []
    for _ in range(args.repeats):
        t_analyze.append(_timed(device, lambda: analyze(model, [x]).analysis))
        t_capture.append(_timed(device, lambda: _bare_capture(model, x, frontend)))
        t_forward.append(_timed(device, lambda: _plain_forward(model, x)))
    a, c, f = (statistics.median(t) for t in (t_analyze, t_capture, t_forward))
    ratio = a / (c + f)

    print(
        f"model {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
        f"batch {args.batch_size}x3x{size}x{size}, device {device}, frontend {frontend}, "
        f"median of {args.repeats}"
    )
    print(f"{'step':<28}{'seconds':>10}")
    for label, value in (
        ("bare capture", c),
        ("plain forward", f),
        ("baseline (capture+forward)", c + f),
        ("analyze", a),
    ):
        print(f"{label:<28}{value:>10.3f}")
    print(f"analyze / baseline = {ratio:.3f}  (target <= 1.5)")
    print(
        json.dumps(
            {
                "bench": "analyze",
                "model": name,
                "device": device,
                "size": size,
                "batch": args.batch_size,
                "frontend": frontend,
                "sites": len(result.sites),
                "analyze_s": round(a, 4),
                "capture_s": round(c, 4),
                "forward_s": round(f, 4),
                "ratio_vs_capture_plus_forward": round(ratio, 3),
            }
        )
    )


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
    return p.parse_args()


if __name__ == "__main__":
    main()
