"""Every zoo model builds, runs on CPU at square and non-square sizes, and follows the factory contract.

All models run at full width and depth: the largest (Twins-SVT-L, Swin-B) take about 2 s here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from eqsurgeon.errors import ModelLoadError
from eqsurgeon.loading import load_model
from eqsurgeon.zoo import create_model, list_models, model_entry
from eqsurgeon.zoo.segmentor import EncoderDecoder

ALL = list_models()
REQUIRED = [
    *(f"upernet_{b}_{s}" for b in ("swin", "convnext") for s in ("tiny", "small", "base")),
    *(f"upernet_twins_svt_{s}" for s in ("small", "base", "large")),
    *(f"{h}_{d}_d8" for h in ("fcn", "pspnet", "deeplabv3", "deeplabv3plus") for d in ("r50", "r101")),
    "upernet_tiny",
]


def test_registry_has_every_required_name() -> None:
    missing = [n for n in REQUIRED if n not in ALL]
    assert not missing
    assert any(n.startswith("segformer_") for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_forward_at_input_resolution(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, pretrained=False)
    model.eval()
    with torch.no_grad():
        for h, w in ((64, 64), (64, 128)):
            out = model(torch.randn(1, 3, h, w))
            assert isinstance(out, torch.Tensor)
            assert out.shape == (1, 7, h, w)
            assert torch.isfinite(out).all()
    model.train()
    out = model(torch.randn(2, 3, 64, 96))
    if model.auxiliary_head is not None:
        main, aux = out
        assert main.shape == aux.shape == (2, 7, 64, 96)
    else:
        assert out.shape == (2, 7, 64, 96)


@pytest.mark.parametrize("name", ALL)
def test_factory_contract(name: str) -> None:
    params = inspect.signature(model_entry(name).factory).parameters
    assert {"num_classes", "pretrained", "backbone_weights", "aux_head"} <= set(params)
    assert params["pretrained"].default is False
    with torch.device("meta"):
        model = create_model(name, num_classes=3, aux_head=False)
    assert isinstance(model, EncoderDecoder)
    assert model.auxiliary_head is None and model.num_classes == 3
    cfg = model.eqsurgeon_cfg
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and all(0 < s < 1 for s in cfg["std"])
    assert len(cfg["input_size"]) == 2 and all(s % 32 == 0 for s in cfg["input_size"])


def test_aux_head_follows_mmseg_configs() -> None:
    with torch.device("meta"):
        uper = create_model("upernet_convnext_tiny")
        d8 = create_model("pspnet_r50_d8")
        seg = create_model("segformer_pvt_v2_b2")
    for model, stage_channels in ((uper, 384), (d8, 1024)):
        aux = model.auxiliary_head
        assert (aux.in_index, aux.in_channels, aux.channels) == (2, stage_channels, 256)
        assert len(aux.convs) == 1 and not aux.concat_input and aux.dropout.p == 0.1
    assert EncoderDecoder.aux_loss_weight == 0.4
    assert seg.auxiliary_head is None  # the SegFormer configs have none


def test_zoo_names_load_through_the_cli_loader() -> None:
    model = load_model("upernet_tiny", {"num_classes": 4})
    assert model.num_classes == 4
    with pytest.raises(ModelLoadError, match="upernet_tiny"):
        load_model("upernet_tinny")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_weights_from_local_file(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("test_convnext", pretrained=False)
    torch.nn.init.normal_(source.stem[0].weight)  # differs from any fresh init
    state = source.state_dict()
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = create_model("upernet_tiny", backbone_weights=path)
    loaded = model.backbone.body.state_dict()
    assert torch.equal(loaded["stem_0.weight"], state["stem.0.weight"])
    assert torch.equal(loaded["stages_3.blocks.0.conv_dw.weight"], state["stages.3.blocks.0.conv_dw.weight"])


def test_backbone_weights_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        create_model("upernet_tiny", backbone_weights=tmp_path / "missing.safetensors")
    wrong = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(wrong))
    with pytest.raises(ModelLoadError, match="does not fit") as info:
        create_model("upernet_tiny", backbone_weights=wrong)
    assert "\n" not in str(info.value)


def test_pretrained_without_network_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def offline(*args: object, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("Name or service not known")  # what the hub client raises offline
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelLoadError, match=r"network access.*backbone_weights=FILE"):
        create_model("upernet_tiny", pretrained=True)
