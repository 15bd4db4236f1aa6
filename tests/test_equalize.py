"""Equalize math on hand-made tensors: folded weights equal explicit normalization of the input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from eqsurgeon.equalize import (
    EqualizedInput,
    FoldResult,
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


def test_an_equalized_layer_called_without_its_input_fails_as_the_layer_would() -> None:
    net = nn.Sequential(nn.Conv2d(4, 2, 1))
    insert_equalizers(net, "0", [InputStat((1, 3), 0.5, 2.0)])
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'input'"):
        net[0]()
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        net[0](x=torch.randn(1, 4, 2, 2))


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


def test_fold_into_a_nested_layer_leaves_uncovered_channels_alone() -> None:
    """Inputs that cover only some channels: the others keep scale 1 and contribute no mean."""
    net = nn.Sequential(nn.Sequential(nn.Identity(), nn.Conv2d(4, 3, 1))).double()
    layer = net[0][1]
    before_w, before_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    stats = [InputStat((1, 3), 0.5, 2.0)]
    result = fold_into(net, "0.1", "conv2d", stats, bias_correction=True)
    assert result == FoldResult("0.1", True, None)
    torch.testing.assert_close(layer.weight[:, [0, 3]], before_w[:, [0, 3]])
    torch.testing.assert_close(layer.weight[:, 1:3], before_w[:, 1:3] / 2.0)
    expected_bias = before_b - (before_w[:, 1:3, 0, 0] * 0.5 / 2.0).sum(1)
    torch.testing.assert_close(layer.bias, expected_bias)


def test_insert_equalizers_into_a_nested_layer() -> None:
    net = nn.Sequential(nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    ref = copy.deepcopy(net)
    insert_equalizers(net, "0.1", [InputStat((0, 4), 1.0, 2.0)], channel_dim=-1)
    assert isinstance(net[0][1], EqualizedInput) and not hasattr(net, "0.1")
    x = torch.randn(3, 4)
    torch.testing.assert_close(net(x), ref[0][1]((ref[0][0](x) - 1.0) / 2.0))


def test_equalized_input_passes_gaps_between_and_after_its_ranges() -> None:
    eq = EqualizedInput(nn.Identity(), [InputStat((3, 4), 1.0, 2.0), InputStat((1, 2), 0.0, 4.0)])
    x = torch.arange(6.0).view(1, 6)
    assert eq(x).tolist() == [[0.0, 0.25, 2.0, 1.0, 4.0, 5.0]]
    with pytest.raises(AssertionError, match=r"^ranges overlap$"):
        EqualizedInput(nn.Identity(), [InputStat((0, 3), 0.0, 1.0), InputStat((2, 4), 0.0, 1.0)])


def test_equalized_input_hands_extra_arguments_to_the_layer() -> None:
    class Takes(nn.Module):
        def forward(self, x: torch.Tensor, shift: float, *, scale: float = 1.0) -> torch.Tensor:
            return (x + shift) * scale

    eq = EqualizedInput(Takes(), [InputStat((0, 1), 1.0, 2.0)])
    assert eq(torch.tensor([[3.0, 5.0]]), 1.0, scale=10.0).tolist() == [[20.0, 60.0]]


def test_folding_keeps_the_dtype_and_names_what_blocks_the_mean() -> None:
    from eqsurgeon.equalize import fold_bias, fold_weight

    w, vec = torch.ones(2, 3), torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert fold_weight(w, vec, "linear").dtype == torch.float32
    assert fold_bias(torch.zeros(2), w, vec, "linear").dtype == torch.float32
    with pytest.raises(AssertionError):
        fold_weight(torch.ones(2, 4, 1, 1), vec, "conv2d")  # 3 factors for 4 input channels
    no_bias = fold_into(
        nn.Sequential(nn.Linear(2, 2, bias=False)), "0", "linear", [InputStat((0, 2), 1.0, 2.0)], True
    )
    assert no_bias.note == "layer has no bias (adding one would change the state-dict keys); means not folded"
    strided = nn.Sequential(nn.ConvTranspose2d(2, 2, 2, stride=2))
    note = fold_into(strided, "0", "conv_transpose2d", [InputStat((0, 2), 1.0, 2.0)], True).note
    assert note == "strided ConvTranspose sums different taps per output phase; means not folded"


def test_channel_vector_refuses_empty_ranges_and_unpaired_values() -> None:
    with pytest.raises(AssertionError):
        channel_vector([InputStat((2, 2), 0, 1)], [5.0], 4, 0.0)
    with pytest.raises(ValueError):
        channel_vector([InputStat((0, 2), 0, 1)], [5.0, 6.0], 4, 0.0)


def test_a_layer_without_a_bias_attribute_is_folded_without_mean_correction() -> None:
    class BareConv(nn.Module):  # a custom fusing layer with a weight and no bias attribute at all
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1, 4, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.conv2d(x, self.weight)

    net = nn.Sequential(BareConv())
    result = fold_into(net, "0", "conv2d", _stats([(0, 2), (2, 4)]), bias_correction=True)
    assert (result.bias_corrected, result.note) == (
        False,
        "layer has no bias (adding one would change the state-dict keys); means not folded",
    )


def test_fold_weight_and_bias_default_to_one_group() -> None:
    from eqsurgeon.equalize import fold_bias, fold_weight

    conv = nn.Conv2d(4, 2, 3)
    vec = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert torch.equal(fold_weight(conv.weight, vec, "conv2d"), fold_weight(conv.weight, vec, "conv2d", 1))
    folded = fold_weight(conv.weight, vec, "conv2d")
    one = fold_bias(conv.bias, folded, vec, "conv2d", 1)
    assert torch.equal(fold_bias(conv.bias, folded, vec, "conv2d"), one)


def test_equalizers_go_around_a_layer_without_parameters() -> None:
    net = nn.Sequential(nn.Identity())
    insert_equalizers(net, "0", [InputStat((0, 2), 1.0, 2.0)])
    assert isinstance(net[0], EqualizedInput)
    assert net(torch.tensor([[3.0, 5.0, 7.0]])).tolist() == [[1.0, 2.0, 7.0]]


def test_scale_guards_at_their_bounds_and_the_whole_reason() -> None:
    from eqsurgeon.equalize import ScaleDecision

    assert compute_scales([]) == ScaleDecision(())  # no inputs: nothing to refuse
    at_zero = compute_scales([InputStat((0, 1), 0.5, 1e-6)]).reason  # 1e-6 × max(1, |μ|) is still zero
    assert at_zero == (
        "input 0 (channels 0:1) has zero variance (a constant feature); dividing by its std would blow up"
    )
    assert compute_scales([InputStat((0, 1), 0.0, 1.5e-6)]).scales == (1 / 1.5e-6,)  # above 1e-6
    at_bound = compute_scales([InputStat((0, 1), 0.0, 1.0), InputStat((1, 2), 0.0, 1e-3)])
    assert at_bound.scales == (1.0, 1000.0)  # exactly 1e-3 of the largest std is still used
    below = compute_scales([InputStat((0, 1), 0.0, 2.0), InputStat((1, 2), 0.0, 1e-3)])
    assert below.scales is None and "0.0005 of the largest std of the site (2)" in below.reason
    tiny = compute_scales([InputStat((0, 1), 0.3, 0.5), InputStat((1, 2), 0.0, 4e-4)])
    assert tiny.reason == (
        "input 1 (channels 1:2) has std 0.0004, 0.0008 of the largest std of the site (0.5); a constant "
        "feature (blank or uniform images?) whose 1/std would scale its weights ×2,500: "
        "calibrate on varied images"
    )
