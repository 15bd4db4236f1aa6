"""An equalized fusing layer is recognized from weights and activations alone, with no record.

Every tiny zoo model and every fixture with a site to equalize: fresh, it is flagged (nothing taken for
folded) and calibrates normally; fold-calibrated and stripped of its record, ``check`` passes it and
``calibrate`` refuses it. The pure decision is tested on hand-made numbers first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import eqsurgeon.zoo  # noqa: F401  (registers the zoo models)
from eqsurgeon import api
from eqsurgeon.calibration import CalibrationOptions
from eqsurgeon.errors import CheckpointError
from eqsurgeon.io import save_checkpoint
from eqsurgeon.recognize import judge, judge_init, slice_statistics
from eqsurgeon.registry import create_model, list_models
from fixtures import calibration
from fixtures.models import FIXTURES
from tests._ecosystems import run

NO_SITE = {"shared_fuse", "functional_conv", "fpn_add", "no_sites"}  # nothing to equalize (test_sites)
FIXTURE_MODELS = {
    **{n: f for n, f in FIXTURES.items() if n not in NO_SITE},
    **{f.__name__: f for f in (calibration.fuse_1x1, calibration.fuse_3x3, calibration.fuse_two,
                               calibration.fuse_two_plain, calibration.fuse_gn, calibration.token_fuse)},
}  # fmt: skip
ZOO = [n for n in list_models() if n.endswith("_tiny")]
FULL_SIZE = {"upernet_convnext_tiny", "upernet_swin_tiny"}  # ConvNeXt-T / Swin-T backbones: ~30 s each
SLOW = pytest.mark.slow


def test_a_fold_is_recognized_and_initialization_is_not() -> None:
    folded = judge([0.34, 0.14, 0.06], [1 / 0.34, 1 / 0.14, 1 / 0.06], [0.05] * 3)
    assert folded.equalized and folded.effective_ratio == pytest.approx(1.0)
    assert not judge([0.34, 0.14, 0.06], [1.0, 1.02, 0.97], [0.05] * 3).equalized
    # weights unbalanced the other way (they amplify the imbalance) are no fold
    assert not judge([0.34, 0.06], [1 / 0.06, 1 / 0.34], [0.05] * 2).equalized
    # the same fold hidden in noise as large as the imbalance cannot be told from initialization
    assert not judge([0.34, 0.24], [1 / 0.34, 1 / 0.24], [0.3] * 2).equalized
    # balanced inputs: only the initialization's scale w0 tells a fold (w_i = w0 / v_i) from a fresh layer
    v, se = [0.34, 0.32], [0.05] * 2
    assert not judge(v, [1 / 0.34, 1 / 0.32], se).equalized
    assert judge_init(v, [1 / 0.34, 1 / 0.32], se, inits=[1.0]).equalized
    assert not judge_init(v, [1.0, 1.01], se, inits=[1.0]).equalized  # fresh
    assert not judge_init([0.98, 0.95], [1 / 0.98, 1 / 0.95], se, inits=[1.0]).equalized  # v ≈ 1: moot
    assert not judge_init(v, [0.5 / 0.34, 0.5 / 0.32], se, inits=[1.0]).equalized  # another init's scale
    # fresh at one standard init that another one, folded, would also explain: fresh wins
    assert not judge_init(v, [1.0, 1.0], se, inits=[0.33, 1.0]).equalized
    assert judge_init(v, [1.0, 1.0], se, inits=[0.33]).equalized
    # off balance on other data than at calibration (a third of the imbalance left): still folded
    off = judge([9.0, 1.0], [0.25, 1.0], [0.02] * 2)
    assert off.equalized and off.effective_ratio == pytest.approx(2.25) and not off.passes(1.5)


def test_fans_follow_torch_init() -> None:
    from eqsurgeon.weight_slices import fans

    for weight in (torch.empty(6, 4, 3, 3), torch.empty(4, 2, 3), torch.empty(5, 10)):
        assert fans(weight) == nn.init._calculate_fan_in_and_fan_out(weight)


def test_slice_statistics_follow_each_layer_layout() -> None:
    conv = nn.Conv2d(4, 6, 3, groups=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[3:, 1] = 2.0  # group 1 (rows 3..5), its index 1: input channel 3
    means = slice_statistics(conv.weight, "conv2d", 2, [(0, 3), (3, 4)]).means
    assert means == [1.0, 4.0]
    linear = torch.ones(5, 4)
    linear[:, 2:] = 3.0
    assert slice_statistics(linear, "linear", 1, [(0, 2), (2, 4)]).means == [1.0, 9.0]
    transposed = torch.ones(4, 2, 2, 2)
    transposed[:1] = 0.5
    assert slice_statistics(transposed, "conv_transpose2d", 1, [(0, 1), (1, 4)]).means == [0.25, 1.0]


def _batches(size: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=gen) for _ in range(count)]


def _fresh_then_calibrated(make: object, size: int) -> None:
    torch.manual_seed(0)
    net = make()  # type: ignore[operator]
    opts = api.DataOptions(batch_size=4, device="cpu")
    fresh = api.check(net, _batches(size, 2, 1), opts).result
    assert not any(v.scales_from for v in fresh.verdicts)  # nothing taken for folded
    assert all(v.passed == (v.ratio is None or v.ratio <= 1.5) for v in fresh.verdicts)  # by the raw ratio
    options = CalibrationOptions(min_batches=4)
    done = api.calibrate(net, _batches(size, 4, 2), options=options, data_options=opts)
    # the record is dropped here: only the folded weights remain
    after = api.check(net, _batches(size, 2, 3), opts).result
    assert after.passed, [(v.layer, v.ratio, v.note) for v in after.verdicts]
    assert done.record.equalized_sites
    # balanced sites too (fcn_tiny's var_ratio 1.05): their slices moved off the initialization's scale
    assert any(v.scales_from == "weights" for v in after.verdicts)
    with pytest.raises(CheckpointError, match="looks scale-equalized already"):
        api.calibrate(net, _batches(size, 4, 2), data_options=opts)


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_fixture_fresh_is_flagged_and_calibrated_is_recognized(name: str) -> None:
    _fresh_then_calibrated(FIXTURE_MODELS[name], 32)


@pytest.mark.parametrize("name", [pytest.param(n, marks=SLOW) if n in FULL_SIZE else n for n in ZOO])
def test_zoo_fresh_is_flagged_and_calibrated_is_recognized(name: str) -> None:
    _fresh_then_calibrated(lambda: create_model(name, num_classes=3), 64)


def test_cli_without_a_record_check_passes_and_calibrate_refuses(tmp_path: Path) -> None:
    images = calibration.make_images(tmp_path / "imgs", 16, size=32)
    spec = f"{Path(calibration.__file__)}:fuse_two"
    cal = tmp_path / "cal.safetensors"
    common = ("--batch-size", 4, "--workers", 0)
    assert run("calibrate", spec, "--data", images, "--out", cal, *common).exit_code == 0
    from eqsurgeon.io import read

    plain = save_checkpoint(tmp_path / "plain.safetensors", read(cal).tensors)  # any tool's save: no record
    checked = run("check", spec, "--checkpoint", plain, "--data", images, "--batch-size", 4, "--batches", 2)
    assert checked.exit_code == 0, checked.output
    assert "folded scales read from the weights" in checked.stdout
    again = ("calibrate", spec, "--checkpoint", plain, "--data", images, "--out", tmp_path / "x.safetensors")
    refused = run(*again, *common)
    assert refused.exit_code == 2 and "looks scale-equalized already" in refused.stderr
    assert "--allow-equalized" in refused.stderr and not (tmp_path / "x.safetensors").exists()
    forced = run(*again, "--allow-equalized", *common)
    assert forced.exit_code == 0, forced.output
