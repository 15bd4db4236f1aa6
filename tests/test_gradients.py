"""Per-input weight gradients: figures against autograd by hand, fold against insert, the model untouched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon.equalize import InputStat, fold_into, insert_equalizers
from eqsurgeon.grad_hooks import GradRatioHooks
from eqsurgeon.gradients import (
    RandomProjection,
    cross_entropy,
    grad_ratio,
    measure_gradients,
    original_layer,
)
from eqsurgeon.records import FusionSite, Subject


class Fuse(nn.Module):
    """Two inputs on different scales, concatenated along ``dim``, into one fusing layer."""

    def __init__(self, layer: nn.Module, dim: int = 1, widths: tuple[int, int] = (4, 4)) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, widths[0], 1)
        self.b = nn.Conv2d(3, widths[1], 1)
        self.layer, self.dim = layer, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), 5 * self.b(x[:, :, ::2, ::2])
        b = F.interpolate(b, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.dim == -1:  # channels-last tokens into a Linear
            return self.layer(torch.cat([a, b], 1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.layer(torch.cat([a, b], 1))


SITE_INPUTS = (Subject((0, 4), "a"), Subject((4, 8), "b"))
LAYOUTS = {
    "conv": (lambda: nn.Conv2d(8, 6, 3, padding=1), "conv2d", 1, 1),
    "grouped conv": (lambda: nn.Conv2d(8, 6, 3, padding=1, groups=2), "conv2d", 2, 1),
    "conv transpose": (lambda: nn.ConvTranspose2d(8, 6, 3, padding=1, groups=2), "conv_transpose2d", 2, 1),
    "linear": (lambda: nn.Linear(8, 6), "linear", 1, -1),
}


def _by_hand(grad: torch.Tensor, weight: torch.Tensor, op: str, groups: int) -> list[tuple[float, float]]:
    """(grad RMS, weight RMS) per input, gathering each input channel's weight elements one by one."""
    out = []
    for start, stop in ((0, 4), (4, 8)):
        g, w = [], []
        for c in range(start, stop):
            if op == "linear":
                idx = (slice(None), c)
            elif op.startswith("conv_transpose"):
                idx = (c,)
            else:  # conv: rows of channel c's group, column c % (in/groups)
                per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
                group = c // per_group_in
                idx = (slice(group * per_group_out, (group + 1) * per_group_out), c % per_group_in)
            g.append(grad[idx].reshape(-1))
            w.append(weight[idx].reshape(-1))
        out.append((torch.cat(g).pow(2).mean().sqrt().item(), torch.cat(w).pow(2).mean().sqrt().item()))
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_slice_figures_equal_autograd_by_hand(layout: str) -> None:
    make, op, groups, dim = LAYOUTS[layout]
    torch.manual_seed(0)
    model = Fuse(make(), dim)
    site = FusionSite("layer", op, groups, SITE_INPUTS, dim)
    batches = [torch.randn(3, 3, 8, 8), torch.randn(1, 3, 8, 8)]  # unequal sizes: weighted by images
    loss = lambda logits, _: logits.square().mean()  # noqa: E731
    got = measure_gradients(model, [site], batches, loss, bn_mode="eval")
    # by hand: the gradient of the loss averaged over all 4 images, from plain backward calls
    grad = sum(n * torch.autograd.grad(model(b).square().mean(), model.layer.weight)[0]
               for n, b in ((3, batches[0]), (1, batches[1]))) / 4  # fmt: skip
    want = _by_hand(grad, model.layer.weight.detach(), op, groups)
    assert got.images == 4 and got.loss == "<lambda>"
    for slice_grad, (rms, weight_rms) in zip(got.gradients["layer"], want, strict=True):
        assert slice_grad.rms == pytest.approx(rms, rel=1e-6)
        assert slice_grad.weight_rms == pytest.approx(weight_rms, rel=1e-6)
        assert slice_grad.rel == pytest.approx(rms / weight_rms, rel=1e-6)
    rms = [r for r, _ in want]
    assert grad_ratio(got.gradients["layer"]) == pytest.approx(max(rms) / min(rms))


def test_masks_select_cross_entropy_ignoring_255() -> None:
    torch.manual_seed(0)
    model = Fuse(nn.Conv2d(8, 3, 1))
    site = FusionSite("layer", "conv2d", 1, SITE_INPUTS)
    x = torch.randn(2, 3, 8, 8)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[:, :2] = 255
    got = measure_gradients(model, [site], [(x, masks)], bn_mode="eval")
    grad = torch.autograd.grad(F.cross_entropy(model(x), masks, ignore_index=255), model.layer.weight)[0]
    want = _by_hand(grad, model.layer.weight.detach(), "conv2d", 1)
    assert got.loss == "cross_entropy"
    assert [g.rms for g in got.gradients["layer"]] == pytest.approx([r for r, _ in want], rel=1e-6)
    with pytest.raises(ValueError, match="label 7 but the model predicts 3 classes"):
        cross_entropy(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 7))


