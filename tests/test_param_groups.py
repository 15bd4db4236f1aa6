"""Per-parameter optimizer rules (no-decay names, ConvNeXt stage-wise lr decay) and the drop-path key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from eqsurgeon.errors import RecipeError
from eqsurgeon.training.config import ModelConfig, OptimConfig, load_config
from eqsurgeon.training.drop_path import drop_path_rate, set_drop_path_rate
from eqsurgeon.training.loop import train
from eqsurgeon.training.model import build_model
from eqsurgeon.training.optim import build_optimizer
from eqsurgeon.training.param_groups import convnext_stage_id, param_groups


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.pos_block = nn.Conv2d(4, 4, 3)


def _wd(groups: list[dict], module: nn.Module) -> dict[str, float]:
    ids = {id(p): n for n, p in module.named_parameters()}
    return {ids[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}


def test_no_decay_names_exempt_by_substring_and_keep_biases_decaying() -> None:
    toy = _Toy()
    cfg = OptimConfig(weight_decay=0.01, no_decay_norm_bias=False, no_decay_names=("norm", "pos_block"))
    wd = _wd(build_optimizer(toy, cfg).param_groups, toy)
    assert wd == {
        "proj.weight": 0.01, "proj.bias": 0.01, "norm.weight": 0.0, "norm.bias": 0.0,
        "pos_block.weight": 0.0, "pos_block.bias": 0.0,
    }  # fmt: skip


def test_without_new_keys_the_optimizer_is_unchanged() -> None:
    toy = _Toy()
    wd = _wd(build_optimizer(toy, OptimConfig(weight_decay=0.01)).param_groups, toy)
    assert wd["proj.weight"] == 0.01 and wd["proj.bias"] == 0.0 and wd["pos_block.weight"] == 0.01


def test_convnext_stage_ids_follow_mmseg() -> None:
    n = 12 + 2
    assert convnext_stage_id("backbone.body.stem_1.bias", n) == 0
    assert convnext_stage_id("backbone.body.stages_3.downsample.1.weight", n) == 0
    assert convnext_stage_id("backbone.body.stages_0.blocks.2.mlp.fc2.weight", n) == 1
    assert convnext_stage_id("backbone.body.stages_3.blocks.0.gamma", n) == 4
    assert convnext_stage_id("backbone.out_norms.3.weight", n) == n - 1
    assert convnext_stage_id("auxiliary_head.conv_seg.weight", n) == n - 1


def test_layer_decay_scales_lr_per_stage_on_a_real_model() -> None:
    model = build_model(ModelConfig(name="upernet_tiny", kwargs={"num_classes": 3}))
    cfg = OptimConfig(lr=1.0, layer_decay_rate=0.5, layer_decay_num_layers=6)
    groups = param_groups(model, cfg)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["backbone.body.stem_0.weight"] == pytest.approx(0.5**7)
    assert lr["backbone.body.stages_1.blocks.0.conv_dw.weight"] == pytest.approx(0.5**5)
    assert lr["decode_head.conv_seg.weight"] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each param once
    assert groups[0]["lr"] == 1.0


def test_drop_path_rate_rescales_and_rejects_impossible_values() -> None:
    model = nn.Sequential(DropPath(0.1), DropPath(0.2), nn.Identity())
    assert drop_path_rate(set_drop_path_rate(model, 0.3)) == pytest.approx(0.3)
    assert model[0].drop_prob == pytest.approx(0.15)
    with pytest.raises(RecipeError, match=r"\[0, 1\)"):
        set_drop_path_rate(model, 1.5)
    with pytest.raises(RecipeError, match="without drop path"):
        set_drop_path_rate(nn.Linear(2, 2), 0.2)
    assert drop_path_rate(set_drop_path_rate(nn.Linear(2, 2), 0.0)) == 0.0


def test_a_run_with_layer_decay_checkpoints_and_resumes(tmp_path: Path) -> None:
    """The optimizer state of per-stage groups saves and loads (weights_only) across --resume."""
    sets = [
        "model.name=upernet_tiny", "model.kwargs.num_classes=4", 'data.format="synthetic"',
        "data.num_classes=4", "data.crop_size=[32, 32]", "data.batch_size=2", "data.workers=0",
        "optim.layer_decay_rate=0.9", "optim.layer_decay_num_layers=6", 'optim.no_decay_names=["norm"]',
        "schedule.iters=2", "schedule.warmup_iters=1", "checkpoint.interval=1", "eval.interval=0",
        "eval.max_images=2", "eval.scale=[]", f'run.out="{tmp_path / "run"}"', 'run.device="cpu"',
    ]  # fmt: skip
    full = train(load_config(None, sets))
    final = {k: v.clone() for k, v in full.model.state_dict().items()}
    for f in (tmp_path / "run").glob("ckpt_0000002.*"):  # as if killed after iteration 1's checkpoint
        f.unlink()
    resumed = train(load_config(None, sets), resume=True)  # loads the per-stage optimizer state
    assert resumed.iterations == 2
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, final[k]), k
