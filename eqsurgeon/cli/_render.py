"""Turning parsed options into library records, and library results into rich tables.

Library modules are imported inside the functions: importing this file must not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from eqsurgeon.cli._common import WORKERS, parse_floats, parse_size, printable

if TYPE_CHECKING:
    from eqsurgeon.calibration import CalibrationResult
    from eqsurgeon.records import Analysis


def text(value: str) -> Text:
    """A plain rich ``Text``: user data (paths, layer names) is never read as markup."""
    return Text(value)


def data_options(
    input_size: str | None,
    batch_size: int,
    seed: int,
    device: str,
    max_images: int | None = None,
    workers: int = WORKERS,
    mean: str | None = None,
    std: str | None = None,
    batches: int = 1,
) -> Any:
    """The ``DataOptions`` record of the shared data options."""
    from eqsurgeon.api import DataOptions

    return DataOptions(
        input_size=parse_size(input_size), batch_size=batch_size, batches=batches, max_images=max_images,
        workers=workers, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), seed=seed,
        device=device,
    )  # fmt: skip


def with_caps(options: Any, max_megapixels: float, max_aspect: float) -> Any:
    """``DataOptions`` with the image caps of --max-megapixels and --max-aspect."""
    import dataclasses

    from eqsurgeon.errors import OptionError

    if not 1e-6 <= max_megapixels < 1e6:
        raise OptionError("max_megapixels", max_megapixels, "is out of range; use e.g. --max-megapixels 40")
    return dataclasses.replace(options, max_pixels=round(max_megapixels * 1e6), max_aspect=max_aspect)


def measure_options(bn_mode: str, frontend: str, gradients: bool = False) -> Any:
    """The ``MeasureOptions`` record of --bn-mode, --frontend and --gradients."""

    from eqsurgeon.api import MeasureOptions

    return MeasureOptions(bn_mode=bn_mode, frontend=frontend, gradients=gradients)


def print_skipped(out: Console, skipped: Sequence[Any]) -> None:
    """Name the image files that could not be used (first 20)."""
    if not skipped:
        return
    names = ", ".join(printable(s.path.name) for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    out.print(f"skipped {len(skipped)} unreadable file(s): {names}", markup=False, soft_wrap=True)
    for s in skipped[:20]:  # file names need not be UTF-8, nor free of control characters
        out.print(printable(f"  {s.path}: {s.reason}"), markup=False, soft_wrap=True)
    if len(skipped) > 20:
        out.print(f"  ... and {len(skipped) - 20} more", markup=False)


def print_capture(out: Console, analysis: Analysis) -> None:
    """How the graph was captured and what was measured."""
    line = f"captured with {analysis.frontend}"
    if analysis.fx_error:
        line += f" (torch.fx failed: {analysis.fx_error})"
    out.print(line, markup=False)
    bn = "batch statistics" if analysis.bn_mode == "batch" else "running statistics (eval)"
    out.print(
        f"measured on {analysis.input.images} {analysis.input.source} image(s) at "
        f"{analysis.input.size[0]}x{analysis.input.size[1]}, BN on {bn}",
        markup=False,
    )
    for leaf in analysis.unsearched:
        out.print(
            f"warning: leaf module {leaf.name} could not be searched for sites ({leaf.reason})",
            markup=False, style="yellow",
        )  # fmt: skip


def print_analysis(out: Console, analysis: Analysis) -> None:
    """The capture line, one table per site, and the add sites."""
    from eqsurgeon.report import reading

    print_capture(out, analysis)
    if not analysis.sites:
        out.print("[bold]no fusion site[/]: no upsample → concat → conv/linear in this model")
    if analysis.grad_loss is not None:
        out.print(f"weight gradients: one backward per batch, loss {analysis.grad_loss}", markup=False)
    numbers = ("mean", "var", "grad", "grad/w")
    for site in analysis.sites:
        title = f"{site.layer}  ({site.op}, groups={site.groups})  var_ratio={_fmt(analysis.var_ratio(site))}"
        if analysis.grad_loss is not None:
            title += f"  grad_ratio={_fmt(analysis.grad_ratio(site))}"
        table = Table(title=text(f"{title}  [{site.status}]"), title_justify="left",
                      caption=text(reading(analysis, site)), caption_justify="left")  # fmt: skip
        columns = ("input", "channels", "source", "upsample", *numbers[: 4 if analysis.grad_loss else 2])
        for col in columns:
            table.add_column(col, justify="right" if col in numbers else "left", overflow="fold")
        moments, grads = analysis.moments.get(site.layer), analysis.gradients.get(site.layer)
        for i, s in enumerate(site.subjects):
            up = "-" if s.upsample is None else f"{s.upsample.mode} {_factor(s.upsample.factor)}"
            cells = [_fmt(moments[i].mean), _fmt(moments[i].var)] if moments else ["-", "-"]
            if analysis.grad_loss is not None:
                cells += [f"{grads[i].rms:.3g}", f"{grads[i].rel:.3g}"] if grads else ["-", "-"]
            table.add_row(str(i), f"{s.channels[0]}:{s.channels[1]}", text(s.source), up, *cells)
        out.print(table)
    for add in analysis.add_sites:
        ups = ", ".join(
            f"{s.source}" + (f" ({s.upsample.mode} {_factor(s.upsample.factor)})" if s.upsample else "")
            for s in add.inputs
        )
        out.print(f"add fusion (reported, not changed): {add.name} ← {ups}", markup=False)


def print_calibration(out: Console, result: CalibrationResult) -> None:
    """Per site: μ, σ, scale and variance of each input before/after, and the var_ratio before → after."""
    for s in result.sites:
        head = f"{s.site.layer}  ({s.site.op}, groups={s.site.groups})  [{s.status}]"
        if s.status != "ok":
            out.print(f"{head}: {s.reason}", style="yellow", markup=False)
            continue
        bias = "bias corrected" if s.bias_corrected else f"bias unchanged{f': {s.note}' if s.note else ''}"
        title = f"{head}  {s.images} images, σ rel. SE {s.std_rel_se:.4f} (≤ {s.std_rel_se_bound:.4f})"
        caption = f"var_ratio {s.var_ratio_before:.3f} → {s.var_ratio_after:.3f} ({result.mode}); {bias}"
        table = Table(title=text(title), title_justify="left", caption=text(caption), caption_justify="left")
        for col in ("in", "channels", "source", "upsample"):
            table.add_column(col, overflow="fold")
        for col in ("μ", "σ", "scale", "var", "var·scale²"):
            table.add_column(col, justify="right", no_wrap=True)
        for i, (sub, m, scale) in enumerate(zip(s.site.subjects, s.moments, s.scales or (), strict=True)):
            up = "-" if sub.upsample is None else f"{sub.upsample.mode} x{sub.upsample.factor[0]:g}"
            table.add_row(
                str(i), f"{sub.channels[0]}:{sub.channels[1]}", text(sub.source), up,
                f"{m.mean:.4f}", f"{m.std:.4f}", f"{scale:.4f}", f"{m.var:.4f}", f"{m.var * scale**2:.4f}",
            )  # fmt: skip
        out.print(table)
    state = "converged" if result.converged else f"not converged to {result.tolerance:g} (images ran out)"
    out.print(
        f"{len(result.equalized)} site(s) equalized, {len(result.sites) - len(result.equalized)} skipped; "
        f"σ {state}; up to {result.images} images per site; BN on {result.bn_mode} statistics",
        markup=False,
    )


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if not math.isfinite(x):
        return "inf"
    return f"{x:.4f}"


def _factor(factor: tuple[float, ...]) -> str:
    """``(2.0, 2.0)`` → ``x2``; ``(1.5, 2.0)`` → ``x1.5x2``."""
    if not factor:
        return ""
    if len(set(factor)) == 1:
        return f"x{factor[0]:g}"
    return "x" + "x".join(f"{f:g}" for f in factor)
