"""HuggingFace transformers ``save_pretrained`` folders: build the model a folder names, and write one.

The folder's ``config.json`` names a ``model_type``; the model is the ``*ForSemanticSegmentation`` class
its ``architectures`` list names, else the one transformers maps that type to. Weights load through
transformers' own ``from_pretrained`` (local files only), and must fit exactly. The calibration record is
the config attribute ``eqsurgeon``, which transformers keeps through ``from_pretrained`` →
``save_pretrained``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, ModelLoadError, one_line
from eqsurgeon.io.recordjson import METADATA_KEY, record_to_plain
from eqsurgeon.records import CalibrationRecord

PREPROCESSOR = "preprocessor_config.json"


def hf_factory(folder: Path, config: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """A factory building the semantic-segmentation model of an HF folder, with its weights loaded.

    Keyword arguments go to ``from_pretrained``: config overrides such as ``num_labels``, and
    ``ignore_mismatched_sizes=True`` to start a new head on other classes (its weights then re-initialized).

    Raises:
        ModelLoadError: transformers knows no semantic-segmentation model for the folder's config.
    """
    cls = _model_class(folder, config)

    def factory(**kwargs: Any) -> nn.Module:
        # Loaded with mismatched sizes allowed, so that they are listed here: transformers ≥ 5 would raise
        # pointing at a report that quiet() hides.
        new_layers = bool(kwargs.pop("ignore_mismatched_sizes", False))
        with quiet():
            model, info = cls.from_pretrained(
                str(folder),
                local_files_only=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        checked = [("missing_keys", "missing"), ("unexpected_keys", "unexpected")]
        if not new_layers:
            checked.append(("mismatched_keys", "wrong shape"))
        problems = [
            f"{len(info[k])} {label} (e.g. {', '.join(sorted(_key(x) for x in info[k])[:3])})"
            for k, label in checked
            if info.get(k)
        ]
        if problems:
            fix = "save the folder again with the model's own save_pretrained"
            if not new_layers and info.get("mismatched_keys"):
                fix = f"pass ignore_mismatched_sizes=True to start those layers anew (a new head), or {fix}"
            raise CheckpointError(
                f"the weights in {folder} do not fit {cls.__name__}: {'; '.join(problems)}; {fix}"
            )
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            model = model.float()  # measuring runs in float32: a bf16/fp16 folder is widened
        declared = preprocessor_settings(folder)
        if declared:
            model.eqsurgeon_cfg = declared
        return model

    return factory


def _key(entry: Any) -> str:
    # transformers lists a mismatched weight as (key, shape in the file, shape in the model)
    return str(entry[0]) if isinstance(entry, tuple) else str(entry)


def preprocessor_settings(folder: Path) -> dict[str, Any] | None:
    """Image mean/std (0–1 scale) and input size from ``preprocessor_config.json``, or None without one.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> half = "[127.5, 127.5, 127.5]"
    >>> _ = (d / PREPROCESSOR).write_text(f'{{"image_mean": {half}, "image_std": {half}}}')
    >>> preprocessor_settings(d)
    {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
    """
    path = folder / PREPROCESSOR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({one_line(exc)}); fix or remove it") from exc
    out: dict[str, Any] = {}
    mean, std = data.get("image_mean"), data.get("image_std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        scale = 255.0 if max(mean) > 1.5 else 1.0  # some processors state 0–255 values
        out["mean"] = tuple(float(v) / scale for v in mean)
        out["std"] = tuple(float(v) / scale for v in std)
    size = data.get("size") or data.get("crop_size")
    if isinstance(size, Mapping) and {"height", "width"} <= set(size):
        out["input_size"] = (3, int(size["height"]), int(size["width"]))
    return out or None


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (which can ``save_pretrained``)."""
    import sys

    if "transformers" not in sys.modules:
        return False  # never imported: the model cannot be one
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def write_hf(folder: Path, model: nn.Module, record: CalibrationRecord | None, source: Path | None) -> None:
    """``model.save_pretrained(folder)`` with the record in ``config.json``; copies the source's processor.

    The model's config is left as it was.
    """
    config = model.config  # type: ignore[attr-defined]
    missing = object()
    before = getattr(config, METADATA_KEY, missing)
    if record is not None:
        setattr(config, METADATA_KEY, record_to_plain(record))
    try:
        with quiet():
            model.save_pretrained(str(folder))  # type: ignore[operator]
    finally:
        if before is missing:
            if hasattr(config, METADATA_KEY):
                delattr(config, METADATA_KEY)
        else:
            setattr(config, METADATA_KEY, before)
    if source is not None and (source / PREPROCESSOR).is_file():
        shutil.copyfile(source / PREPROCESSOR, folder / PREPROCESSOR)


@contextmanager
def quiet() -> Iterator[None]:
    """transformers without progress bars and warnings (eqsurgeon reports problems itself)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_class(folder: Path, config: Mapping[str, Any]) -> type:
    try:
        import transformers
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as known,
        )
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder} is a transformers folder, but transformers is not installed; pip install transformers"
        ) from exc
    model_type = config.get("model_type")
    names = [a for a in config.get("architectures") or () if str(a).endswith("ForSemanticSegmentation")]
    if not names and model_type in known:
        names = [known[model_type]]
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ModelLoadError(
            f"{folder}/config.json names model_type {model_type!r} (architectures "
            f"{config.get('architectures') or 'none'}), which has no semantic-segmentation model in "
            f"transformers {transformers.__version__}; types with one: {', '.join(sorted(known))}"
        )
    return cls
