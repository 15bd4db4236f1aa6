"""Equalize math on hand-made tensors: folded weights equal explicit normalization of the input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from eqsurgeon.equalize import (
    EqualizedInput,
    InputStat,
    channel_vector,
    compute_scales,
    fold_into,
    insert_equalizers,
)

torch.manual_seed(0)


def _stats(ranges: list[tuple[int, int]]) -> list[InputStat]:
    gen = torch.Generator().manual_seed(len(ranges))
    return [
        InputStat(r, float(torch.randn(1, generator=gen)), float(0.2 + torch.rand(1, generator=gen) * 3))
        for r in ranges
    ]


def _normalized(x: torch.Tensor, stats: list[InputStat], dim: int) -> torch.Tensor:
    y = x.clone()
    for st in stats:
        sl = [slice(None)] * x.dim()
        sl[dim] = slice(*st.channels)
        y[tuple(sl)] = (x[tuple(sl)] - st.mean) / st.std
    return y


def _check(layer: nn.Module, op: str, x: torch.Tensor, ranges, dim: int = 1, crop: int = 0) -> None:
    stats = _stats(ranges)
    layer = layer.double()
    x = x.double()
    expected = layer(_normalized(x, stats, dim))
    folded = copy.deepcopy(layer)
    result = fold_into(nn.Sequential(folded), "0", op, stats, bias_correction=True)
    assert result.bias_corrected and result.note is None
    got = folded(x)
    if crop:  # outputs whose taps touch the zero border (full ConvTranspose) see no normalized input there
        expected, got = (t[(..., *[slice(crop, -crop)] * (t.dim() - 2))] for t in (expected, got))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # and the insert-mode wrapper computes the same as explicit normalization
    torch.testing.assert_close(EqualizedInput(layer, stats, dim)(x), layer(_normalized(x, stats, dim)))


@pytest.mark.parametrize("kernel", [1, 3])
def test_grouped_conv2d(kernel: int) -> None:
    # ranges cross the group boundary at channel 4 on purpose
    _check(nn.Conv2d(8, 6, kernel, groups=2), "conv2d", torch.randn(2, 8, 7, 7), [(0, 3), (3, 8)])


def test_depthwise_conv2d_scales_only_own_rows() -> None:
    _check(nn.Conv2d(6, 12, 3, groups=6), "conv2d", torch.randn(2, 6, 6, 6), [(0, 1), (1, 4), (4, 6)])


def test_conv1d_and_conv3d() -> None:
    _check(nn.Conv1d(5, 4, 3), "conv1d", torch.randn(2, 5, 9), [(0, 2), (2, 5)])
    _check(nn.Conv3d(4, 2, 3, groups=2), "conv3d", torch.randn(1, 4, 5, 5, 5), [(0, 1), (1, 4)])


@pytest.mark.parametrize("groups", [1, 3])
def test_conv_transpose_input_channels_on_dim0(groups: int) -> None:
    layer = nn.ConvTranspose2d(6, 9, 3, groups=groups)
    _check(layer, "conv_transpose2d", torch.randn(2, 6, 6, 6), [(0, 2), (2, 6)], crop=2)
    _check(
        nn.ConvTranspose2d(6, 9, 1, groups=groups),
        "conv_transpose2d",
        torch.randn(2, 6, 4, 4),
        [(0, 4), (4, 6)],
    )


def test_strided_conv_transpose_folds_scale_but_not_mean() -> None:
    layer = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1).double()
    stats = [InputStat((0, 1), 0.0, 0.5), InputStat((1, 4), 0.0, 3.0)]  # zero means: scale alone is exact
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    expected = layer(_normalized(x, stats, 1))
    folded = copy.deepcopy(layer)
    result = fold_into(nn.Sequential(folded), "0", "conv_transpose2d", stats, bias_correction=True)
    assert not result.bias_corrected and "strided" in result.note
    torch.testing.assert_close(folded(x), expected)
    torch.testing.assert_close(folded.bias, layer.bias)


def test_linear_channels_last_scales_columns() -> None:
    _check(nn.Linear(7, 3), "linear", torch.randn(2, 5, 7), [(0, 3), (3, 4), (4, 7)], dim=-1)


def test_padded_conv_is_exact_away_from_the_border_only() -> None:
    layer = nn.Conv2d(4, 3, 3, padding=1).double()
    stats = _stats([(0, 2), (2, 4)])
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    expected = layer(_normalized(x, stats, 1))
    folded = copy.deepcopy(layer)
    fold_into(nn.Sequential(folded), "0", "conv2d", stats, bias_correction=True)
    got = folded(x)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
    assert not torch.allclose(got[..., 0, :], expected[..., 0, :])  # documented: zero padding frame differs


def test_no_bias_layer_folds_scale_and_says_why_mean_is_not_folded() -> None:
    layer = nn.Conv2d(2, 2, 1, bias=False)
    before = layer.weight.detach().clone()
    result = fold_into(nn.Sequential(layer), "0", "conv2d", [InputStat((0, 2), 1.0, 4.0)], True)
    assert not result.bias_corrected and "no bias" in result.note
    torch.testing.assert_close(layer.weight, before / 4)


def test_scale_guards_never_divide() -> None:
    ok = InputStat((0, 1), 0.3, 0.5)
    assert compute_scales([ok]).scales == (2.0,)
    for bad, word in [
        (InputStat((1, 2), 0.3, 0.0), "zero variance"),
        (InputStat((1, 2), 1e6, 1e-3), "zero variance"),  # round-off std of a large constant
        (InputStat((1, 2), math.nan, 1.0), "non-finite"),
        (InputStat((1, 2), 0.0, math.inf), "non-finite"),
        (InputStat((1, 2), 0.0, math.nan), "non-finite"),
        (InputStat((1, 2), 0.0, 1e-310), "zero variance"),
        (InputStat((1, 2), 0.0, 4e-4), "of the largest std of the site"),  # < 1e-3 × 0.5: all-black images
    ]:
        decision = compute_scales([ok, bad])
        assert (
            decision.scales is None
            and word in decision.reason
            and "input 1 (channels 1:2)" in decision.reason
        )


def test_channel_vector_fills_gaps() -> None:
    vec = channel_vector([InputStat((1, 3), 0, 1)], [5.0], 4, 0.0)
    assert vec.tolist() == [0.0, 5.0, 5.0, 0.0]


def test_insert_equalizers_keeps_layer_as_child_and_passes_gaps() -> None:
    net = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU())
    ref = copy.deepcopy(net)
    insert_equalizers(net, "0", [InputStat((1, 3), 0.5, 2.0)])
    assert set(net.state_dict()) == {
        "0.layer.weight",
        "0.layer.bias",
        "0.equalizers.0.mean",
        "0.equalizers.0.std",
    }
    x = torch.randn(2, 4, 3, 3)
    y = x.clone()
    y[:, 1:3] = (x[:, 1:3] - 0.5) / 2.0
    torch.testing.assert_close(net(x), ref(y))
    with pytest.raises(AssertionError, match="already equalized"):
        insert_equalizers(net, "0", [InputStat((1, 3), 0.5, 2.0)])


def test_fold_runs_where_the_weights_live() -> None:
    # statistics are host floats; weights may sit on a GPU. The meta device catches a mix-up on CPU.
    stats = [InputStat((0, 2), 0.5, 2.0), InputStat((2, 4), 0.1, 0.5)]
    layers = [
        ("conv2d", nn.Conv2d(4, 6, 3, groups=2)),
        ("conv_transpose2d", nn.ConvTranspose2d(4, 2, 1)),
        ("linear", nn.Linear(4, 3)),
    ]
    for op, layer in layers:
        net = nn.Sequential(layer).to("meta")
        result = fold_into(net, "0", op, stats, bias_correction=True)
        assert result.bias_corrected and net[0].weight.device.type == "meta"
    net = nn.Sequential(nn.Conv2d(4, 2, 1)).to("meta")
    insert_equalizers(net, "0", stats)
    assert {b.device.type for b in net.buffers()} == {"meta"}