def test_surrogate_is_a_fixed_random_projection() -> None:
    torch.manual_seed(0)
    model = Fuse(nn.Conv2d(8, 3, 1))
    site = FusionSite("layer", "conv2d", 1, SITE_INPUTS)
    x = torch.randn(2, 3, 8, 8)
    first = measure_gradients(model, [site], [x])
    assert first.loss == "random_projection"
    r = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    grad = torch.autograd.grad((r * model(x)).sum() / 128, model.layer.weight)[0]
    want = _by_hand(grad, model.layer.weight.detach(), "conv2d", 1)
    assert [g.rms for g in first.gradients["layer"]] == pytest.approx([w for w, _ in want], rel=1e-6)
    again = measure_gradients(model, [site], [x])  # the same seed: the same figures
    assert again.gradients == first.gradients
    ones = torch.ones(1, 2, 1, 1)
    assert float(RandomProjection(1)(ones)) != float(RandomProjection(2)(ones))


def test_model_is_left_bit_identical_gradients_included() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Fuse(nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4))))
    model[0].layer[0].weight.grad = torch.randn_like(model[0].layer[0].weight)  # a gradient in progress
    model[0].a.bias.requires_grad_(False)  # a frozen parameter stays frozen
    model.train()
    model[0].layer[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    site = FusionSite("0.layer.0", "conv2d", 1, SITE_INPUTS)
    measured = measure_gradients(model, [site], [torch.randn(2, 3, 8, 8)], bn_mode="batch")
    assert measured.bn_mode == "batch" and all(g.rms > 0 for g in measured.gradients["0.layer.0"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for name, p in model.named_parameters():
        assert p.requires_grad == flags[name][0]
        assert (p.grad is None) == (grads[name] is None)
        assert p.grad is None or (p.grad is flags[name][1] and torch.equal(p.grad, grads[name]))
    assert [m.training for m in model.modules()] == modes


def test_fold_gradient_is_x_delta_and_insert_is_x_over_sigma_delta() -> None:
    """With zero means, fold and insert compute the same forward, so they share δ: fold's slice gradient
    is σ_i times insert's, exactly the imbalance insert removes."""
    torch.manual_seed(0)
    fresh = Fuse(nn.Conv2d(8, 3, 1))
    stats = [InputStat((0, 4), 0.0, 0.5), InputStat((4, 8), 0.0, 4.0)]
    folded, inserted = Fuse(nn.Conv2d(8, 3, 1)), Fuse(nn.Conv2d(8, 3, 1))
    folded.load_state_dict(fresh.state_dict())
    inserted.load_state_dict(fresh.state_dict())
    fold_into(folded, "layer", "conv2d", stats, bias_correction=False)
    insert_equalizers(inserted, "layer", stats)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(folded(x), inserted(x))
    site = FusionSite("layer", "conv2d", 1, SITE_INPUTS)
    fold = measure_gradients(folded, [site], [x]).gradients["layer"]
    # the record's name of an insert-mode layer is the wrapper's; the fusing layer is its .layer
    insert = measure_gradients(inserted, [site], [x]).gradients["layer"]
    assert original_layer(inserted, "layer.layer") == "layer" and original_layer(fresh, "layer") == "layer"
    for f, i, st in zip(fold, insert, stats, strict=True):
        assert f.rms == pytest.approx(st.std * i.rms, rel=1e-5)
    assert grad_ratio(insert) < grad_ratio(fold)


def test_hooks_read_the_training_step_gradient() -> None:
    torch.manual_seed(0)
    model = Fuse(nn.Conv2d(8, 3, 1))
    site = FusionSite("layer", "conv2d", 1, SITE_INPUTS)
    x = torch.randn(2, 3, 8, 8)
    loss = lambda logits, _: logits.square().mean()  # noqa: E731
    want = grad_ratio(measure_gradients(model, [site], [x], loss).gradients["layer"])
    hooks = GradRatioHooks(model, [site])
    model(x).square().mean().backward()  # not armed: nothing kept
    assert hooks.read() == {}
    hooks.armed = True
    model.zero_grad()
    (1024 * model(x).square().mean()).backward()  # a GradScaler's constant scale changes no ratio
    assert hooks.read() == {"layer": pytest.approx(want, rel=1e-5)}
    assert hooks.read() == {}  # read once
    hooks.remove()
    model(x).square().mean().backward()
    assert hooks.read() == {}


def test_grad_ratio_of_a_zero_slice_is_inf() -> None:
    from eqsurgeon.records import SliceGradient

    assert math.isinf(grad_ratio([SliceGradient(0.0, 1.0), SliceGradient(1.0, 1.0)]))
