"""``eqsurgeon calibrate``: measure on real images and write a scale-equalized safetensors checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from eqsurgeon.cli import _common as c

ModeOpt = Annotated[
    str, typer.Option("--mode", help="fold (rescale weights, same keys) or insert (equalizers)")
]
BiasOpt = Annotated[
    str, typer.Option("--bias-correction", help="auto (unless BN/InstanceNorm follows), on or off")
]
ToleranceOpt = Annotated[
    float,
    typer.Option("--tolerance", help="stop when every σ's relative standard error is below this (95% sure)"),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite --out; calibrate an equalized checkpoint")]
AmpOpt = Annotated[
    bool, typer.Option("--amp", help="measure under autocast (bf16); faster, slightly noisier")
]


@c.handle_errors
def calibrate(
    model: c.ModelArg,
    data: Annotated[Path, typer.Option("--data", help="folder of training images (searched recursively)")],
    out: Annotated[Path, typer.Option("--out", help="calibrated checkpoint to write (.safetensors)")],
    arg: c.ArgOpt = None,
    checkpoint: c.CheckpointOpt = None,
    mode: ModeOpt = "fold",
    max_images: c.MaxImagesOpt = None,
    tolerance: ToleranceOpt = 0.005,
    batch_size: c.BatchSizeOpt = 8,
    workers: c.WorkersOpt = 2,
    device: c.DeviceOpt = "auto",
    amp: AmpOpt = False,
    input_size: c.OptionalInputSizeOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    bn_mode: c.BnModeOpt = "auto",
    bias_correction: BiasOpt = "auto",
    seed: c.SeedOpt = 0,
    force: ForceOpt = False,
    frontend: c.FrontendOpt = "auto",
    json_out: c.JsonOutOpt = None,
) -> None:
    """Measure each concat input's μ, σ on --data until σ converges, fold 1/σ into the fusing layers
    (or insert equalizers), and write --out with the same state-dict keys plus `eqsurgeon` metadata."""
    import torch

    from eqsurgeon.calibration import calibrate as run_calibration
    from eqsurgeon.calibration import site_records
    from eqsurgeon.checkpoint import check_writable, save_checkpoint
    from eqsurgeon.records import CalibrationRecord
    from eqsurgeon.report import write_json

    check_writable(out, force)  # fail before minutes of measuring, not after
    _check_json_path(json_out)
    job = prepare(model, arg, checkpoint, data, input_size, mean, std, batch_size, workers, max_images,
                  seed, device, bn_mode, force)  # fmt: skip
    amp_dtype = torch.bfloat16 if amp else None
    c.console.print(
        f"calibrating [bold]{escape(model)}[/] on {len(job.loader.source.paths)} image(s) from "
        f"{escape(str(data))} at {job.size[0]}x{job.size[1]} ({job.device}, mode {mode})",
        highlight=False,
    )
    with _ProgressBar(len(job.loader.source.paths), max_images) as bar:
        result = run_calibration(
            job.model, job.loader, mode=mode, bias_correction=bias_correction, bn_mode=bn_mode,
            tolerance=tolerance, max_images=max_images, frontend=frontend, device=job.device,
            autocast_dtype=amp_dtype, progress=bar.update,
        )  # fmt: skip
    meta = CalibrationRecord(
        model=model, model_kwargs=job.kwargs, mode=mode, bn_mode=result.bn_mode, images=result.images,
        data_fingerprint=job.fingerprint, bias_correction=bias_correction, tolerance=tolerance,
        converged=result.converged, seed=seed, input_size=job.size, image_mean=job.mean,
        image_std=job.std, skipped_files=len(job.loader.skipped), sites=site_records(result),
    )  # fmt: skip
    save_checkpoint(out, job.model.state_dict(), meta, force=force)
    print_skipped(job.loader.skipped)
    print_summary(result)
    c.console.print(f"wrote [bold]{escape(str(out))}[/]", highlight=False)
    if json_out is not None:
        write_json({"out": str(out), **meta.to_dict()}, json_out)
        c.console.print(f"wrote {escape(str(json_out))}", highlight=False)


@dataclass(frozen=True)
class Job:
    """A loaded model and its image loader, as the shared options say."""

    model: Any
    kwargs: dict
    loader: Any
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str
    fingerprint: str
    checkpoint_meta: Any = None


def prepare(
    spec: str, arg: list[str] | None, checkpoint: Path | None, data: Path, input_size: str | None,
    mean: str | None, std: str | None, batch_size: int, workers: int, max_images: int | None, seed: int,
    device: str, bn_mode: str, force: bool, defaults: Any = None,
) -> Job:  # fmt: skip
    """Load the model (+ checkpoint), and build the image loader; shared by calibrate and verify.

    ``defaults`` (a checkpoint's ``CalibrationRecord``) supplies input size and normalization not given.
    """
    from eqsurgeon.checkpoint import apply_checkpoint, read_checkpoint, refuse_double_equalization
    from eqsurgeon.images import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        image_loader,
        model_input_size,
        model_normalization,
        scan_images,
    )
    from eqsurgeon.loading import load_model, parse_kwargs
    from eqsurgeon.measure import BN_MODES

    if bn_mode not in BN_MODES:
        raise c.EqSurgeonError(f"--bn-mode {bn_mode!r} is unknown; use one of {', '.join(BN_MODES)}")
    device = c.resolve_device(device)
    source = scan_images(data)  # before loading the model: a bad folder fails fast
    kwargs = parse_kwargs(arg)
    import torch

    torch.manual_seed(seed)  # a freshly initialized model is part of the output: same seed, same bytes
    net = load_model(spec, kwargs)
    meta = None
    if checkpoint is not None:
        tensors, meta = read_checkpoint(checkpoint)
        if defaults is None:
            refuse_double_equalization(meta, checkpoint, force)
        apply_checkpoint(net, tensors, meta, checkpoint)
    net = net.to(device)
    declared = model_normalization(net)
    if defaults is not None and defaults.image_mean:
        declared = (tuple(defaults.image_mean), tuple(defaults.image_std))
    norm_mean = c.parse_floats(mean, "--mean") if mean else (declared[0] if declared else None)
    norm_std = c.parse_floats(std, "--std") if std else (declared[1] if declared else None)
    size = _input_size(input_size, net, defaults, model_input_size)
    loader, _ = image_loader(
        source, size=size, batch_size=batch_size, mean=norm_mean, std=norm_std, workers=workers,
        max_images=max_images, seed=seed, pin_memory=device.startswith("cuda"),
    )  # fmt: skip
    mean_used = tuple(map(float, norm_mean or IMAGENET_MEAN))
    std_used = tuple(map(float, norm_std or IMAGENET_STD))
    return Job(net, kwargs, loader, size, mean_used, std_used, device, source.fingerprint(), meta)


def print_skipped(skipped: Any) -> None:
    if skipped:
        c.console.print(f"[yellow]skipped {len(skipped)} unreadable file(s):[/]", highlight=False)
        for s in skipped[:20]:
            c.console.print(f"  {escape(str(s.path))}: {escape(s.reason)}", highlight=False)
        if len(skipped) > 20:
            c.console.print(f"  ... and {len(skipped) - 20} more", highlight=False)


def print_summary(result: Any) -> None:
    """Per site: μ, σ, scale and variance of each input before/after, and the var_ratio before → after."""
    for s in result.sites:
        head = f"{s.site.layer}  ({s.site.op}, groups={s.site.groups})  [{s.status}]"
        if s.status != "ok":
            c.console.print(escape(f"{head}: {s.reason}"), style="yellow", highlight=False)
            continue
        bias = "bias corrected" if s.bias_corrected else f"bias unchanged{f': {s.note}' if s.note else ''}"
        table = Table(
            title=escape(
                f"{head}  {s.images} images, σ rel. SE {s.std_rel_se:.4f} (≤ {s.std_rel_se_bound:.4f})"
            ),
            title_justify="left",
            caption=escape(
                f"var_ratio {s.var_ratio_before:.3f} → {s.var_ratio_after:.3f} ({result.mode}); {bias}"
            ),
            caption_justify="left",
        )
        for col in ("in", "channels", "source", "upsample"):
            table.add_column(col, overflow="fold")
        for col in ("μ", "σ", "scale", "var", "var·scale²"):
            table.add_column(col, justify="right", no_wrap=True)
        for i, (sub, m, scale) in enumerate(zip(s.site.subjects, s.moments, s.scales, strict=True)):
            up = "-" if sub.upsample is None else f"{sub.upsample.mode} x{sub.upsample.factor[0]:g}"
            table.add_row(
                str(i), f"{sub.channels[0]}:{sub.channels[1]}", escape(sub.source), up,
                f"{m.mean:.4f}", f"{m.std:.4f}", f"{scale:.4f}", f"{m.var:.4f}", f"{m.var * scale**2:.4f}",
            )  # fmt: skip
        c.console.print(table)
    state = "converged" if result.converged else f"not converged to {result.tolerance:g} (images ran out)"
    c.console.print(
        f"{len(result.equalized)} site(s) equalized, {len(result.sites) - len(result.equalized)} skipped; "
        f"σ {state}; up to {result.images} images per site; BN on {result.bn_mode} statistics",
        highlight=False,
    )


class _ProgressBar:
    """A rich progress bar per measuring pass: images, images/s, worst σ standard error, ETA."""

    def __init__(self, images: int, max_images: int | None) -> None:
        self.total = min(images, max_images or images)
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s  σ SE ≤ {task.fields[se]}"), TimeRemainingColumn(),
            console=c.console, transient=False,
        )  # fmt: skip
        self.tasks: dict[int, Any] = {}
        self.start = self.last = 0.0

    def __enter__(self) -> _ProgressBar:
        self.bar.__enter__()
        self.last = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, p: Any) -> None:
        if p.site not in self.tasks:
            label = escape(f"site {p.site + 1}/{p.sites} {p.layer}")
            self.tasks[p.site] = self.bar.add_task(label, total=self.total, rate="-", se="-")
            self.start = self.last  # this pass began when the previous report (or the bar) ended
        self.last = time.perf_counter()
        rate = p.images / max(self.last - self.start, 1e-9)
        se = f"{p.std_rel_se_bound:.4f}" if p.std_rel_se_bound < float("inf") else "-"
        self.bar.update(self.tasks[p.site], completed=min(p.images, self.total), rate=f"{rate:.1f}", se=se)


def _input_size(text: str | None, net: Any, defaults: Any, declared: Any) -> tuple[int, int]:
    if text:
        return c.parse_size(text)
    if defaults is not None and defaults.input_size:
        return tuple(defaults.input_size)  # type: ignore[return-value]
    return declared(net) or (512, 512)


def _check_json_path(path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise c.EqSurgeonError(f"folder {path.parent} for {path.name} does not exist; create it first")
