"""The central equivalences, over every fixture model and every tiny zoo model.

- the captured graph (fx and export) computes what the eager model computes;
- analyze leaves the model bit-identical (parameters, buffers, train/eval flags);
- fold equals insert (the model's output for the pattern fixtures; each fusing layer for zoo heads);
- a calibrated checkpoint saved and loaded into a fresh model gives the same weights and outputs.

Cases are built at collection time; ``test_cases_were_collected`` fails if that ever yields none.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from eqsurgeon.api import MeasureOptions, analyze
from eqsurgeon.calibration import CalibrationOptions, RecordSource, build_record, calibrate
from eqsurgeon.capture import capture
from eqsurgeon.equalize import EqualizedInput, InputStat
from eqsurgeon.errors import EqSurgeonError
from eqsurgeon.io import load, save_checkpoint
from eqsurgeon.measure import measuring_mode
from eqsurgeon.registry import create_model, list_models, model_entry
from eqsurgeon.sites import find_sites
from fixtures.models import FIXTURES

ZOO_TINY = [n for n in list_models() if "tiny" in model_entry(n).tags]
CASES: dict[str, Callable[[], nn.Module]] = {
    **{f"fixture:{name}": factory for name, factory in FIXTURES.items()},
    **{f"zoo:{name}": (lambda n=name: create_model(n, num_classes=3)) for name in ZOO_TINY},
}
NOT_FX = {"fixture:shape_dependent_if"}  # data-dependent control flow: torch.fx cannot trace it by design


def _input(case: str, seed: int = 0, size: int | None = None) -> torch.Tensor:
    size = size or (64 if case.startswith("zoo:") else 32)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=gen) * 0.8 + 0.3


def _batches(case: str, n: int = 4, size: int | None = None) -> list[torch.Tensor]:
    return [_input(case, seed, size) for seed in range(n)]


def _build(case: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[case]()


def _forward_batch_stats(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with measuring_mode(model, "batch"), torch.no_grad():
        out = model(x)
    return out["out"] if isinstance(out, dict) else out


def test_cases_were_collected() -> None:
    assert len(FIXTURES) >= 12 and len(ZOO_TINY) >= 5, (sorted(FIXTURES), ZOO_TINY)


GRAPH_CASES = [
    pytest.param(case, frontend, marks=[pytest.mark.slow] if frontend == "export" and "zoo:" in case else [])
    for case in sorted(CASES)
    for frontend in ("fx", "export")
    if not (frontend == "fx" and case in NOT_FX)  # data-dependent control flow: fx cannot trace it
]


@pytest.mark.parametrize(("case", "frontend"), GRAPH_CASES)
def test_graph_matches_eager(case: str, frontend: str) -> None:
    model, x = _build(case).eval(), _input(case)
    cap = capture(model, x, frontend)
    with torch.no_grad():
        expected, got = model(x), cap.as_module()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("train", [True, False])
def test_analyze_leaves_model_bit_identical(case: str, train: bool) -> None:
    model = _build(case).train(train)
    state, flags = _snapshot(model)
    x = _input(case)
    result = analyze(model, [x, x * 2], measure=MeasureOptions(bn_mode="batch")).analysis
    new_state, new_flags = _snapshot(model)
    assert new_flags == flags and state.keys() == new_state.keys()
    for key in state:
        assert torch.equal(state[key], new_state[key]), key
    assert result.input.images == 4


def test_analyze_with_eval_bn_on_a_trained_model_keeps_running_stats(x32: torch.Tensor) -> None:
    model = FIXTURES["dropout_between"]()
    with torch.no_grad():
        model.train()(x32)  # BN has now tracked one batch
    model.eval()
    before = model.a[1].running_mean.clone()
    result = analyze(model, [x32]).analysis
    assert result.bn_mode == "eval"
    assert torch.equal(model.a[1].running_mean, before)


def _has_ok_site(case: str) -> bool:
    return any(s.ok for s in find_sites(_build(case), _input(case)))


@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("fixture:")))
def test_fold_equals_insert_on_fixture_outputs(case: str) -> None:
    batches = _batches(case, 6)
    folded = _build(case)
    inserted = copy.deepcopy(folded)
    if not _has_ok_site(case):
        with pytest.raises(EqSurgeonError, match="no equalizable fusion site"):
            calibrate(folded, batches)
        return
    result = calibrate(folded, batches, CalibrationOptions(mode="fold"))
    calibrate(inserted, batches, CalibrationOptions(mode="insert"))
    x = _input(case, seed=9)
    a, b = _forward_batch_stats(folded, x), _forward_batch_stats(inserted, x)
    # a zero-padded k×k fusing conv (k > 1) is compared away from its border, where folding is inexact
    pad = max(max(getattr(folded.get_submodule(s.site.layer), "padding", (0,))) for s in result.sites)
    if pad:
        a, b = a[..., pad:-pad, pad:-pad], b[..., pad:-pad, pad:-pad]
    if any(s.note and "no bias" in s.note for s in result.sites):
        # no bias to fold the means into (depthwise fixture): fold keeps a per-channel constant that
        # insert mode subtracts, and nothing after it removes, so the outputs differ by exactly that
        diff = a - b
        a, b = diff - diff.mean((-2, -1), keepdim=True), torch.zeros_like(diff)
        assert diff.abs().max() > 1e-3  # the constant is really there
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max().clamp(min=1)))


@pytest.mark.parametrize("case", [f"zoo:{n}" for n in ZOO_TINY])
def test_fold_equals_insert_at_every_zoo_fusing_layer(case: str) -> None:
    # Zoo heads fuse with bias-free 3×3 convs followed by BN: fold cannot subtract μ (no bias), so the
    # folded layer's output is the inserted one plus Σ W_i μ_i/σ_i per output channel, away from the
    # zero-padded border. Each folded layer is compared with the original layer behind equalizers built
    # from the same μ/σ, on the same real input, at a size where even the pyramid-pooling bottleneck
    # (stride 32) has an interior. (Two separate fold and insert runs would measure later sites on
    # slightly different features: earlier sites' border effects differ.)
    batches = _batches(case, 4, size=128)
    folded = _build(case)
    original = copy.deepcopy(folded)
    result = calibrate(folded, batches, CalibrationOptions(mode="fold", tolerance=0.5, min_batches=2))
    assert result.equalized
    for site in result.equalized:
        pairs = zip(site.site.subjects, site.moments, strict=True)
        stats = [InputStat(s.channels, m.mean, m.std) for s, m in pairs]
        wrapper = EqualizedInput(copy.deepcopy(original.get_submodule(site.site.layer)), stats)
        x = _layer_input(folded, site.site.layer, batches[0])
        with torch.no_grad():
            reference = wrapper(x)
            diff = folded.get_submodule(site.site.layer)(x) - reference
        pad = max(getattr(wrapper.layer, "padding", (0,)))
        inner = diff[..., pad : diff.shape[-2] - pad, pad : diff.shape[-1] - pad] if pad else diff
        assert inner.numel() > 0
        constant = inner.mean((0, -2, -1), keepdim=True)
        tolerance = 1e-4 * float(reference.abs().max())  # float32 convolutions of two weight layouts
        torch.testing.assert_close(inner, constant.expand_as(inner), rtol=0, atol=tolerance)


def _layer_input(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    try:
        _forward_batch_stats(model, x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("case", sorted(c for c in CASES if c not in NOT_FX))
@pytest.mark.parametrize("mode", ["fold", "insert"])
def test_save_load_round_trip_is_exact(case: str, mode: str, tmp_path: Path) -> None:
    if not _has_ok_site(case):
        pytest.skip("no equalizable site: nothing to calibrate and save")
    batches = _batches(case, 4)
    model = _build(case)
    result = calibrate(model, batches, CalibrationOptions(mode=mode, tolerance=0.5, min_batches=2))
    record = build_record(result, RecordSource(case, ""))
    path = save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), record)
    fresh = load(_build(case), path)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = _input(case, seed=5)
    torch.testing.assert_close(_forward_batch_stats(fresh, x), _forward_batch_stats(model, x), rtol=0, atol=0)
