"""Weights and calibration records on disk: the one module that reads and writes them.

Every file eqsurgeon writes goes through :func:`atomic_write` (a temporary file in the same folder,
fsync, then ``os.replace``), so a crash or Ctrl-C leaves the old file or the complete new one. A
calibration record travels as a typed ``CalibrationRecord`` and becomes JSON only here, under the one
safetensors metadata key ``eqsurgeon``. One key on purpose: safetensors serializes its metadata map in
hash order, so two keys could come out in either order and two identical runs would write different bytes.

Units: ``image_mean``/``image_std`` in a record are on the 0–1 pixel scale (torchvision's convention).
Records written on the 0–255 scale (MMSegmentation's, as early trainer checkpoints did) are converted
when read.

>>> import tempfile, torch
>>> from eqsurgeon.records import CalibrationRecord
>>> path = Path(tempfile.mkdtemp()) / "x.safetensors"
>>> record = CalibrationRecord(model="m", mode="fold", bn_mode="batch", images=2, data_fingerprint="ab")
>>> save_checkpoint(path, {"w": torch.ones(2)}, record).name
'x.safetensors'
>>> read_checkpoint(path)[1].mode
'fold'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, OutputExistsError, one_line
from eqsurgeon.records import CalibrationRecord, InputRecord, SiteRecord, validate_record
from eqsurgeon.stats import finite

METADATA_KEY = "eqsurgeon"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync, then rename it into place.

    The temporary file, ``.{name}.{pid}.tmp``, is removed on any failure, KeyboardInterrupt included;
    ones that a killed process left (its pid is gone) are removed when ``path`` is next written. The file
    gets the mode a plain ``open`` would give it (0666 less the umask). An OS error (a full or read-only
    disk) names ``path``.

    >>> import tempfile
    >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.bin", lambda f: f.write(b"hi"))
    >>> p.read_bytes()
    b'hi'
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or Path(exc.filename) == tmp:  # say which output failed, not its temp
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(path: Path | str) -> list[Path]:
    """Remove the ``.{name}.{pid}.tmp`` files of ``path`` whose writer is no longer alive; return them.

    A SIGKILL or power loss during :func:`atomic_write` leaves such a file behind (the output itself
    is intact). A temp file of a live process, another run writing the same output, is left alone.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / ".x.bin.999999999.tmp").write_bytes(b"half")
    4
    >>> [p.name for p in remove_stale_temps(d / "x.bin")]
    ['.x.bin.999999999.tmp']
    """
    path = Path(path)
    prefix, suffix = f".{path.name}.", ".tmp"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for name in names:
        pid = name[len(prefix) : -len(suffix)]
        if name.endswith(suffix) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            (path.parent / name).unlink(missing_ok=True)
            removed.append(path.parent / name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def write_json(path: Path | str, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (NaN/inf become null: JSON has neither)."""
    text = json.dumps(finite(data), indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def check_output(path: Path | str, force: bool, suffixes: tuple[str, ...] = ()) -> Path:
    """Fail before any work when ``path`` cannot be written: missing folder, existing file, wrong suffix.

    >>> check_output(Path("/nonexistent-dir/x.safetensors"), False)
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.OutputExistsError: output folder /nonexistent-dir does not exist; create it first
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputExistsError(f"{path.parent} is a file, not a folder; choose another path")
    if not path.parent.is_dir():
        raise OutputExistsError(f"output folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; name a file inside it")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; choose another path or pass force=True to replace")
    if suffixes and path.suffix not in suffixes:
        raise OutputExistsError(f"{path} must end in {' or '.join(suffixes)}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputExistsError(f"output folder {path.parent} is not writable; choose another")
    return path


def save_checkpoint(
    path: Path | str,
    state_dict: Mapping[str, torch.Tensor],
    record: CalibrationRecord | None = None,
    *,
    force: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict (+ its calibration record) as safetensors, atomically and deterministically.

    Args:
        path: a ``.safetensors`` file.
        state_dict: tensors on any device; tied parameters are saved as two tensors.
        record: stored as canonical JSON under the ``eqsurgeon`` metadata key.
        force: overwrite an existing file.
        extra: more metadata (a training checkpoint's iteration); calibrated outputs pass none.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is False, or its folder is missing.
    """
    from safetensors.torch import save

    path = check_output(path, force, (".safetensors",))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = dict(extra or {})
    if record is not None:
        metadata[METADATA_KEY] = record_to_json(record)
    blob = save(tensors, metadata=metadata or None)
    return atomic_write(path, lambda f: f.write(blob))


def read_state_dict(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict and its safetensors metadata (empty for ``.pt``/``.pth``/``.bin``).

    Pickle files are loaded only with ``weights_only=True``; a dict holding ``state_dict`` or ``model``
    (MMSegmentation, timm) is unwrapped.

    Raises:
        CheckpointError: the file is missing, a folder, unreadable, or holds no state dict of tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass a weights file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True ({one_line(exc)}); save a plain state dict "
            "or convert it to .safetensors"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj, {}


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], CalibrationRecord | None]:
    """A state dict and, when the file is a calibrated checkpoint, its ``CalibrationRecord``."""
    tensors, header = read_state_dict(path)
    return tensors, record_from_header(header, path)


