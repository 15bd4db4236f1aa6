"""``.safetensors`` files: the full state dict, and the record as canonical JSON in the metadata.

One metadata key on purpose: safetensors serializes its metadata map in hash order, so two keys could
come out in either order and two identical runs would write different bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from eqsurgeon.errors import CheckpointError, one_line
from eqsurgeon.io.files import atomic_write, check_output
from eqsurgeon.io.recordjson import METADATA_KEY, record_to_json
from eqsurgeon.records import CalibrationRecord


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

    >>> import tempfile
    >>> save_checkpoint(Path(tempfile.mkdtemp()) / "w.safetensors", {"w": torch.ones(2)}).name
    'w.safetensors'
    """
    from safetensors.torch import save

    path = check_output(path, force, (".safetensors",))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = dict(extra or {})
    if record is not None:
        metadata[METADATA_KEY] = record_to_json(record)
    blob = save(tensors, metadata=metadata or None)
    return atomic_write(path, lambda f: f.write(blob))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file.

    Raises:
        CheckpointError: the file is not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # safe_open is not iterable itself
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({one_line(exc)})") from exc
