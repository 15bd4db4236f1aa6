"""The gradient side of the A/B comparison: each run's grad_ratio curve, its summary and its plot.

The trainer logs every fusion site's grad_ratio (max/min over the site's inputs of the fusing weight's
gradient RMS) to metrics.jsonl every ``run.log_interval``; here the runs' curves are read back,
summarized per mode (first and last logged value, mean over seeds) and drawn beside the mIoU curves.
Insert-mode runs log their layers under the original names, so one site is one panel for every mode.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

GradCurve = tuple[tuple[int, Mapping[str, float | None]], ...]
COLOURS = {"none": "tab:gray", "fold": "tab:blue", "insert": "tab:orange"}  # one colour per mode
STYLES = ("-", "--", ":", "-.")  # one line style per seed, so runs of one seed pair up


def grad_curve(records: Sequence[Mapping[str, Any]]) -> GradCurve:
    """(iteration, {layer: grad_ratio}) of every metrics.jsonl record that has one.

    >>> grad_curve([{"iter": 2, "loss": 1.0, "grad_ratio": {"a": 1.5}}, {"iter": 3, "mIoU": 0.1}])
    ((2, {'a': 1.5}),)
    """
    return tuple((int(r["iter"]), dict(r["grad_ratio"])) for r in records if r.get("grad_ratio"))


def layers_of(curves: Sequence[GradCurve]) -> list[str]:
    """Every layer that appears in any curve, in first-seen order."""
    seen: dict[str, None] = {}
    for curve in curves:
        for _, ratios in curve:
            seen.update(dict.fromkeys(ratios))
    return list(seen)


def grad_summary(runs: Sequence[tuple[str, GradCurve]], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Per mode and layer: the first and last logged grad_ratio, each a mean over the mode's seeds.

    >>> runs = [("none", ((2, {"a": 2.0}), (4, {"a": 1.5}))), ("none", ((2, {"a": 1.0}), (4, {"a": 1.5})))]
    >>> grad_summary(runs, ["none"])
    [{'mode': 'none', 'layer': 'a', 'first': 1.5, 'last': 1.5, 'seeds': 2}]
    """
    layers = layers_of([curve for _, curve in runs])
    rows = []
    for mode in modes:
        curves = [curve for m, curve in runs if m == mode]
        for layer in layers:
            values = [[r[layer] for _, r in c if r.get(layer) is not None] for c in curves]
            values = [v for v in values if v]
            rows.append({
                "mode": mode,
                "layer": layer,
                "first": _mean([v[0] for v in values]),
                "last": _mean([v[-1] for v in values]),
                "seeds": len(values),
            })  # fmt: skip
    return rows


def plot_grad_panels(
    axes: Sequence[Any], runs: Sequence[tuple[str, int, GradCurve]], seeds: list[int]
) -> None:
    """One panel per layer: grad_ratio against iteration, colour = mode, line style = seed."""
    layers = layers_of([curve for _, _, curve in runs])
    for ax, layer in zip(axes, layers):
        for mode, seed, curve in runs:
            points = [(i, r[layer]) for i, r in curve if r.get(layer) is not None]
            if points:
                iters, ratios = zip(*points, strict=True)
                style = STYLES[seeds.index(seed) % len(STYLES)]
                ax.plot(iters, ratios, style, color=COLOURS.get(mode), lw=1)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_title(layer if len(layer) <= 40 else "…" + layer[-39:], fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("grad_ratio (max/min slice RMS)")
        ax.grid(alpha=0.3)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if math.isfinite(v)]
    return statistics.fmean(values) if values else None
