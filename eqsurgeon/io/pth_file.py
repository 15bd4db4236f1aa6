"""Pickled checkpoints (``.pth``/``.pt``/``.bin``), read only with ``torch.load(weights_only=True)``.

MMSegmentation writes ``{"meta": {...}, "state_dict": {...}, "optimizer": ..., "message_hub": ...}``.
mmengine puts numpy values (scalars, arrays, dtypes) in ``meta`` and its ``HistoryBuffer`` objects in
``message_hub``. Loading them needs a few globals beyond torch's default allowlist: numpy's array and
scalar reconstructors and dtypes (plain data), and an inert stand-in for each listed mmengine class,
which keeps the pickled state and runs none of its code. Anything else is still refused.

Written back (``--out FILE.pth``): ``{"state_dict": ..., "meta": {...input's meta, "eqsurgeon": record}}``.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from eqsurgeon.errors import CheckpointError, one_line
from eqsurgeon.io.files import atomic_write, check_output
from eqsurgeon.io.recordjson import METADATA_KEY, record_to_plain
from eqsurgeon.records import CalibrationRecord

PTH_SUFFIXES = (".pth", ".pt")
# mmengine classes found in real checkpoints' message_hub, read into an inert stand-in
STAND_INS = ("mmengine.logging.history_buffer.HistoryBuffer",)
DEFAULT_KEYS = ("state_dict", "model")  # MMSegmentation/mmengine, then timm/torchvision scripts


class Opaque:
    """An object eqsurgeon does not need (an mmengine logger's buffer): its pickled state, kept inert."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def load_pickle(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with numpy plain data and the stand-ins allowed.

    Raises:
        CheckpointError: the file holds other pickled classes, or is not a torch file at all.
    """
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        refused = _refused_globals(path)
        if refused:
            raise CheckpointError(
                f"{path} cannot be loaded with weights_only=True: it pickles {', '.join(refused[:4])}, "
                "and eqsurgeon never runs code from a checkpoint. Save the weights with "
                "torch.save(model.state_dict(), path), or convert them to .safetensors"
            ) from exc
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True ({_reason(exc)}); "
            "check that it is a PyTorch checkpoint, or convert it to .safetensors"
        ) from exc


def find_state_dict(obj: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: ``obj[key]``, else the object itself or a default entry.

    >>> find_state_dict({"meta": {}, "state_dict": {"w": torch.ones(1)}}, None, Path("x.pth"))
    {'w': tensor([1.])}
    >>> find_state_dict({"meta": {}}, None, Path("x.pth"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.CheckpointError: x.pth holds no state dict of tensors: its top-level keys are meta; ...
    """
    keys = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise CheckpointError(
                f"{path} has no entry {key!r}; its top-level keys are {keys}; "
                "pass checkpoint_key=NAME with one of them"
            )
        if not _is_state_dict(obj[key]):
            raise CheckpointError(
                f"{path}'s entry {key!r} is not a state dict of tensors; its top-level keys are {keys}"
            )
        return dict(obj[key])
    if _is_state_dict(obj):
        return dict(obj)
    for name in DEFAULT_KEYS:
        if isinstance(obj, Mapping) and _is_state_dict(obj.get(name)):
            return dict(obj[name])
    raise CheckpointError(
        f"{path} holds no state dict of tensors: its top-level keys are {keys or 'none'}; "
        "pass checkpoint_key=NAME to name the entry that holds the weights"
    )


def meta_of(obj: Any) -> dict[str, Any] | None:
    """The ``meta`` dict of an MMSegmentation/mmengine checkpoint, or None."""
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else None


def write_pth(
    path: Path | str,
    state_dict: Mapping[str, torch.Tensor],
    record: CalibrationRecord | None,
    meta: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write the MMSegmentation layout ``{"state_dict", "meta"}``, keeping ``meta`` and adding the record.

    numpy values in ``meta`` are written as Python ones, so the file loads with ``torch.load``'s default
    ``weights_only=True``, as mmengine's ``load_checkpoint`` calls it.

    >>> import tempfile
    >>> p = write_pth(Path(tempfile.mkdtemp()) / "w.pth", {"w": torch.ones(1)}, None, {"epoch": 3})
    >>> torch.load(p, weights_only=True)["meta"]
    {'epoch': 3}
    """
    path = check_output(path, force, PTH_SUFFIXES)
    out_meta = {k: v for k, v in _portable(dict(meta or {})).items() if k != METADATA_KEY}
    if record is not None:
        out_meta[METADATA_KEY] = record_to_plain(record)
    tensors = OrderedDict((k, v.detach().to("cpu").contiguous().clone()) for k, v in state_dict.items())
    return atomic_write(path, lambda f: torch.save({"state_dict": tensors, "meta": out_meta}, f))


def _is_state_dict(value: Any) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    return all(isinstance(v, torch.Tensor) for v in value.values())


def _allowed() -> list[Any]:
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 moved numpy.core to numpy._core
    found = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    found += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    # files pickled under numpy 1 name numpy.core.*; under numpy 2, numpy._core.*
    for name in ("_reconstruct", "scalar"):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            found.append((getattr(core.multiarray, name), f"{module}.{name}"))
    found += [(Opaque, name) for name in STAND_INS]
    return found


def _refused_globals(path: Path) -> list[str]:
    allowed = {f"{o.__module__}.{o.__qualname__}" for o in _allowed() if not isinstance(o, tuple)}
    allowed |= {o[1] for o in _allowed() if isinstance(o, tuple)}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: nothing more to tell
        return []
    return [n for n in names if n not in allowed]


def _reason(exc: BaseException) -> str:
    # torch wraps the unpickler's reason in paragraphs of advice: keep the reason alone
    text = str(exc)
    for marker in ("WeightsUnpickler error:", "error:"):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    return one_line(Exception(text.strip()))


def _portable(value: Any) -> Any:
    # meta as plain Python: no stand-ins, and numpy values as Python ones, so the written file loads with
    # torch.load's default weights_only=True (mmengine's load_checkpoint on torch >= 2.6) and no safe globals
    import numpy as np

    if isinstance(value, Opaque):
        return None
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_portable(v) for v in value)
    return value
