"""One dispatch for every weights format: ``read(path)`` in, ``write(path, model, record, source)`` out.

=============================  ==============================  ======================================
format                         read from                       the calibration record
=============================  ==============================  ======================================
``.safetensors``               the file                        metadata key ``eqsurgeon`` (JSON text)
``.pth``/``.pt``/``.bin``      ``state_dict``/``model`` entry  ``meta["eqsurgeon"]`` (MMSegmentation)
                               (or ``checkpoint_key``)
transformers folder            its ``from_pretrained``         ``config.json`` key ``eqsurgeon``
smp folder                     ``model.safetensors``           ``config.json`` key ``eqsurgeon``
=============================  ==============================  ======================================

A ``module.`` prefix on every key (a DDP save) is removed. ``write`` picks the format from the path:
``.safetensors``, ``.pth``/``.pt`` (keeping the source's ``meta``), anything else is a folder written
by the model's own library (``save_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, OptionError
from eqsurgeon.io.files import atomic_folder, check_output, check_output_folder
from eqsurgeon.io.fitting import strip_ddp_prefix
from eqsurgeon.io.folder_files import folder_kind, folder_record, read_config, read_folder_weights
from eqsurgeon.io.hf_folder import hf_factory, is_hf_model, write_hf
from eqsurgeon.io.pth_file import PTH_SUFFIXES, find_state_dict, load_pickle, meta_of, write_pth
from eqsurgeon.io.recordjson import METADATA_KEY, record_from_header, record_from_value
from eqsurgeon.io.safetensors_file import read_safetensors, save_checkpoint
from eqsurgeon.io.smp_folder import is_smp_model, smp_factory, write_smp
from eqsurgeon.records import CalibrationRecord

Format = Literal["safetensors", "pth", "hf", "smp"]
OutFormat = Literal["safetensors", "pth", "folder"]
OUTPUT_FORMS = "a .safetensors or .pth file, or a folder (save_pretrained, for transformers and smp models)"
_NOT_OUTPUTS = (".bin", ".ckpt", ".safetensor", ".pkl", ".pickle", ".json")


@dataclass(frozen=True)
class Source:
    """Where weights came from, and what writing them back in the same format keeps.

    Attributes:
        format: "safetensors", "pth", "hf" or "smp".
        path: the file or folder.
        meta: a ``.pth`` file's ``meta`` dict (written back by ``--out FILE.pth``).
        config: a folder's ``config.json``.
    """

    format: Format
    path: Path
    meta: Mapping[str, Any] | None = None
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Loaded:
    """A checkpoint as read: its state dict, calibration record (or None) and source."""

    tensors: dict[str, torch.Tensor]
    record: CalibrationRecord | None
    source: Source


def read(path: Path | str, key: str | None = None) -> Loaded:
    """Read weights and record from any format (see the module docstring).

    Args:
        path: a file or a ``save_pretrained`` folder.
        key: the entry of a pickled checkpoint holding the weights (``state_dict_ema``, ``model_ema``).

    Raises:
        CheckpointError: missing, unreadable, or no state dict (the message names the top-level keys).
        OptionError: ``key`` given for a format that has no entries.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "w.pth"
    >>> torch.save({"model_ema": {"module.w": torch.ones(1)}}, p)
    >>> read(p, key="model_ema").tensors
    {'w': tensor([1.])}
    """
    path = Path(path)
    if path.is_dir():
        _no_key(key, path)
        config = read_config(path)
        kind = folder_kind(path, config)
        if kind == "hf":  # transformers renames keys between file and module: let it load them
            tensors = hf_factory(path, config)().state_dict()
        else:
            tensors = read_folder_weights(path)
        source = Source(kind, path, config=config)
        return Loaded(strip_ddp_prefix(tensors), folder_record(path, config), source)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        _no_key(key, path)
        tensors, header = read_safetensors(path)
        record = record_from_header(header, path)
        return Loaded(strip_ddp_prefix(tensors), record, Source("safetensors", path))
    obj = load_pickle(path)
    meta = meta_of(obj)
    record = record_from_value(meta.get(METADATA_KEY), path) if meta else None
    return Loaded(strip_ddp_prefix(find_state_dict(obj, key, path)), record, Source("pth", path, meta=meta))


def read_state_dict(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict and its safetensors metadata (empty for other formats).

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no state dict of tensors.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return read_safetensors(path)
    return read(path).tensors, {}


def read_checkpoint(
    path: Path | str, key: str | None = None
) -> tuple[dict[str, torch.Tensor], CalibrationRecord | None]:
    """A state dict and, when the weights were calibrated, their ``CalibrationRecord``."""
    loaded = read(path, key)
    return loaded.tensors, loaded.record


def folder_model(folder: Path) -> tuple[Callable[..., nn.Module], Source, CalibrationRecord | None]:
    """The factory building the model of a ``save_pretrained`` folder, its source, and its record.

    Raises:
        ModelLoadError: no ``config.json``, or an architecture neither library has.
    """
    config = read_config(folder)
    kind = folder_kind(folder, config)
    factory = hf_factory(folder, config) if kind == "hf" else smp_factory(folder, config)
    return factory, Source(kind, folder, config=config), folder_record(folder, config)


def output_format(path: Path | str) -> OutFormat:
    """What ``write`` will make of ``path``: a safetensors file, a ``.pth`` file or a folder.

    >>> output_format("a.pth"), output_format("calibrated")
    ('pth', 'folder')
    """
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PTH_SUFFIXES:
        return "pth"
    if suffix in _NOT_OUTPUTS:
        raise OptionError("out", str(path), f"has a suffix eqsurgeon does not write; name {OUTPUT_FORMS}")
    return "folder"


def check_out(path: Path | str, force: bool) -> Path:
    """Refuse an output path before any work: missing folder, existing output, unwritable place."""
    if output_format(path) == "folder":
        return check_output_folder(path, force)
    return check_output(path, force)


def check_writable(path: Path | str, model: nn.Module, mode: str) -> None:
    """Refuse, before any work, a folder output the model's library could not load back.

    Raises:
        OptionError: a folder for a model of neither library, or for insert mode.
    """
    if output_format(path) != "folder":
        return
    if not (is_hf_model(model) or is_smp_model(model)):
        raise OptionError(
            "out", str(path), "is a folder, which is written with save_pretrained, and "
            f"{type(model).__name__} is neither a transformers nor an smp model; "
            "name a .safetensors or .pth file",
        )  # fmt: skip
    if mode != "fold":
        raise OptionError(
            "mode", mode, "adds equalizer modules that the library's from_pretrained does not know; "
            "use mode=fold for a save_pretrained folder, or write a .safetensors or .pth file",
        )  # fmt: skip


def write(
    path: Path | str,
    model: nn.Module,
    record: CalibrationRecord | None,
    source: Source | None = None,
    force: bool = False,
) -> Path:
    """Write ``model``'s weights and ``record`` in the format ``path`` names (see ``output_format``).

    A ``.pth`` keeps a ``.pth`` source's ``meta``; a folder keeps a folder source's config and
    preprocessor settings. Every write is atomic.

    >>> import tempfile
    >>> out = write(Path(tempfile.mkdtemp()) / "w.pth", nn.Linear(1, 1), None)
    >>> sorted(read(out).tensors)
    ['bias', 'weight']
    """
    kind = output_format(path)
    if kind == "safetensors":
        return save_checkpoint(path, model.state_dict(), record, force=force)
    if kind == "pth":
        meta = source.meta if source is not None and source.format == "pth" else None
        return write_pth(path, model.state_dict(), record, meta, force)
    path = check_output_folder(path, force)
    check_writable(path, model, record.mode if record is not None else "fold")
    same = source if source is not None and source.format in ("hf", "smp") else None
    if is_hf_model(model):
        return atomic_folder(path, lambda d: write_hf(d, model, record, same.path if same else None))
    config = same.config if same is not None and same.format == "smp" else None
    return atomic_folder(path, lambda d: write_smp(d, model, record, config))


def _no_key(key: str | None, path: Path) -> None:
    if key is not None:
        raise OptionError(
            "checkpoint_key", key,
            f"names an entry of a pickled checkpoint, and {path} is not one; leave it out",
        )  # fmt: skip
