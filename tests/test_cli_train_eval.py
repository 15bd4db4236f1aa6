"""The train, eval and demo-data commands: outputs and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._train_helpers import DEMO_RECIPE, as_sets, quick
from tests.conftest import assert_input_error, run_cli

run = run_cli


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(images=6, size=32)


def test_demo_data_writes_images_and_masks(tmp_path: Path) -> None:
    result = run("demo-data", tmp_path / "d", "--images", 6, "--size", 32)
    assert result.exit_code == 0 and "wrote 6 images of 32x32 with 5 classes" in result.output
    images, masks = (sorted((tmp_path / "d" / sub).iterdir()) for sub in ("images", "masks"))
    assert len(images) == len(masks) == 6


def test_demo_data_refuses_a_non_empty_folder(data: Path) -> None:
    assert_input_error(run("demo-data", data), "exists and is not empty", "--force")


def test_train_then_eval_prints_miou(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = quick(data, out, "schedule.iters=4", "eval.interval=0", model="upernet_tiny")
    result = run("train", DEMO_RECIPE, "--data", data, "--out", out, "--seed", 3, *as_sets(sets[3:]))
    assert result.exit_code == 0, result.output
    assert "run summary" in result.output and "per-class IoU" in result.output
    assert "stripes/warm" in result.output  # class names from the recipe
    assert (out / "config.toml").read_text().count("seed = 3") == 1
    summary = json.loads((out / "summary.json").read_text())
    evaluated = run("eval", DEMO_RECIPE, "--checkpoint", summary["weights"], "--data", data,
                    *as_sets(sets[3:]))  # same eval settings (max_images) as the run
    assert evaluated.exit_code == 0, evaluated.output
    assert f"mIoU {100 * summary['mIoU']:.2f}" in evaluated.output


def test_train_input_errors_are_one_line(data: Path, tmp_path: Path) -> None:
    assert_input_error(run("train", DEMO_RECIPE, "--set", "optim.weight_decy=1", "--data", data),
                       "--set: unknown key optim.weight_decy", "did you mean optim.weight_decay")
    assert_input_error(run("train", DEMO_RECIPE, "--data", tmp_path, "--out", tmp_path / "r"),
                       "images is missing", "DIR/images")
    assert not (tmp_path / "r").exists()  # a start that failed on bad input leaves no run folder
    assert_input_error(run("train", DEMO_RECIPE, "--data", data, "--out", tmp_path / "none", "--resume"),
                       "nothing to resume")
    assert_input_error(run("eval", DEMO_RECIPE, "--checkpoint", tmp_path / "x.safetensors", "--data", data),
                       "does not exist")
