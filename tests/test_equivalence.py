"""The captured graph computes what the eager model computes, and analysis changes nothing."""

import pytest
import torch

from eqsurgeon.api import MeasureOptions, analyze
from eqsurgeon.capture import capture
from fixtures.models import FIXTURES


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_graph_matches_eager(name, frontend, x32):
    model = FIXTURES[name]().eval()
    if name == "shape_dependent_if" and frontend == "fx":
        pytest.skip("fx cannot trace this fixture by design")
    cap = capture(model, x32, frontend)
    with torch.no_grad():
        expected = model(x32)
        got = cap.as_module()(x32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
    )


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("train", [True, False])
def test_analyze_leaves_model_bit_identical(name, train, x32):
    model = FIXTURES[name]().train(train)
    state, flags = _snapshot(model)
    result = analyze(model, [x32, x32 * 2], measure=MeasureOptions(bn_mode="batch")).analysis
    new_state, new_flags = _snapshot(model)
    assert new_flags == flags
    assert state.keys() == new_state.keys()
    for key in state:
        assert torch.equal(state[key], new_state[key]), key
    assert result.input.images == 4


def test_analyze_with_eval_bn_on_a_trained_model_keeps_running_stats(x32):
    model = FIXTURES["dropout_between"]()
    with torch.no_grad():
        model.train()(x32)  # BN has now tracked one batch
    model.eval()
    before = model.a[1].running_mean.clone()
    result = analyze(model, [x32]).analysis
    assert result.bn_mode == "eval"
    assert torch.equal(model.a[1].running_mean, before)
