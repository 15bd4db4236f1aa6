"""Recipe loading: every key typed and checked, overrides, and the resolved dump reads back the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from eqsurgeon.errors import RecipeError
from eqsurgeon.training.config import TrainConfig, load_config, load_config_text
from eqsurgeon.training.recipe_toml import dump_toml

DEMO = Path(__file__).parents[1] / "train" / "recipes" / "demo.toml"


def test_demo_recipe_parses_and_round_trips() -> None:
    cfg = load_config(DEMO)
    assert cfg.model.name == "upernet_tiny" and cfg.data.num_classes == 5
    assert cfg.eval.scale is None and cfg.data.crop_size == (64, 64)
    assert load_config_text(dump_toml(cfg)) == cfg


def test_overrides_are_typed_toml_values() -> None:
    cfg = load_config(DEMO, ["optim.lr=1e-4", "data.crop_size=[32, 48]", "model.kwargs.num_classes=7",
                             "model.name=tests/x.py:f", "run.amp=bf16"])
    assert cfg.optim.lr == 1e-4 and cfg.data.crop_size == (32, 48)
    assert cfg.model.kwargs == {"num_classes": 7} and cfg.model.name == "tests/x.py:f"
    assert cfg.run.amp == "bf16"
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # an int where a float goes is fine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[optim]\nlearning_rate = 0.1", r"unknown key optim.learning_rate; keys are"),
        ("[optim]\nlrr = 0.1", r"unknown key optim.lrr; did you mean optim.lr\?"),
        ("[optimizer]\nlr = 0.1", r"unknown table \[optimizer\]"),
        ("[schedule]\niters = '100'", r"schedule.iters must be int, got '100'"),
        ("[schedule]\niters = 1.5", r"schedule.iters must be int"),
        ("[run]\nchannels_last = 1", r"run.channels_last must be bool"),
        ("[data]\ncrop_size = [512]", r"data.crop_size must have 2 items"),
        ("[eq]\nmode = 'folded'", r"eq.mode = 'folded'; choose one of none, fold, insert"),
        ("[model]\nkwargs = 5", r"model.kwargs must be a table"),
        ("[run\nseed = 1", r"is not valid TOML"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_config(path)


def test_bad_override_and_missing_recipe() -> None:
    with pytest.raises(RecipeError, match=r"must look like section\.key=value"):
        load_config(None, ["lr=0.1"])
    with pytest.raises(RecipeError, match=r"unknown key run\.sed"):
        load_config(None, ["run.sed=1"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_config(Path("no/such/recipe.toml"))


def test_defaults_follow_mmseg() -> None:
    cfg = TrainConfig()
    assert cfg.data.ratio_range == (0.5, 2.0) and cfg.data.cat_max_ratio == 0.75
    assert cfg.loss.aux_weight == 0.4 and cfg.loss.average == "all"
    assert cfg.data.ignore_index == 255


def test_calibration_options_are_checked_at_load_in_recipe_words() -> None:
    # CalibrationOptions speaks its own words (tolerance=...); the recipe loader names eq.tolerance.
    with pytest.raises(RecipeError, match=r"eq\.tolerance = 0\.0 is out of range") as bad:
        load_config(None, ['eq.mode="fold"', "eq.tolerance=0"])
    assert "--tolerance" not in str(bad.value) and "tolerance=" not in str(bad.value)
    with pytest.raises(RecipeError, match=r"eq\.bias_correction = 'maybe'"):
        load_config(None, ['eq.mode="fold"', 'eq.bias_correction="maybe"'])
    with pytest.raises(RecipeError, match=r"eq\.tolerance = 0\.0 is out of range"):  # checked even if unused
        load_config(None, ["eq.tolerance=0"])
