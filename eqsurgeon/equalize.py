"""Equalize: the only stage that changes parameters. Pure tensor math first, module surgery after.

Each concat input i of a fusion site has a global mean μ_i and std σ_i. Fold mode rewrites the fusing
layer so it computes, on the raw concat, what it used to compute on the equalized concat::

    before:  x = cat(x_1, ..., x_n) ──▶ conv(W, b)
    fold:    x ──▶ conv(W', b')     W'_i = W_i / σ_i            (input-channel slice i)
                                    b'   = b − Σ_i Σ_k W'_i μ_i  (optional bias correction)
    insert:  x ──▶ EqualizedInput[ (x_i − μ_i) / σ_i per slice ] ──▶ conv(W, b)

Scaling weight slices by 1/σ_i is exact. The bias correction is exact wherever the kernel sees only real
pixels; at a zero-padded border a k×k kernel (k > 1) sees padded zeros, which the equalizer would
have turned into −μ_i/σ_i, so the folded and inserted outputs differ in a (k−1)/2-pixel frame
(reflect/replicate/circular padding have no such frame). Explicit padding between the concat and the
layer (TF-style ``F.pad``, ``nn.ZeroPad2d``, which site finding passes through) is the other way round:
the inserted equalizer sees the padded zeros and makes them −μ_i/σ_i, and the folded bias subtracts
W'_i μ_i at every tap, padded or not, so fold and insert agree everywhere; both differ from "equalize,
then pad with zeros" on the padded frame. A strided ConvTranspose sums a different subset of taps at
each output phase, so its bias correction is not applied.

Layouts (``op`` as in ``FusionSite.op``): Conv weight [out, in/groups, *k], input channel c in group
c // (in/groups) at index c % (in/groups); ConvTranspose weight [in, out/groups, *k], input channel on
dim 0; Linear weight [out, in], input channel = column.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eqsurgeon.call_args import input_key
from eqsurgeon.modules import ScaleEqualizer

# A std this small relative to the mean is a constant feature measured with float round-off.
_ZERO_STD_REL = 1e-6
# A std this small relative to the largest std of its site is a constant feature too. Measured on an
# untrained upernet_tiny fed all-black images, the PPM branches' round-off σ were 7.6e-6 to 2.2e-4 of the
# backbone input's σ (1.0), and folding them scaled weights by up to 131,789. Real sites differ far less:
# the largest input variance ratio measured (DESIGN.md) is 4.5, a σ ratio of 2.1. A threshold of 1e-3
# (a variance ratio of 1e6) sits 4.5× above the worst round-off seen and 475× below the widest real gap.
SITE_STD_REL = 1e-3


@dataclass(frozen=True)
class InputStat:
    """The measured statistics of one concat input: its channel range [start, stop), mean and std."""

    channels: tuple[int, int]
    mean: float
    std: float


@dataclass(frozen=True)
class ScaleDecision:
    """Per-input scales 1/σ_i for a site, or the reason the site must be skipped (then ``scales`` is None)."""

    scales: tuple[float, ...] | None
    reason: str | None = None


def compute_scales(stats: Sequence[InputStat]) -> ScaleDecision:
    """The scale 1/σ_i of each input, refusing a σ that is 0, NaN or infinite (never divided by), or
    below ``SITE_STD_REL`` (1e-3) of the largest σ of the site: a constant feature, such as the global
    branches on blank images, whose round-off σ would multiply its weights by thousands.

    >>> compute_scales([InputStat((0, 2), 0.4, 0.5), InputStat((2, 4), 0.1, 0.25)])
    ScaleDecision(scales=(2.0, 4.0), reason=None)
    >>> compute_scales([InputStat((0, 2), 1.0, 0.0)]).reason
    'input 0 (channels 0:2) has zero variance (a constant feature); dividing by its std would blow up'
    >>> tiny = [InputStat((0, 2), 0.0, 1.0), InputStat((2, 4), 0.0, 1e-5)]
    >>> compute_scales(tiny).reason  # doctest: +ELLIPSIS
    'input 1 (channels 2:4) has std 1e-05, 1e-05 of the largest std of the site (1); a constant feature...'
    """
    top = max((st.std for st in stats if math.isfinite(st.std)), default=0.0)
    scales = []
    for i, st in enumerate(stats):
        where = f"input {i} (channels {st.channels[0]}:{st.channels[1]})"
        if not math.isfinite(st.mean) or not math.isfinite(st.std):
            return ScaleDecision(None, f"{where} has non-finite statistics (mean {st.mean}, std {st.std})")
        if st.std <= _ZERO_STD_REL * max(1.0, abs(st.mean)):
            return ScaleDecision(
                None, f"{where} has zero variance (a constant feature); dividing by its std would blow up"
            )
        if st.std < SITE_STD_REL * top:
            return ScaleDecision(
                None,
                f"{where} has std {st.std:.3g}, {st.std / top:.2g} of the largest std of the site "
                f"({top:.3g}); a constant feature (blank or uniform images?) whose 1/std would scale its "
                f"weights ×{1 / st.std:,.0f}: calibrate on varied images",
            )
        scale = 1.0 / st.std
        if not math.isfinite(scale):
            return ScaleDecision(None, f"{where} has std {st.std}, whose inverse overflows")
        scales.append(scale)
    return ScaleDecision(tuple(scales))


def channel_vector(
    stats: Sequence[InputStat], values: Sequence[float], in_channels: int, fill: float
) -> torch.Tensor:
    """Expand one value per input to one value per input channel (float64); uncovered channels get ``fill``.

    >>> channel_vector([InputStat((0, 1), 0, 1), InputStat((1, 3), 0, 1)], [2.0, 3.0], 4, 1.0)
    tensor([2., 3., 3., 1.], dtype=torch.float64)
    """
    vec = torch.full((in_channels,), float(fill), dtype=torch.float64)
    for st, value in zip(stats, values, strict=True):
        assert 0 <= st.channels[0] < st.channels[1] <= in_channels, (st.channels, in_channels)
        vec[st.channels[0] : st.channels[1]] = float(value)
    return vec


def fold_weight(weight: torch.Tensor, per_channel: torch.Tensor, op: str, groups: int = 1) -> torch.Tensor:
    """Multiply each input channel's weight slice by ``per_channel[c]`` in the layout of ``op``.

    Args:
        weight: the fusing layer's weight.
        per_channel: one factor per input channel of the layer (e.g. 1/σ_i expanded by ``channel_vector``).
        op: "conv1d/2d/3d", "conv_transpose1d/2d/3d" or "linear".
        groups: the layer's groups.

    >>> fold_weight(torch.ones(2, 3), torch.tensor([1.0, 2.0, 4.0]), "linear")
    tensor([[1., 2., 4.],
            [1., 2., 4.]])
    """
    factor = _input_layout(per_channel.to(weight.device), weight, op, groups)
    return (weight.double() * factor).to(weight.dtype)


def fold_bias(
    bias: torch.Tensor, folded_weight: torch.Tensor, per_channel_mean: torch.Tensor, op: str, groups: int = 1
) -> torch.Tensor:
    """b − Σ_c Σ_k W'[o, c, k] μ_c: the bias that makes the folded layer subtract the means.

    ``folded_weight`` is the weight after ``fold_weight`` (so the terms are W_i μ_i / σ_i).

    >>> fold_bias(torch.zeros(1), torch.tensor([[2.0, 4.0]]), torch.tensor([0.5, 0.25]), "linear")
    tensor([-2.])
    """
    w = folded_weight.double()
    mu = _input_layout(per_channel_mean.to(folded_weight.device), folded_weight, op, groups)
    kernel_dims = tuple(range(2, w.dim()))
    if op.startswith("conv_transpose"):
        per_in = (w * mu).sum(kernel_dims) if kernel_dims else w * mu  # [in, out/groups]
        in_per_group = per_in.shape[0] // groups
        shift = per_in.reshape(groups, in_per_group, -1).sum(1).reshape(-1)  # output o = g*(out/g) + j
    else:
        shift = (w * mu).sum(tuple(range(1, w.dim())))
    return (bias.double() - shift).to(bias.dtype)


@dataclass(frozen=True)
class FoldResult:
    """What folding did to one layer."""

    layer: str
    bias_corrected: bool
    note: str | None = None


def fold_into(
    model: nn.Module, layer: str, op: str, stats: Sequence[InputStat], bias_correction: bool
) -> FoldResult:
    """Fold 1/σ_i (and, when asked and possible, −μ_i/σ_i) into ``model.<layer>``'s parameters in place.

    Callers check ``compute_scales`` first; a zero or non-finite σ is an internal error here.

    >>> conv = nn.Sequential(nn.Conv2d(4, 2, 1))
    >>> fold_into(conv, "0", "conv2d", [InputStat((0, 2), 0.0, 2.0), InputStat((2, 4), 0.0, 0.5)], False)
    FoldResult(layer='0', bias_corrected=False, note=None)
    """
    module = model.get_submodule(layer)
    decision = compute_scales(stats)
    assert decision.scales is not None, decision.reason
    groups = int(getattr(module, "groups", 1))
    in_channels = _in_channels(module, op)
    scale = channel_vector(stats, decision.scales, in_channels, 1.0)
    with torch.no_grad():
        new_weight = fold_weight(module.weight, scale, op, groups)
        note, corrected = None, False
        if bias_correction:
            note = _bias_obstacle(module, op)
            if note is None:
                mean = channel_vector(stats, [s.mean for s in stats], in_channels, 0.0)
                module.bias.copy_(fold_bias(module.bias, new_weight, mean, op, groups))
                corrected = True
        module.weight.copy_(new_weight)
    return FoldResult(layer, corrected, note)


class EqualizedInput(nn.Module):
    """Insert mode: a ``ScaleEqualizer`` per concat input in front of the original fusing layer.

    The layer stays a child, so its state-dict keys become ``<layer>.layer.weight`` and the equalizers'
    buffers ``<layer>.equalizers.<i>.mean/std``; ``channels`` and ``channel_dim`` are rebuilt from the
    checkpoint's metadata by ``insert_equalizers``. Channels outside every range pass unchanged.

    >>> m = EqualizedInput(nn.Identity(), [InputStat((0, 1), 1.0, 2.0)])
    >>> m(torch.tensor([[3.0, 5.0]]))
    tensor([[1., 5.]])
    """

    def __init__(self, layer: nn.Module, stats: Sequence[InputStat], channel_dim: int = 1) -> None:
        super().__init__()
        self.layer = layer
        self.channels = tuple(tuple(st.channels) for st in stats)
        self.channel_dim = channel_dim
        self.equalizers = nn.ModuleList(ScaleEqualizer(st.mean, st.std) for st in stats)
        order = sorted(self.channels)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(order)), "ranges overlap"

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        # The input comes as the caller passed it: ``layer(x)``, ``layer(input=x)`` or ``layer(x=x)``.
        key = input_key(args, kwargs, self.layer.forward)
        if key is None:  # nothing came by position and no keyword names the input: the layer says so
            return self.layer(**kwargs)
        x = args[0] if key == 0 else kwargs[str(key)]
        assert isinstance(x, torch.Tensor)
        dim = self.channel_dim % x.dim()
        pieces, pos = [], 0
        for (start, stop), eq in sorted(zip(self.channels, self.equalizers, strict=True), key=lambda p: p[0]):
            if start > pos:
                pieces.append(x.narrow(dim, pos, start - pos))
            pieces.append(eq(x.narrow(dim, start, stop - start)))
            pos = stop
        if pos < x.shape[dim]:
            pieces.append(x.narrow(dim, pos, x.shape[dim] - pos))
        equalized = torch.cat(pieces, dim)
        if key == 0:
            return self.layer(equalized, *args[1:], **kwargs)
        return self.layer(*args, **{**kwargs, str(key): equalized})


def insert_equalizers(model: nn.Module, layer: str, stats: Sequence[InputStat], channel_dim: int = 1) -> None:
    """Replace ``model.<layer>`` by ``EqualizedInput(<layer>, stats)`` in place.

    >>> net = nn.Sequential(nn.Linear(2, 1))
    >>> insert_equalizers(net, "0", [InputStat((0, 2), 0.0, 1.0)], channel_dim=-1)
    >>> sorted(net.state_dict())
    ['0.equalizers.0.mean', '0.equalizers.0.std', '0.layer.bias', '0.layer.weight']
    """
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = parent.get_submodule(child)
    assert not isinstance(original, EqualizedInput), f"{layer} is already equalized"
    wrapper = EqualizedInput(original, stats, channel_dim)
    device = next((p.device for p in original.parameters()), None)
    setattr(parent, child, wrapper if device is None else wrapper.to(device))


def _input_layout(per_channel: torch.Tensor, weight: torch.Tensor, op: str, groups: int) -> torch.Tensor:
    # Reshape a per-input-channel vector so it broadcasts against the weight.
    vec = per_channel.to(device=weight.device, dtype=torch.float64)  # statistics live on the host
    trailing = (1,) * (weight.dim() - 2)
    if op == "linear":
        assert vec.numel() == weight.shape[1], (vec.numel(), weight.shape)
        return vec.view(1, -1)
    if op.startswith("conv_transpose"):
        assert vec.numel() == weight.shape[0], (vec.numel(), weight.shape)
        return vec.view(-1, 1, *trailing)
    assert op.startswith("conv"), f"unknown fusing op {op!r}"
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    assert vec.numel() == in_per_group * groups and out_channels % groups == 0, (vec.numel(), weight.shape)
    # row o belongs to group o // (out/groups) and sees input channels g*(in/groups) ... (g+1)*(in/groups)-1
    rows = vec.view(groups, in_per_group).repeat_interleave(out_channels // groups, dim=0)
    return rows.view(out_channels, in_per_group, *trailing)


def _in_channels(module: nn.Module, op: str) -> int:
    weight = module.weight
    if op == "linear":
        return weight.shape[1]
    if op.startswith("conv_transpose"):
        return weight.shape[0]
    return weight.shape[1] * int(getattr(module, "groups", 1))


def _bias_obstacle(module: nn.Module, op: str) -> str | None:
    # Why the mean cannot be folded into this layer's bias (None: it can).
    if getattr(module, "bias", None) is None:
        return "layer has no bias (adding one would change the state-dict keys); means not folded"
    stride = getattr(module, "stride", (1,))
    if op.startswith("conv_transpose") and any(s != 1 for s in stride):
        return "strided ConvTranspose sums different taps per output phase; means not folded"
    return None
