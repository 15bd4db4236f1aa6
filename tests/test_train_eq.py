"""Equalization inside a training run: fold and insert, the record it leaves, resume, and --init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eqsurgeon.calibration import CalibrationOptions
from eqsurgeon.errors import CheckpointError
from eqsurgeon.io import read_state_dict, record_from_json
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
    record = record_from_json((tmp_path / "run" / "eq.json").read_text())
    assert record == result.eq and record.mode == "fold" and record.images == 8
    meta = record_from_json(read_state_dict(result.weights)[1]["eqsurgeon"])
    assert meta == result.eq and meta.equalized_sites
    for site in meta.equalized_sites:
        assert all(i.std > 0 and i.scale == pytest.approx(1 / i.std) for i in site.inputs)
    # the record's image normalization is on the 0–1 scale, like calibrate's
    assert meta.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert meta.image_std == pytest.approx((0.229, 0.224, 0.225))
    # fold mode keeps the model's keys: the checkpoint loads into a plain model
    weights, _ = read_state_dict(result.weights)
    assert not any(".equalizers." in k for k in weights)


def test_insert_mode_resumes_bit_exactly_and_evaluates(data: Path, tmp_path: Path) -> None:
    args = _eq(data, tmp_path / "full", "insert", "checkpoint.keep=3")
    full = train(load_config(DEMO_RECIPE, args))
    weights, _ = read_state_dict(full.weights)
    assert any(".equalizers." in k for k in weights)
    part = truncated_copy(tmp_path / "full", tmp_path / "part", after=2)
    resumed = train(load_config(DEMO_RECIPE, _eq(data, part, "insert", "checkpoint.keep=3")), resume=True)
    again, _ = read_state_dict(resumed.weights)
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
    assert plain.eq is not None and plain.eq.mode == "fold"


def test_verify_reads_a_trainer_checkpoint_like_a_calibrate_one(data: Path, tmp_path: Path) -> None:
    # Both record image mean/std on the 0–1 scale; verify once read the trainer's 0–255 values as 0–1
    # and reported a var_ratio of ~76 where the calibrate checkpoint gave ~1.
    from eqsurgeon import api

    trained = train(load_config(DEMO_RECIPE, _eq(data, tmp_path / "run", "fold", "schedule.iters=1")))
    options = api.DataOptions(input_size=(32, 32), batch_size=4, workers=0, device="cpu")
    kwargs = {"num_classes": 5}
    calibrated = api.calibrate(
        api.ModelRef(ZOO, kwargs), data / "images", out=tmp_path / "c.safetensors",
        options=CalibrationOptions(tolerance=1e-9), data_options=options,
    )  # fmt: skip
    from_trainer = api.verify(api.ModelRef(ZOO, kwargs, trained.weights), data / "images", options)
    from_calibrate = api.verify(api.ModelRef(ZOO, kwargs, calibrated.out), data / "images", options)
    ratios_t = [s.var_ratio for s in from_trainer.verification.sites]
    ratios_c = [s.var_ratio for s in from_calibrate.verification.sites]
    assert len(ratios_t) == len(ratios_c) == 2
    for rt, rc in zip(ratios_t, ratios_c, strict=True):
        assert rc < 1.05 and rt < 1.6 and abs(rt - rc) < 0.5, (ratios_t, ratios_c)