def record_from_header(header: Mapping[str, str], source: Path | str = "") -> CalibrationRecord | None:
    """The record under the ``eqsurgeon`` key of safetensors metadata, or None."""
    text = header.get(METADATA_KEY)
    if not text:
        return None
    try:
        record = record_from_json(text)
        validate_record(record)
        return record
    except Exception as exc:  # any shape of broken JSON: wrong types, missing keys, nesting
        raise CheckpointError(
            f"{source or 'the checkpoint'} has a malformed eqsurgeon record ({one_line(exc)}); "
            "recalibrate from the original weights"
        ) from exc


def record_to_dict(record: CalibrationRecord) -> dict[str, Any]:
    """The record as plain JSON-able data, with the writing tool's version filled in."""
    data = asdict(record)
    if not data["tool_version"]:
        from eqsurgeon import __version__

        data["tool_version"] = __version__
    return data


def record_to_json(record: CalibrationRecord) -> str:
    """Canonical JSON: sorted keys, no whitespace, so equal records give equal bytes."""
    return json.dumps(record_to_dict(record), sort_keys=True, separators=(",", ":"), allow_nan=True)


def record_from_json(text: str) -> CalibrationRecord:
    """Parse :func:`record_to_json` output; unknown keys (newer versions) are ignored.

    >>> r = record_from_json('{"model": "m", "mode": "fold", "bn_mode": "eval", "images": 1, '
    ...                      '"data_fingerprint": "", "image_mean": [123.675, 116.28, 103.53]}')
    >>> [round(v, 3) for v in r.image_mean]
    [0.485, 0.456, 0.406]
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the record is not a JSON object")
    sites = tuple(
        SiteRecord(
            **{
                **_known(SiteRecord, s),
                "inputs": tuple(
                    InputRecord(**{**_known(InputRecord, i), "channels": tuple(i["channels"])})
                    for i in s.get("inputs", ())
                ),
            }
        )
        for s in data.get("sites", ())
    )
    tuples = {k: tuple(data[k]) for k in ("input_size", "image_mean", "image_std") if data.get(k)}
    if "image_mean" in tuples and max(tuples["image_mean"]) > 1.5:  # a 0–255 record: to 0–1
        tuples["image_mean"] = tuple(v / 255 for v in tuples["image_mean"])
        tuples["image_std"] = tuple(v / 255 for v in tuples.get("image_std", ()))
    return CalibrationRecord(**{**_known(CalibrationRecord, data), **tuples, "sites": sites})


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the keys that do not fit.

    Refused as well, since loading would hide them: integer or bool tensors where the model holds
    floats (``load_state_dict`` would cast them without a word), and NaN or infinite values (a diverged
    run's weights evaluate to a normal-looking but meaningless mIoU).

    >>> state = {"weight": torch.ones(1, 1, dtype=torch.int64), "bias": torch.ones(1)}
    >>> fit_state_dict(nn.Linear(1, 1), state, "w.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.CheckpointError: checkpoint w.pt stores weight as torch.int64 where the model holds ...
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: {'; '.join(parts)}; "
            "pass the checkpoint that belongs to this model and its factory arguments"
        )
    check_tensors(state, own, source, {name for name, _ in model.named_parameters()})
    model.load_state_dict(state, strict=True)


def check_tensors(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    source: Path | str,
    parameters: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Refuse a checkpoint whose dtypes cannot stand for the model's, or which holds NaN anywhere or inf
    in a parameter (buffers may hold ±inf on purpose, e.g. attention masks)."""
    for key, tensor in state.items():
        mine = own[key].dtype
        exact = tensor.dtype.is_floating_point or tensor.dtype.is_complex
        if tensor.dtype != mine and not exact and (tensor.dtype == torch.bool or not _is_integer(mine)):
            raise CheckpointError(
                f"checkpoint {source} stores {key} as {tensor.dtype} where the model holds {mine}; "
                "loading would cast it silently: save the weights as floating point"
            )
    bad = [
        k for k, t in state.items()
        if _is_real(t) and (t.isnan().any() or (k in parameters and not t.isfinite().all()))
    ]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"checkpoint {source} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. "
            f"{', '.join(bad[:3])}); it comes from a diverged or damaged run: use an earlier checkpoint"
        )


