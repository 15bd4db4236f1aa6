"""What every ``save_pretrained`` folder has: a ``config.json`` and weights in one of a few files.

transformers and segmentation_models_pytorch (through huggingface_hub) both write ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``); older transformers versions write
``pytorch_model.bin``. The calibration record is the ``eqsurgeon`` entry of ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from eqsurgeon.errors import CheckpointError, ModelLoadError, one_line
from eqsurgeon.io.pth_file import find_state_dict, load_pickle
from eqsurgeon.io.recordjson import METADATA_KEY, record_from_value
from eqsurgeon.io.safetensors_file import read_safetensors
from eqsurgeon.records import CalibrationRecord

CONFIG = "config.json"
FolderKind = Literal["hf", "smp"]
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict.

    Raises:
        ModelLoadError: there is no ``config.json``, or it is not a JSON object.

    >>> read_config(Path("/"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.ModelLoadError: folder / has no config.json; name a folder written by save_pretrained ...
    """
    path = folder / CONFIG
    if not path.is_file():
        raise ModelLoadError(
            f"folder {folder} has no {CONFIG}; name a folder written by save_pretrained (transformers or "
            "segmentation_models_pytorch), or a file.py:factory"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({one_line(exc)}); save the folder again") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object; save the folder again")
    return data


def folder_kind(folder: Path, config: dict[str, Any]) -> FolderKind:
    """``"smp"`` when ``config.json`` names an smp ``_model_class``, ``"hf"`` when it has a ``model_type``.

    >>> folder_kind(Path("m"), {"model_type": "segformer"})
    'hf'
    """
    if "_model_class" in config:
        return "smp"
    if "model_type" in config:
        return "hf"
    raise ModelLoadError(
        f"{folder}/{CONFIG} names no architecture (neither transformers' model_type nor "
        "segmentation_models_pytorch's _model_class); save the folder with the library's save_pretrained"
    )


def folder_record(folder: Path, config: dict[str, Any]) -> CalibrationRecord | None:
    """The calibration record under ``eqsurgeon`` in ``config.json``, or None."""
    return record_from_value(config.get(METADATA_KEY), folder / CONFIG)


def read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``save_pretrained`` folder (single file or shards).

    Raises:
        CheckpointError: no weights file, or one that cannot be read.
    """
    for name in _WEIGHTS:
        index = folder / f"{name}.index.json"
        if (folder / name).is_file():
            return _read_file(folder / name)
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a shard index ({one_line(exc)})") from exc
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(_read_file(folder / shard))
            return tensors
    raise CheckpointError(
        f"folder {folder} holds no weights ({' or '.join(_WEIGHTS)}); "
        "save it with the library's save_pretrained"
    )


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; save the folder again")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    return find_state_dict(load_pickle(path), None, path)
