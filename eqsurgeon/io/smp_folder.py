"""segmentation_models_pytorch: ``save_pretrained`` folders in and out, and offline factory defaults.

An smp folder's ``config.json`` holds the model's constructor arguments and ``_model_class``. The model
is built from them with ``encoder_weights=None`` (the weights come from the folder; smp would otherwise
download ImageNet weights first) and the folder's weights are loaded strictly, as smp's own
``from_pretrained`` does. The calibration record is the ``eqsurgeon`` entry of ``config.json``, which
smp keeps through ``from_pretrained`` → ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from eqsurgeon.errors import ModelLoadError
from eqsurgeon.io.fitting import fit_state_dict
from eqsurgeon.io.folder_files import read_folder_weights
from eqsurgeon.io.recordjson import METADATA_KEY, record_to_plain
from eqsurgeon.records import CalibrationRecord

SMP = "segmentation_models_pytorch"


def smp_factory(folder: Path, config: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """A factory building the smp model of a folder, with its weights loaded strictly.

    Keyword arguments override the folder's constructor arguments.

    Raises:
        ModelLoadError: smp is missing or has no class of the folder's ``_model_class``.
    """
    cls = _model_class(folder, config)
    accepted = inspect.signature(cls.__init__).parameters

    def factory(**kwargs: Any) -> nn.Module:
        init = {k: v for k, v in config.items() if k in accepted and not k.startswith("_")}
        init["encoder_weights"] = None
        model = cls(**{**init, **kwargs})
        fit_state_dict(model, read_folder_weights(folder), folder)
        return with_encoder_settings(model)

    return factory


def offline_factory(factory: Callable[..., Any]) -> Callable[..., Any]:
    """An smp factory that defaults to ``encoder_weights=None`` (no download) unless it is given.

    >>> import segmentation_models_pytorch as smp
    >>> offline_factory(smp.FPN)(encoder_name="resnet18", classes=2).encoder.__class__.__name__
    'ResNetEncoder'
    """
    try:
        takes_weights = "encoder_weights" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_weights = False

    def build(**kwargs: Any) -> Any:
        if takes_weights:
            kwargs.setdefault("encoder_weights", None)
        model = factory(**kwargs)
        return with_encoder_settings(model) if isinstance(model, nn.Module) else model

    return build


def with_encoder_settings(model: nn.Module) -> nn.Module:
    """Attach the image mean/std the model's encoder states (smp's table, no network) as ``eqsurgeon_cfg``.

    Encoders whose settings smp keeps only on the hub declare nothing here; timm (``tu-``) encoders
    carry timm's own config, which eqsurgeon reads from the submodule.
    """
    config = getattr(model, "_hub_mixin_config", None) or {}
    from segmentation_models_pytorch.encoders import encoders

    table = encoders.get(config.get("encoder_name"), {}).get("pretrained_settings", {})
    settings = table.get(config.get("encoder_weights") or "imagenet") or {}
    mean, std = settings.get("mean"), settings.get("std")
    if mean is not None and std is not None and not hasattr(model, "eqsurgeon_cfg"):
        scale = 255.0 if max(mean) > 1.5 else 1.0
        model.eqsurgeon_cfg = {
            "mean": tuple(float(v) / scale for v in mean),
            "std": tuple(float(v) / scale for v in std),
        }
    return model


def is_smp_model(model: nn.Module) -> bool:
    """Whether ``model`` is an smp model (which can ``save_pretrained``)."""
    if SMP not in sys.modules:
        return False  # never imported: the model cannot be one
    try:
        from segmentation_models_pytorch.base.hub_mixin import SMPHubMixin
    except ImportError:  # smp before 0.3.4 cannot save_pretrained
        return False
    return isinstance(model, SMPHubMixin)


def write_smp(
    folder: Path, model: nn.Module, record: CalibrationRecord | None, source_config: Mapping[str, Any] | None
) -> None:
    """``model.save_pretrained(folder)`` with the source folder's config (when any) and the record."""
    config = dict(source_config or getattr(model, "_hub_mixin_config", None) or {})
    config["_model_class"] = type(model).__name__
    config.pop(METADATA_KEY, None)
    if record is not None:
        config[METADATA_KEY] = record_to_plain(record)
    with contextlib.redirect_stdout(sys.stderr):  # huggingface_hub prints progress to stdout
        model.save_pretrained(str(folder), config=config)  # type: ignore[operator]


def _model_class(folder: Path, config: Mapping[str, Any]) -> type:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder} is a segmentation_models_pytorch folder, but smp is not installed; "
            "pip install segmentation-models-pytorch"
        ) from exc
    name = str(config.get("_model_class"))
    cls = getattr(smp, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        known = sorted(n for n, v in vars(smp).items() if isinstance(v, type) and issubclass(v, nn.Module))
        raise ModelLoadError(
            f"{folder}/config.json names _model_class {name!r}, which segmentation_models_pytorch "
            f"{smp.__version__} does not have; its models: {', '.join(known)}"
        )
    return cls
