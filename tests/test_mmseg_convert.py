"""MMSegmentation checkpoints convert to the zoo: the mmseg model's outputs (parity tests), clear errors.

The parity tests build mmseg's own models from its configs (random weights), save them as mmengine does,
convert with ``eqsurgeon convert-mmseg`` and compare the zoo model's outputs with mmseg's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, ModelLoadError
from eqsurgeon.zoo import create_model
from eqsurgeon.zoo.convert_mmseg import (
    _unfold_to_timm_order,
    backbone_family,
    convert_checkpoint,
    convert_state_dict,
    read_mmseg_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent))
import _mmseg

needs_mmseg = pytest.mark.skipif(not _mmseg.available(), reason=_mmseg.SKIP_REASON)

CONFIGS = {
    "upernet_swin_tiny": "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    "upernet_convnext_tiny": "convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py",
    "upernet_twins_svt_small": "twins/twins_svt-s_uperhead_8xb2-160k_ade20k-512x512.py",
    "deeplabv3plus_r50_d8": "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py",
}


def _save_like_mmengine(model: nn.Module, path: Path) -> None:
    import numpy as np
    from mmengine.runner.checkpoint import save_checkpoint

    meta = {"iter": np.int64(160000), "seed": np.int64(0), "mmseg_version": "1.2.2", "dataset_meta": {
        "classes": ("wall", "building"), "palette": [[120, 120, 120], [180, 120, 120]]}}  # fmt: skip
    save_checkpoint({"meta": meta, "state_dict": model.state_dict()}, str(path))


@pytest.mark.parity
@needs_mmseg
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("size", [(224, 224), (229, 251)])
def test_converted_checkpoint_gives_the_mmseg_outputs(
    name: str, size: tuple[int, int], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    theirs = _mmseg.build_segmentor(CONFIGS[name], num_classes=7).eval()
    _save_like_mmengine(theirs, tmp_path / "mmseg.pth")
    out = convert_checkpoint(tmp_path / "mmseg.pth", name, tmp_path / "zoo.safetensors")
    from eqsurgeon.loading import load_model

    ours = load_model(name, {"num_classes": 7}, out).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = theirs.encode_decode(x, [{"img_shape": size}])
        got = ours(x)
    # float32 rounding only (different kernels and op order): measured ≤ 1.1e-5 on logits of size ~5
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parity
@needs_mmseg
def test_resnet_d8_backbone_is_bit_exact_in_eval_and_train() -> None:
    from mmseg.models.backbones import ResNetV1c

    torch.manual_seed(0)
    theirs = ResNetV1c(depth=50, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True)
    ours = create_model("pspnet_r50_d8", num_classes=3).backbone
    state = convert_state_dict({f"backbone.{k}": v for k, v in theirs.state_dict().items()}, "pspnet_r50_d8")
    ours.load_state_dict({k[len("backbone.") :]: v for k, v in state.items()}, strict=True)
    x = torch.randn(2, 3, 65, 83)
    for train in (False, True):
        theirs.train(train)
        ours.train(train)
        with torch.no_grad():
            for a, b in zip(ours(x), theirs(x), strict=True):
                assert torch.equal(a, b)


@pytest.mark.parity
@needs_mmseg
def test_cli_converts_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from eqsurgeon.cli import app

    torch.manual_seed(0)
    model = _mmseg.build_segmentor(CONFIGS["deeplabv3plus_r50_d8"], num_classes=4)
    _save_like_mmengine(model, tmp_path / "m.pth")
    args = ["convert-mmseg", str(tmp_path / "m.pth"), "--model", "deeplabv3plus_r50_d8",
            "--out", str(tmp_path / "z.safetensors")]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "z.safetensors").is_file()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output


def _cli(*args: object) -> Any:
    from typer.testing import CliRunner

    from eqsurgeon.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parity
@needs_mmseg
def test_the_record_survives_mmengines_own_load_and_save(tmp_path: Path) -> None:
    """Issue 11's mmseg round trip through mmengine itself: ``load_checkpoint`` into the model (strict),
    ``save_checkpoint`` of the loaded checkpoint's meta with the model's weights (what a user's script or
    mmengine's CheckpointHook writes). Then check passes, calibrate refuses, the record is intact; and with
    the meta replaced (a Runner's new checkpoint keeps none of the old meta) the fold is recognized."""
    from mmengine.runner.checkpoint import get_state_dict, load_checkpoint, save_checkpoint, weights_to_cpu

    from eqsurgeon.io import read
    from fixtures.calibration import make_images

    images = make_images(tmp_path / "imgs", 16, size=64)
    spec = "upernet_tiny"
    model_args = ("--arg", "num_classes=3", "--input-size", "64x64", "--batch-size", 4)
    torch.manual_seed(0)
    src = tmp_path / "iter_8000.pth"
    _save_like_mmengine(create_model(spec, num_classes=3), src)
    cal = tmp_path / "cal.pth"
    done = _cli("calibrate", spec, "--checkpoint", src, "--data", images, "--out", cal, *model_args)
    assert done.exit_code == 0, done.output

    model = create_model(spec, num_classes=3)
    checkpoint = load_checkpoint(model, str(cal), map_location="cpu", strict=True)
    assert checkpoint["meta"]["mmseg_version"] == "1.2.2"  # the input's meta was kept beside the record
    weights = weights_to_cpu(get_state_dict(model))
    resaved, new_meta = tmp_path / "resaved.pth", tmp_path / "new_meta.pth"
    save_checkpoint({"meta": checkpoint["meta"], "state_dict": weights}, str(resaved))
    save_checkpoint({"meta": {"iter": 8001}, "state_dict": weights}, str(new_meta))
    assert read(resaved).record == read(cal).record
    assert read(new_meta).record is None

    for path in (resaved, new_meta):
        checked = _cli("check", spec, "--checkpoint", path, "--data", images, "--batches", 2, *model_args)
        assert checked.exit_code == 0, checked.output
        text = " ".join(checked.output.split())  # rich wraps lines at the runner's width
        assert ("folded scales read from the weights" in text) == (path == new_meta), text
        again = tmp_path / "again.safetensors"
        refused = _cli("calibrate", spec, "--checkpoint", path, "--data", images, "--out", again, *model_args)
        assert refused.exit_code == 2 and not again.exists(), refused.output


# -- without mmseg: the re-layouts and the errors ----------------------------------------------------------
def test_patch_merging_reorder_turns_unfold_order_into_timms() -> None:
    torch.manual_seed(0)
    c, x = 3, torch.randn(1, 3, 4, 6)
    unfolded = nn.functional.unfold(x, 2, stride=2).transpose(1, 2)  # [1, L, C*4], (c, kh, kw) order
    nhwc = x.permute(0, 2, 3, 1)
    # timm: concat of x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]
    timm_order = torch.cat(
        [nhwc[:, 0::2, 0::2], nhwc[:, 1::2, 0::2], nhwc[:, 0::2, 1::2], nhwc[:, 1::2, 1::2]], -1
    ).reshape(1, -1, 4 * c)
    weight = torch.randn(5, 4 * c)
    expected = unfolded @ weight.T  # mmseg's reduction on its layout
    got = timm_order @ _unfold_to_timm_order(weight).T
    torch.testing.assert_close(got, expected)
    # the same permutation moves the features themselves (and so the LayerNorm's weight and bias)
    assert torch.equal(_unfold_to_timm_order(unfolded), timm_order)


def test_models_without_an_mmseg_counterpart_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="upernet_tiny"):
        backbone_family("upernet_tiny")
    assert {backbone_family(n) for n in ("upernet_swin_base", "fcn_r101_d8", "upernet_twins_svt_large")} == {
        "swin", "resnet", "twins"}  # fmt: skip


def test_a_key_that_fits_nowhere_is_named() -> None:
    with pytest.raises(CheckpointError, match=r"backbone\.stages\.9\.mystery"):
        convert_state_dict({"backbone.stages.9.mystery": torch.zeros(1)}, "upernet_swin_tiny")


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(3, 512, 1, 1)}}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"does not fit zoo model fcn_r50_d8 .*missing"):
        convert_checkpoint(tmp_path / "c.pth", "fcn_r50_d8", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_pickles_beyond_weights_and_numpy_meta_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _NotAWeight()}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_mmseg_checkpoint(tmp_path / "c.pth")
    import numpy as np

    torch.save({"meta": {"iter": np.int64(3), "a": np.zeros(2)}, "state_dict": {"w": torch.ones(1)}},
               tmp_path / "n.pth")  # fmt: skip
    assert torch.equal(read_mmseg_checkpoint(tmp_path / "n.pth")["w"], torch.ones(1))


class _NotAWeight:
    def __reduce__(self) -> Any:
        return (_NotAWeight, ())
