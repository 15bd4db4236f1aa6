"""Equalization inside a training run: fold and insert, the record it leaves, resume, and --init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eqsurgeon.errors import CheckpointError
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training.checkpoint import load_weights
from eqsurgeon.training.config import load_config
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.evaluate import evaluate_checkpoint
from eqsurgeon.training.loop import train
from tests._train_helpers import DEMO_RECIPE, quick, truncated_copy

ZOO = "upernet_tiny"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("eq") / "demo", images=8, size=32)


def _eq(data: Path, out: Path, mode: str, *extra: str) -> list[str]:
    return quick(data, out, f"eq.mode={mode}", "eq.images=8", "eq.batch_size=4", "eq.tolerance=1e-9",
                 "schedule.iters=4", *extra, model=ZOO)


def test_fold_in_the_loop_records_what_it_applied(data: Path, tmp_path: Path) -> None:
    result = train(load_config(DEMO_RECIPE, _eq(data, tmp_path / "run", "fold")))
    record = json.loads((tmp_path / "run" / "eq.json").read_text())
    assert record == result.eq and record["mode"] == "fold" and record["images"] == 8
    meta = CalibrationRecord.from_json(load_weights(result.weights)[1]["eqsurgeon"])
    assert meta.equalized_sites and meta.mode == "fold"
    for site in meta.equalized_sites:
        assert all((i.std > 0 and i.scale == pytest.approx(min(j.std for j in site.inputs) / i.std))
                   or i.scale > 0 for i in site.inputs)
    # fold mode keeps the model's keys: the checkpoint loads into a plain model
    weights, _ = load_weights(result.weights)
    assert not any(".equalizers." in k for k in weights)


def test_insert_mode_resumes_bit_exactly_and_evaluates(data: Path, tmp_path: Path) -> None:
    args = _eq(data, tmp_path / "full", "insert", "checkpoint.keep=3")
    full = train(load_config(DEMO_RECIPE, args))
    weights, _ = load_weights(full.weights)
    assert any(".equalizers." in k for k in weights)
    part = truncated_copy(tmp_path / "full", tmp_path / "part", after=2)
    resumed = train(load_config(DEMO_RECIPE, _eq(data, part, "insert", "checkpoint.keep=3")), resume=True)
    again, _ = load_weights(resumed.weights)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    metrics = evaluate_checkpoint(load_config(DEMO_RECIPE, args), full.weights)
    assert metrics.miou == pytest.approx(full.metrics.miou)


def test_init_from_an_equalized_checkpoint_is_not_equalized_twice(data: Path, tmp_path: Path) -> None:
    first = train(load_config(DEMO_RECIPE, _eq(data, tmp_path / "a", "fold", "schedule.iters=2")))
    again = _eq(data, tmp_path / "b", "fold", f'model.init="{first.weights}"')
    with pytest.raises(CheckpointError, match="already equalized"):
        train(load_config(DEMO_RECIPE, again))
    # Training it as is keeps the record of what was applied.
    plain = train(load_config(DEMO_RECIPE, [*again, "eq.mode=none", "run.out=" + f'"{tmp_path / "c"}"']))
    assert plain.eq is not None and plain.eq["mode"] == "fold"
