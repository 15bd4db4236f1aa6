"""Tiny random models of each ecosystem eqsurgeon meets, saved the way their library saves them.

transformers and segmentation_models_pytorch models are built from tiny configs (never from a hub name)
and written with their own ``save_pretrained``; the MMSegmentation checkpoint is written in mmengine's
layout, numpy values in ``meta`` and a logger buffer object in ``message_hub`` included.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from typer.testing import CliRunner

from eqsurgeon.cli import app

runner = CliRunner()


def run(*args: object) -> object:
    """Run the CLI in-process (exceptions reach the error boundary, as in a shell)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def segformer() -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 4],
        decoder_hidden_size=32, num_labels=3,
    )  # fmt: skip
    return SegformerForSemanticSegmentation(config)


def upernet_convnext() -> nn.Module:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=[f"stage{i}" for i in range(1, 5)]
    )
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32, auxiliary_channels=8, num_labels=3
    )
    return UperNetForSemanticSegmentation(config)


HF_MODELS: dict[str, Callable[[], nn.Module]] = {"segformer": segformer, "upernet_convnext": upernet_convnext}

SMP_MODELS: dict[str, dict[str, object]] = {
    # FPN with its "cat" merge: the variant that concatenates (the default adds)
    "FPN": dict(decoder_merge_policy="cat", decoder_pyramid_channels=32, decoder_segmentation_channels=32),
    "UPerNet": {"decoder_channels": 32},
    "DeepLabV3Plus": {"decoder_channels": 32},
}


def smp_model(arch: str, **extra: object) -> nn.Module:
    import segmentation_models_pytorch as smp

    kwargs = {"encoder_name": "resnet18", "encoder_weights": None, "classes": 3, **SMP_MODELS[arch], **extra}
    return smp.create_model(arch, **kwargs)


def save_hf(name: str, folder: Path, processor: bool = True) -> Path:
    """A tiny transformers model saved with ``save_pretrained`` (+ a 64×64 image processor)."""
    torch.manual_seed(0)
    model = HF_MODELS[name]()
    model.save_pretrained(str(folder))
    if processor:
        from transformers import SegformerImageProcessor

        SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(str(folder))
    return folder


def save_smp(arch: str, folder: Path) -> Path:
    """A tiny smp model saved with ``save_pretrained``."""
    torch.manual_seed(0)
    smp_model(arch).save_pretrained(str(folder))
    return folder


class HistoryBuffer:
    """Stands for mmengine's logger buffer: a class torch's weights-only loader does not know."""

    def __init__(self) -> None:
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])
        self.max_length = 1000000


def save_mmseg(model: nn.Module, path: Path, ddp: bool = True) -> Path:
    """``model``'s weights in an mmengine checkpoint: meta with numpy values, message_hub, optimizer."""
    name = "mmengine.logging.history_buffer"
    saved = {k: sys.modules.get(k) for k in ("mmengine", "mmengine.logging", name)}
    module = types.ModuleType(name)
    HistoryBuffer.__module__, module.HistoryBuffer = name, HistoryBuffer  # pickled under mmengine's name
    sys.modules.update({k: types.ModuleType(k) for k in ("mmengine", "mmengine.logging")})
    sys.modules[name] = module
    prefix = "module." if ddp else ""
    try:
        torch.save(
            {
                "meta": {
                    "mmengine_version": "0.10.4", "epoch": 0, "iter": np.int64(160000), "seed": np.int64(42),
                    "dataset_meta": {"classes": ("a", "b", "c"), "palette": [[0, 0, 0]] * 3},
                    "lr": np.float32(6e-5), "hist": np.arange(3), "dtype": np.dtype("float32"),
                },
                "state_dict": {prefix + k: v for k, v in model.state_dict().items()},
                "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"iter": 7}},
                "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "params": [0]}]},
            },
            path,
        )  # fmt: skip
    finally:
        HistoryBuffer.__module__ = __name__
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return path
