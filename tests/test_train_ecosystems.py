"""The trainer takes any model the other commands take: one output parser, None in recipes, and a few
iterations of a transformers folder model and an smp model (with its classification head)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eqsurgeon.errors import ModelLoadError
from eqsurgeon.outputs import split_outputs
from eqsurgeon.training.config import factory_kwargs, load_config, load_config_text
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.loop import train
from eqsurgeon.training.recipe_toml import dump_toml
from tests._ecosystems import save_hf
from tests._train_helpers import DEMO_RECIPE, quick


def test_one_parser_reads_every_output_form() -> None:
    from transformers.modeling_outputs import SemanticSegmenterOutput

    main, aux = torch.zeros(2, 5, 8, 8), torch.ones(2, 5, 8, 8)
    hf = SemanticSegmenterOutput(logits=main)
    assert isinstance(hf, dict) and split_outputs(hf) == (main, None)  # a dict, read by .logits
    assert split_outputs({"out": main, "aux": aux}) == (main, aux)
    assert split_outputs((main, aux)) == (main, aux)
    smp_mask_and_label = (main, torch.zeros(2, 4))  # smp with aux_params: (mask, class logits)
    assert split_outputs(smp_mask_and_label) == (main, None)
    with pytest.raises(ModelLoadError, match="cannot find logits in a forward output of type str"):
        split_outputs("logits")


def test_recipes_spell_none_as_a_table() -> None:
    cfg = load_config(DEMO_RECIPE, ["model.kwargs.encoder_weights={ none = true }"])
    assert cfg.model.kwargs["encoder_weights"] == {"none": True}
    assert factory_kwargs(cfg.model.kwargs)["encoder_weights"] is None
    assert load_config_text(dump_toml(cfg)) == cfg  # the resolved config.toml keeps the spelling


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("train") / "demo", images=8, size=32)


def test_trains_a_transformers_folder_on_new_classes(data: Path, tmp_path: Path) -> None:
    folder = save_hf("segformer", tmp_path / "segformer", processor=False)  # 3 classes; the data has 5
    new_head = "model.kwargs={ num_labels = 5, ignore_mismatched_sizes = true }"
    overrides = quick(data, tmp_path / "run", new_head, model=str(folder))
    cfg = load_config(DEMO_RECIPE, overrides)
    result = train(cfg)
    assert result.iterations == 6 and result.best_miou is not None
    assert torch.isfinite(next(result.model.parameters())).all()


def test_trains_an_smp_model_with_a_classification_head(data: Path, tmp_path: Path) -> None:
    kwargs = (
        "model.kwargs={ encoder_name = 'resnet18', encoder_depth = 3, decoder_channels = [32, 16, 8], "
        "classes = 5, encoder_weights = { none = true }, aux_params = { classes = 5 } }"
    )
    unet = "segmentation_models_pytorch:Unet"
    cfg = load_config(DEMO_RECIPE, quick(data, tmp_path / "run", kwargs, model=unet))
    result = train(cfg)
    assert result.iterations == 6 and result.best_miou is not None
