"""Every zoo model evaluates at any input size, as mmseg's do (Swin and Twins pad to whole patches).

ADE20K's typical 500×375 image is resized to 683×512 for evaluation; 683 is not a multiple of Swin's patch
size 4, and timm's Swin used to assert there. The small sizes below have the same remainders modulo 32 as
375×500 and 513×683, so every stage of every backbone sees the same odd sizes at a fraction of the cost.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eqsurgeon.training.config import load_config
from eqsurgeon.training.inference import predict
from eqsurgeon.training.loop import train
from eqsurgeon.zoo import create_model, list_models, model_entry
from eqsurgeon.zoo.backbones import TimmBackbone

ROOT = Path(__file__).resolve().parents[1]
ADE_SIZES = ((375, 500), (513, 683))
SAME_RESIDUES = ((55, 52), (33, 43))  # ≡ ADE_SIZES (mod 32)
TINY = [n for n in list_models() if "tiny" in model_entry(n).tags]


def _check_eval(model: torch.nn.Module, size: tuple[int, int], crop: int) -> None:
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        whole = predict(model, x, size, "whole")
        slide = predict(model, x, size, "slide", (crop, crop), (crop * 2 // 3, crop * 2 // 3))
    assert whole.shape == slide.shape == (1, model.num_classes, *size)
    assert torch.isfinite(whole).all() and torch.isfinite(slide).all()


@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_models_evaluate_at_ade20k_sizes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    for size in ADE_SIZES:
        _check_eval(model, size, crop=512)


# Narrow versions of the zoo's Swin and Twins (same timm classes, the zoo's padding) keep this fast.
NARROW = {
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 512, "strict_img_size": False, "embed_dim": 16,
                                               "depths": (2, 2, 2, 2), "num_heads": (1, 1, 2, 2)}),
    "twins": ("twins_svt_small", {"embed_dims": (16, 16, 32, 32), "depths": (2, 2, 2, 2),
                                  "num_heads": (1, 1, 2, 2)}),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(NARROW))
def test_swin_and_twins_pad_to_whole_patches_like_mmseg(kind: str) -> None:
    timm_name, kwargs = NARROW[kind]
    backbone = TimmBackbone(timm_name, out_norm="layernorm", **kwargs).eval()
    for h, w in ADE_SIZES:
        with torch.no_grad():
            feats = backbone(torch.randn(1, 3, h, w))
        # mmseg pads bottom/right before every k = stride patch embedding: ⌈h/4⌉, then ⌈·/2⌉ per stage
        expected, sizes = (h, w), []
        for stride in (4, 2, 2, 2):
            expected = (math.ceil(expected[0] / stride), math.ceil(expected[1] / stride))
            sizes.append(expected)
        assert [tuple(f.shape[-2:]) for f in feats] == sizes
        assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_evaluates_at_odd_sizes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    for size in SAME_RESIDUES:
        _check_eval(model, size, crop=32)


def _ade20k_folder(root: Path, train: int, val: int) -> Path:
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for split, count in (("training", train), ("validation", val)):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)  # 500 wide, 375 high
            labels = np.kron(rng.integers(0, 151, (15, 20)), np.ones((25, 25))).astype(np.uint8)
            Image.fromarray(image).save(base / "images" / split / f"ADE_{split}_{i:08d}.jpg")
            Image.fromarray(labels).save(base / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    return root


@pytest.mark.slow
def test_swin_recipe_trains_and_evaluates_on_ade20k_sized_images(tmp_path: Path) -> None:
    data = _ade20k_folder(tmp_path / "ade", train=2, val=1)
    cfg = load_config(
        ROOT / "train" / "recipes" / "upernet_swin_tiny_ade20k.toml",
        [
            "model.kwargs.pretrained=false",
            f'data.root="{data}"',
            f'run.out="{tmp_path / "run"}"',
            "run.device=\"cpu\"",
            "data.workers=0",
            "data.batch_size=2",
            "data.crop_size=[64, 64]",
            "schedule.iters=1",
            "checkpoint.interval=1",
            # keep the recipe's keep-ratio resize, at a quarter of its short edge: 500×375 → 171×128,
            # and 171 is not a multiple of Swin's patch size (683×512 at full scale is not either)
            "eval.scale=[2048, 128]",
        ],
    )
    assert cfg.model.name == "upernet_swin_tiny" and cfg.data.format == "ade20k"
    result = train(cfg)
    assert result.iterations == 1 and result.metrics is not None
    assert 0.0 <= result.metrics.miou <= 1.0
    assert (tmp_path / "run" / "best.safetensors").is_file()
