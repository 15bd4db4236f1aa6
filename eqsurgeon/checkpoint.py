"""Save: a calibrated state dict plus what was done to it, as one deterministic, atomically written file.

The safetensors header holds exactly one metadata key, ``eqsurgeon``, a JSON string with sorted keys.
One key on purpose: safetensors serializes its metadata map in hash order, so two keys can come out in
either order and two identical runs would write different bytes.

>>> import tempfile, torch
>>> path = Path(tempfile.mkdtemp()) / "x.safetensors"
>>> meta = CalibrationRecord(model="m", mode="fold", bn_mode="batch", images=2, data_fingerprint="ab")
>>> save_checkpoint(path, {"w": torch.ones(2)}, meta).name
'x.safetensors'
>>> read_checkpoint(path)[1].mode
'fold'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from eqsurgeon.errors import CheckpointError, OutputExistsError
from eqsurgeon.loading import read_state_dict
from eqsurgeon.records import CalibrationRecord

METADATA_KEY = "eqsurgeon"


def check_writable(path: Path, force: bool) -> Path:
    """Fail early, before any measuring, when ``path`` exists without ``force`` or its folder is missing.

    >>> check_writable(Path("/nonexistent-dir/x.safetensors"), False)
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.OutputExistsError: output folder /nonexistent-dir not found; create it or choose --out
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputExistsError(f"output folder {path.parent} not found; create it or choose --out")
    if path.exists() and not force:
        raise OutputExistsError(
            f"{path} already exists; pass --force to overwrite it or choose another --out"
        )
    if path.suffix != ".safetensors":
        raise OutputExistsError(f"{path} must end in .safetensors; choose --out FILE.safetensors")
    return path


def save_checkpoint(
    path: Path | str, state_dict: dict[str, torch.Tensor], meta: CalibrationRecord, force: bool = False
) -> Path:
    """Write ``state_dict`` and ``meta`` to ``path`` atomically: a temporary file, then ``os.replace``.

    A crash or Ctrl-C at any point leaves either the old file or the complete new one, never a partial
    file (the temporary file is removed). Same inputs give byte-identical files.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is False.
    """
    path = check_writable(Path(path), force)
    # Clone so tied parameters (one storage, two keys) save as two tensors, which safetensors requires.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    blob = save_safetensors_bytes(tensors, metadata={METADATA_KEY: meta.to_json()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], CalibrationRecord | None]:
    """Read a state dict and, when the file is a calibrated checkpoint, its ``CalibrationRecord``.

    Reading is ``eqsurgeon.loading.read_state_dict``: safetensors, or ``.pt``/``.pth`` only with
    ``torch.load(weights_only=True)`` (a dict nested under "state_dict" or "model" is unwrapped).

    Raises:
        CheckpointError: the file is missing or not a readable state dict.
    """
    tensors, header = read_state_dict(Path(path))
    meta = CalibrationRecord.from_json(header[METADATA_KEY]) if METADATA_KEY in header else None
    return tensors, meta


def refuse_double_equalization(meta: CalibrationRecord | None, path: Path | str, force: bool) -> None:
    """Raise when the input checkpoint was already equalized (calibrating it again would scale twice).

    Folding moves 1/σ into the weights; the features that feed the fusing layer are unchanged, so
    measuring again finds the same σ and a second fold divides the weights by σ once more (σ² in total).
    """
    if meta is None or not meta.equalized_sites or force:
        return
    raise CheckpointError(
        f"{path} is already scale-equalized ({meta.mode} mode, {len(meta.equalized_sites)} site(s)); "
        "the fused features are unchanged by folding, so calibrating it again would divide the weights "
        "by σ a second time. Calibrate the original checkpoint, or pass --force to equalize on top"
    )


def load(model: nn.Module, checkpoint: Path | str) -> nn.Module:
    """Load a (calibrated) checkpoint into ``model``, first rebuilding insert-mode equalizers if any.

    Fold-mode checkpoints have the model's own keys and load as is. Insert-mode checkpoints hold
    ``<layer>.layer.*`` and ``<layer>.equalizers.<i>.*`` keys: the wrappers are inserted from the
    metadata, then the state dict is loaded with ``strict=True``.

    Raises:
        CheckpointError: the checkpoint is unreadable or does not fit the model.

    >>> # model = eqsurgeon.load(build_my_model(), "calibrated.safetensors")
    """
    tensors, meta = read_checkpoint(checkpoint)
    apply_checkpoint(model, tensors, meta, checkpoint)
    return model


def apply_checkpoint(
    model: nn.Module, tensors: dict[str, torch.Tensor], meta: CalibrationRecord | None, source: Path | str
) -> None:
    """``load`` for an already read checkpoint: insert equalizers per ``meta``, then load strictly."""
    from eqsurgeon.loading import fit_state_dict

    if meta is not None:
        _insert_equalizers(model, meta)
    fit_state_dict(model, tensors, source)


def rebuild_equalizers(model: nn.Module, metadata: Mapping[str, str]) -> None:
    """Insert the equalizer wrappers an insert-mode checkpoint's raw safetensors metadata describes.

    For loaders that read the state dict themselves (``eqsurgeon.loading.load_model``).
    """
    if METADATA_KEY in metadata:
        _insert_equalizers(model, CalibrationRecord.from_json(metadata[METADATA_KEY]))


def _insert_equalizers(model: nn.Module, meta: CalibrationRecord) -> None:
    from eqsurgeon.equalize import InputStat, insert_equalizers

    if meta.mode != "insert":
        return
    for site in meta.equalized_sites:
        stats = [InputStat(tuple(i.channels), i.mean, i.std) for i in site.inputs]
        insert_equalizers(model, site.layer, stats, site.channel_dim)
