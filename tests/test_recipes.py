"""The paper's recipes: each parses, matches the paper/MMSeg table written out below, and trains 2 steps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from eqsurgeon.training.config import load_config, load_config_text
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.drop_path import drop_path_rate
from eqsurgeon.training.evaluate import to_input
from eqsurgeon.training.losses import segmentation_loss
from eqsurgeon.training.model import build_model
from eqsurgeon.training.optim import build_optimizer, build_scheduler
from eqsurgeon.training.recipe_toml import config_to_dict, dump_toml
from eqsurgeon.training.transforms import PadCollate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "train" / "recipes"

# -- the expected table, written independently of train/make_recipes.py (paper §4 + the MMSeg configs)
# optimizer: (name, lr, weight decay, decay 1-d params?, no-decay name keys, stage-wise lr decay rate)
SWIN = ("adamw", 6e-5, 0.01, False, ["absolute_pos_embed", "relative_position_bias_table", "norm"], 1.0)
# mmseg's Twins configs also name 'pos_block', which matches no mmseg parameter (its PEG is
# 'position_encodings'): the position encodings decay there, so they decay here (test_parity_mmseg).
TWINS = ("adamw", 6e-5, 0.01, False, ["norm"], 1.0)
CONVNEXT = ("adamw", 1e-4, 0.05, True, [], 0.9)
RESNET = ("sgd", 0.01, 5e-4, False, [], 1.0)
# schedule: (warmup iterations, poly power, min lr); AMP
TRANSFORMER_SCHED = (1500, 1.0, 0.0)
RESNET_SCHED = (0, 0.9, 1e-4)
# dataset: (format, classes, crop (h, w), total batch, iterations)
ADE = ("ade20k", 150, [512, 512], 16, 160_000)
VOC = ("voc", 21, [512, 512], 16, 160_000)
CITY = ("cityscapes", 19, [512, 1024], 8, 80_000)

UPER = {  # backbone: (optimizer, drop-path rate, ConvNeXt num_layers)
    "swin_tiny": (SWIN, 0.3, 0), "swin_small": (SWIN, 0.3, 0), "swin_base": (SWIN, 0.3, 0),
    "twins_svt_small": (TWINS, 0.2, 0), "twins_svt_base": (TWINS, 0.2, 0),
    "twins_svt_large": (TWINS, 0.3, 0),
    "convnext_tiny": (CONVNEXT, 0.4, 6), "convnext_small": (CONVNEXT, 0.3, 12),
    "convnext_base": (CONVNEXT, 0.4, 12),
}  # fmt: skip
EXPECTED: dict[str, tuple] = {}
for _bb, (_opt, _dpr, _layers) in UPER.items():
    for _ds, _data in (("ade20k", ADE), ("voc12aug", VOC)):
        _amp = "fp16" if _opt is CONVNEXT else "none"
        _row = (f"upernet_{_bb}", _opt, TRANSFORMER_SCHED, _data, _amp, _dpr, _layers)
        EXPECTED[f"upernet_{_bb}_{_ds}"] = _row
for _head in ("fcn", "pspnet", "deeplabv3", "deeplabv3plus"):
    for _depth, _datasets in (("r101", (("cityscapes", CITY), ("ade20k", ADE))), ("r50", (("ade20k", ADE),))):
        for _ds, _data in _datasets:
            _name = f"{_head}_{_depth}_d8"
            EXPECTED[f"{_name}_{_ds}"] = (_name, RESNET, RESNET_SCHED, _data, "none", 0.0, 0)

PAPER = sorted(EXPECTED)
OFFLINE = ["model.kwargs.pretrained=false"]  # no network in tests: random backbone weights
# 4-13 s each on one CPU thread: one recipe per family runs by default, the rest in the slow tier.
FAST = ("upernet_swin_tiny_ade20k", "upernet_twins_svt_small_ade20k", "upernet_convnext_tiny_voc12aug",
        "pspnet_r50_d8_ade20k")  # fmt: skip


def _marks(name: str) -> list[pytest.MarkDecorator]:
    return [] if name in FAST else [pytest.mark.slow]


def test_every_paper_configuration_has_a_recipe() -> None:
    on_disk = {p.stem for p in RECIPES.glob("*.toml")} - {"demo"}
    assert on_disk == set(EXPECTED)
    assert len(EXPECTED) == 9 * 2 + 4 * 2 + 4  # Table 2: 9 backbones x 2 sets; Tables 3-4


def test_recipes_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_recipes", ROOT / "train" / "make_recipes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_recipes"] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["make_recipes"]
    assert module.main(["--check"]) == 0


@pytest.mark.parametrize("name", PAPER)
def test_resolved_recipe_matches_the_paper_table(name: str) -> None:
    cfg = load_config(RECIPES / f"{name}.toml")
    # compare the resolved config as the run folder dumps it, read back
    resolved = config_to_dict(load_config_text(dump_toml(cfg)))
    model, opt, sched, data, amp, dpr, layers = EXPECTED[name]
    o, s, d, r = resolved["optim"], resolved["schedule"], resolved["data"], resolved["run"]
    assert resolved["model"]["name"] == model
    assert resolved["model"]["kwargs"] == {"num_classes": data[1], "pretrained": True}  # ImageNet-1K
    assert resolved["model"]["drop_path_rate"] == dpr
    assert (o["name"], o["lr"], o["weight_decay"], o["no_decay_norm_bias"]) == opt[:4]
    assert sorted(o["no_decay_names"]) == sorted(opt[4])
    assert o["layer_decay_rate"] == opt[5] and o["layer_decay_num_layers"] == layers
    if o["name"] == "adamw":
        assert o["betas"] == [0.9, 0.999]
    else:
        assert o["momentum"] == 0.9
    assert (s["warmup_iters"], s["power"], s["min_lr"]) == sched
    if s["warmup_iters"]:
        assert s["warmup_ratio"] == 1e-6  # LinearLR start_factor
    assert (d["format"], d["num_classes"], d["crop_size"]) == tuple(data[:3])
    assert d["batch_size"] * r["gpus"] == data[3] and r["gpus"] == 4  # stated per GPU, paper's 4 GPUs
    assert s["iters"] == data[4]
    assert d["ratio_range"] == [0.5, 2.0] and d["cat_max_ratio"] == 0.75
    assert d["scale"] == ([2048, 1024] if data[0] == "cityscapes" else [2048, 512])
    assert r["amp"] == amp
    assert resolved["loss"] == {"aux_weight": 0.4, "average": "all"}
    assert resolved["eq"]["mode"] == "none"


def test_stage_wise_decay_on_the_convnext_recipe() -> None:
    groups = _param_groups("upernet_convnext_tiny_ade20k")
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    wd_of = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    # num_layers 6 + 2 = 8: stem/downsamples 0.9^7, stage i 0.9^(6 - i), head and out norms 1
    assert lr_of["backbone.body.stem_0.weight"] == pytest.approx(1e-4 * 0.9**7)
    assert lr_of["backbone.body.stages_1.downsample.1.weight"] == pytest.approx(1e-4 * 0.9**7)
    assert lr_of["backbone.body.stages_0.blocks.0.conv_dw.weight"] == pytest.approx(1e-4 * 0.9**6)
    assert lr_of["backbone.body.stages_3.blocks.2.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.9**3)
    assert lr_of["decode_head.fpn_bottleneck.conv.weight"] == pytest.approx(1e-4)
    assert groups[0]["lr"] == pytest.approx(1e-4)  # the logged lr is the recipe's
    assert wd_of["backbone.body.stages_0.blocks.0.gamma"] == 0.0
    assert wd_of["decode_head.fpn_bottleneck.bn.bias"] == 0.0
    assert wd_of["decode_head.fpn_bottleneck.conv.weight"] == 0.05


def test_swin_recipe_decays_biases_but_not_norms_or_position_tables() -> None:
    groups = _param_groups("upernet_swin_tiny_ade20k")
    wd_of = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    table = next(n for n in wd_of if "relative_position_bias_table" in n)
    assert wd_of[table] == 0.0
    assert wd_of["backbone.body.layers_0.blocks.0.norm1.weight"] == 0.0
    assert wd_of["backbone.out_norms.0.bias"] == 0.0
    assert wd_of["backbone.body.layers_0.blocks.0.attn.qkv.bias"] == 0.01  # MMSeg: only custom_keys exempt
    assert wd_of["decode_head.fpn_bottleneck.bn.weight"] == 0.01  # ConvModule's BN is named "bn"


def test_resnet_recipe_decays_every_parameter() -> None:
    cfg = load_config(RECIPES / "pspnet_r50_d8_ade20k.toml", OFFLINE)
    with torch.device("meta"):
        model = build_model(cfg.model)
    groups = build_optimizer(model, cfg.optim).param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4]
    assert type(build_optimizer(model, cfg.optim)).__name__ == "SGD"


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in PAPER])
def test_recipe_builds_and_trains_two_iterations(name: str) -> None:
    """The recipe's model, optimizer, schedule, loss and AMP setting, 2 steps at 64x64 on synthetic data."""
    torch.manual_seed(0)
    cfg = load_config(
        RECIPES / f"{name}.toml",
        [
            *OFFLINE,
            'data.format="synthetic"',
            "data.crop_size=[64, 64]",
            "data.batch_size=2",
            "schedule.iters=2",
        ],
    )
    model = build_model(cfg.model)
    assert drop_path_rate(model) == pytest.approx(cfg.model.drop_path_rate)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr)
    # fp16 autocast is a GPU feature; on CPU the ConvNeXt recipes run their (same) fp32 graph
    train_set, _ = make_datasets(cfg)
    before = [p.detach().clone() for p in model.decode_head.parameters()]
    collate = PadCollate(cfg.data.crop_size, cfg.data.ignore_index)
    for step in range(2):
        batch = collate([train_set[(0, 2 * step + i)] for i in range(2)])
        x = to_input(batch.images, cfg.data, sizes=batch.sizes)
        loss = segmentation_loss(
            model(x), batch.masks.long(), cfg.data.ignore_index, cfg.loss.aux_weight, cfg.loss.average
        )
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.decode_head.parameters(), strict=True))
    if cfg.schedule.warmup_iters:  # still warming up (mmengine's LinearLR spans end - begin - 1 = 1499 steps)
        expected = cfg.optim.lr * (1e-6 + (1 - 1e-6) * 2 / 1499)
    else:  # poly 0.9 from lr to min_lr over the (full-length) schedule: 2 of 2 iterations done
        expected = cfg.schedule.min_lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)


def _param_groups(recipe: str) -> list[dict]:
    """The optimizer parameter groups a recipe builds, on the meta device (no weights, no compute)."""
    cfg = load_config(RECIPES / f"{recipe}.toml", OFFLINE)
    with torch.device("meta"):
        model = build_model(cfg.model)
    return build_optimizer(model, cfg.optim).param_groups