def _is_real(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def apply_checkpoint(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    record: CalibrationRecord | None,
    source: Path | str,
) -> None:
    """Load read weights into ``model``: insert-mode equalizers first (per ``record``), then strictly."""
    if record is not None:
        rebuild_equalizers(model, record)
    fit_state_dict(model, tensors, source)


def load(model: nn.Module, checkpoint: Path | str) -> nn.Module:
    """Load a (calibrated) checkpoint into ``model``, rebuilding insert-mode equalizers first.

    Fold-mode checkpoints have the model's own keys. Insert-mode checkpoints hold ``<layer>.layer.*`` and
    ``<layer>.equalizers.<i>.*`` keys: the wrappers are inserted from the record, then the state dict
    is loaded with ``strict=True``.

    Raises:
        CheckpointError: the checkpoint is unreadable or does not fit the model.

    >>> # model = eqsurgeon.load(build_my_model(), "calibrated.safetensors")
    """
    tensors, record = read_checkpoint(checkpoint)
    apply_checkpoint(model, tensors, record, checkpoint)
    return model


def rebuild_equalizers(model: nn.Module, record: CalibrationRecord) -> None:
    """Insert the equalizer wrappers an insert-mode record describes (no-op for fold mode)."""
    from eqsurgeon.equalize import EqualizedInput, InputStat, insert_equalizers

    if record.mode != "insert":
        return
    for site in record.equalized_sites:
        try:
            layer = model.get_submodule(site.layer)
        except AttributeError:
            raise CheckpointError(
                f"the record equalized {site.layer}, which this model lacks; pass the model it was made for"
            ) from None
        if isinstance(layer, EqualizedInput):
            continue  # already rebuilt (the record was applied before)
        stats = [InputStat(tuple(i.channels), i.mean, i.std) for i in site.inputs]
        insert_equalizers(model, site.layer, stats, site.channel_dim)


def refuse_double_equalization(record: CalibrationRecord | None, source: Path | str, allow: bool) -> None:
    """Raise when the weights were already equalized (calibrating again would scale them twice).

    Folding moves 1/σ into the weights; the features feeding the fusing layer are unchanged, so measuring
    again finds the same σ and a second fold divides the weights by σ once more (σ² in total).
    """
    if record is None or not record.equalized_sites or allow:
        return
    raise CheckpointError(
        f"{source} is already scale-equalized ({record.mode} mode, {len(record.equalized_sites)} site(s)); "
        "the fused features are unchanged by folding, so calibrating it again would divide the weights "
        "by σ a second time. Calibrate the original weights, or pass allow_equalized=True to equalize on top"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # safe_open is not iterable itself
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({one_line(exc)})") from exc


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}
