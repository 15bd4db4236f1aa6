"""Plain-data views of results: the JSON documents of every command, the one-line readings, the plot.

The one place besides ``cli/`` that knows how results look to a person; it never prints.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eqsurgeon.checking import CheckResult
from eqsurgeon.io import record_to_dict
from eqsurgeon.records import Analysis, CalibrationRecord, FusionSite, SliceGradient, Subject
from eqsurgeon.stats import finite
from eqsurgeon.verification import Verification


def analysis_to_dict(analysis: Analysis) -> dict[str, Any]:
    """The ``analyze --json`` document (keys may be added, never renamed)."""
    return {
        "model": analysis.model,
        "frontend": analysis.frontend,
        "fx_error": analysis.fx_error,
        "bn_mode": analysis.bn_mode,
        "input": {
            "source": analysis.input.source,
            "images": analysis.input.images,
            "size": list(analysis.input.size),
        },
        "sites": [_site_dict(analysis, s) for s in analysis.sites],
        "add_sites": [
            {"name": a.name, "inputs": [_subject_dict(s) for s in a.inputs]} for a in analysis.add_sites
        ],
        "unsearched_leaves": [{"name": u.name, "reason": u.reason} for u in analysis.unsearched],
        **({"grad_loss": analysis.grad_loss} if analysis.grad_loss is not None else {}),
    }


def reading(analysis: Analysis, site: FusionSite) -> str:
    """One line on what a site's figures mean for training: measured gradients when there are, else
    what the variances suggest (an inference, said as one)."""
    if not site.ok:
        return f"skipped: {site.reason}"
    grads = analysis.gradients.get(site.layer)
    if grads is not None:
        return _measured_reading(grads, analysis.grad_ratio(site), analysis.grad_loss)
    ratio = analysis.var_ratio(site)
    moments = analysis.moments[site.layer]
    if ratio is None or not math.isfinite(ratio):
        return "an input has zero or non-finite variance; it cannot be equalized"
    lo = min(range(len(moments)), key=lambda i: moments[i].var)
    hi = max(range(len(moments)), key=lambda i: moments[i].var)
    if ratio <= 1.1:
        return "balanced: the concat inputs arrive on equal scales"
    return (
        f"inferred from the variances: input {lo} may get about {math.sqrt(ratio):.2f}x smaller weight "
        f"gradients than input {hi}; measure them with --gradients"
    )


def _measured_reading(grads: Sequence[SliceGradient], ratio: float | None, loss: str | None) -> str:
    how = f"measured ({loss})" if loss else "measured"
    if ratio is None or not math.isfinite(ratio):
        return f"{how}: a slice's weight gradient is zero or not finite"
    if ratio <= 1.1:
        return f"{how}: the inputs' weight gradients are balanced (grad_ratio {ratio:.2f})"
    lo = min(range(len(grads)), key=lambda i: grads[i].rms)
    hi = max(range(len(grads)), key=lambda i: grads[i].rms)
    return f"{how}: input {lo} gets {ratio:.2f}x smaller weight gradients than input {hi}"


def check_to_dict(model: str, result: CheckResult) -> dict[str, Any]:
    """The ``check --format json`` document."""
    return {
        "model": model,
        "passed": result.passed,
        "max_ratio": result.max_ratio,
        "sites": [
            {"layer": v.layer, "var_ratio": _num(v.ratio), "passed": v.passed, "equalized": v.equalized,
             "scales_from": v.scales_from, "note": v.note}
            for v in result.verdicts
        ],
    }  # fmt: skip


def calibration_to_dict(record: CalibrationRecord, out: Path | None = None) -> dict[str, Any]:
    """The ``calibrate --format json`` document: the calibration record, and where it was written."""
    return finite({"out": None if out is None else str(out), **record_to_dict(record)})


def verification_to_dict(source: str, record: CalibrationRecord, result: Verification) -> dict[str, Any]:
    """The ``verify --format json`` document."""
    return finite({
        "checkpoint": source,
        "mode": record.mode,
        "bn_mode": result.bn_mode,
        "images": result.images,
        "sites": [
            {
                "layer": s.layer,
                "var_ratio": s.var_ratio,
                "inputs": [
                    {"channels": list(i.channels), "source": i.source, "mean": i.mean, "var": i.var}
                    for i in s.inputs
                ],
            }
            for s in result.sites
        ],
    })  # fmt: skip


def _site_dict(analysis: Analysis, site: FusionSite) -> dict[str, Any]:
    moments = analysis.moments.get(site.layer)
    grads = analysis.gradients.get(site.layer)
    measured_grads = analysis.grad_loss is not None
    inputs = []
    for i, subject in enumerate(site.subjects):
        d = _subject_dict(subject)
        d["mean"] = _num(moments[i].mean) if moments else None
        d["var"] = _num(moments[i].var) if moments else None
        if measured_grads:
            d["grad_rms"] = _num(grads[i].rms) if grads else None
            d["grad_rms_rel"] = _num(grads[i].rel) if grads else None
        inputs.append(d)
    out = {
        "layer": site.layer,
        "op": site.op,
        "groups": site.groups,
        "status": site.status,
        "reason": site.reason,
        "channel_dim": site.channel_dim,
        "inputs": inputs,
        "var_ratio": _num(analysis.var_ratio(site)),
    }
    if measured_grads:
        out["grad_ratio"] = _num(analysis.grad_ratio(site))
    return out


def _subject_dict(subject: Subject) -> dict[str, Any]:
    up = subject.upsample
    return {
        "channels": list(subject.channels),
        "source": subject.source,
        "upsample": None
        if up is None
        else {
            "mode": up.mode,
            "factor": list(up.factor),
            "align_corners": up.align_corners,
        },
    }


def _num(x: float | None) -> float | None:
    # JSON has no inf/nan; null says "not measurable" without breaking strict parsers.
    return None if x is None or not math.isfinite(x) else float(x)


def write_plot(analysis: Analysis, path: Path) -> None:
    """Bar chart of every input's variance per site, with the BN-ReLU reference (π−1)/2π; with measured
    gradients, a second row of bars with each input's weight-gradient RMS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eqsurgeon.stats import BN_RELU_VAR

    sites = [s for s in analysis.sites if s.layer in analysis.moments]
    rows, cols = (2 if analysis.gradients else 1), max(len(sites), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.5 * rows), squeeze=False)
    for col, site in enumerate(sites):
        moments, ax = analysis.moments[site.layer], axes[0][col]
        labels = [
            f"{i}\n{'x' + format(s.upsample.factor[0], '.3g') if s.upsample and s.upsample.factor else 'x1'}"
            for i, s in enumerate(site.subjects)
        ]
        ax.bar(labels, [m.var for m in moments], color="#4c72b0")
        ax.axhline(BN_RELU_VAR, color="k", linestyle=":", label="(π−1)/2π")
        ax.set_title(f"{site.layer}\nvar_ratio={analysis.var_ratio(site):.2f}", fontsize=9)
        ax.set_ylabel("variance")
        ax.legend(fontsize=7)
        grads = analysis.gradients.get(site.layer)
        if rows == 2 and grads is not None:
            ax = axes[1][col]
            ax.bar(labels, [g.rms for g in grads], color="#dd8452")
            ax.set_title(f"grad_ratio={analysis.grad_ratio(site):.2f} ({analysis.grad_loss})", fontsize=9)
            ax.set_ylabel("weight-gradient RMS")
    if not sites:
        axes[0][0].text(0.5, 0.5, "no measured fusion site", ha="center", va="center")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
