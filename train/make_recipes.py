"""Write train/recipes/<row>.toml for every configuration of the paper's Tables 2-4, from one table.

    python train/make_recipes.py            # rewrite the recipes (commit them)
    python train/make_recipes.py --check    # exit 1 if a committed recipe differs from this table

Each row mirrors the MMSegmentation config named in its header comment; tests/test_recipes.py checks the
result against an independently written table of the paper's settings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"
_MMSEG = "https://github.com/open-mmlab/mmsegmentation/blob/main/configs/"


@dataclass(frozen=True)
class Family:
    """Optimizer and schedule shared by one backbone family."""

    optim: dict[str, object]
    schedule: dict[str, object]
    amp: str = "none"
    eval_mode: str = "whole"


_WARMUP_POLY = {"warmup_iters": 1500, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0}
FAMILIES = {
    # custom_keys decay_mult=0: norms and position tables; biases and the head's BN ("bn") still decay.
    "swin": Family(
        {"name": "adamw", "lr": 6e-5, "weight_decay": 0.01, "betas": [0.9, 0.999],
         "no_decay_norm_bias": False,
         "no_decay_names": ["absolute_pos_embed", "relative_position_bias_table", "norm"]},
        _WARMUP_POLY,
    ),
    # The mmseg configs also list 'pos_block', but mmseg's Twins names its position encodings
    # 'position_encodings', so that key matches nothing there and they decay; timm calls them pos_block.
    "twins": Family(
        {"name": "adamw", "lr": 6e-5, "weight_decay": 0.01, "betas": [0.9, 0.999],
         "no_decay_norm_bias": False, "no_decay_names": ["norm"]},
        _WARMUP_POLY,
    ),
    # AmpOptimWrapper (fp16, dynamic loss scale); LearningRateDecayOptimizerConstructor stage_wise 0.9.
    "convnext": Family(
        {"name": "adamw", "lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.999],
         "no_decay_norm_bias": True, "layer_decay_rate": 0.9},
        _WARMUP_POLY, amp="fp16", eval_mode="slide",
    ),
    # schedule_80k/160k: SGD, PolyLR power 0.9 down to eta_min 1e-4, no warmup, no paramwise rules.
    "resnet": Family(
        {"name": "sgd", "lr": 0.01, "weight_decay": 5e-4, "momentum": 0.9, "no_decay_norm_bias": False},
        {"warmup_iters": 0, "power": 0.9, "min_lr": 1e-4},
    ),
}

DATASETS = {
    # name: format, classes, crop (h, w), resize scale, total batch, iterations (paper: 160K/80K)
    "ade20k": ("ade20k", 150, (512, 512), (2048, 512), 16, 160_000),
    "voc12aug": ("voc", 21, (512, 512), (2048, 512), 16, 160_000),
    "cityscapes": ("cityscapes", 19, (512, 1024), (2048, 1024), 8, 80_000),
}
GPUS = 4  # the paper trained on a 4-GPU machine with SyncBN


@dataclass(frozen=True)
class Row:
    """One paper configuration: a zoo model on a dataset, with the numbers the paper reports."""

    model: str
    family: str
    dataset: str
    table: str
    label: str  # the paper's row label
    drop_path: float
    mmseg: str
    num_layers: int = 0  # ConvNeXt's stage-wise decay paramwise_cfg num_layers


def rows() -> list[Row]:
    """Every paper configuration, Table 2 then 3 then 4."""
    out = []
    swin = "swin/swin-{}-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py"
    twins = "twins/twins_svt-{}_uperhead_8xb2-160k_ade20k-512x512.py"
    convnext = "convnext/convnext-{}_upernet_8xb2-amp-160k_ade20k-512x512.py"
    uper = [  # zoo key, family, paper label, drop-path rate, MMSeg config, ConvNeXt num_layers
        ("swin_tiny", "swin", "Swin-T", 0.3, swin.format("tiny"), 0),
        ("swin_small", "swin", "Swin-S", 0.3, swin.format("small"), 0),
        ("swin_base", "swin", "Swin-B", 0.3, swin.format("base"), 0),
        ("twins_svt_small", "twins", "Twins-SVT-S", 0.2, twins.format("s"), 0),
        ("twins_svt_base", "twins", "Twins-SVT-B", 0.2, twins.format("b"), 0),
        ("twins_svt_large", "twins", "Twins-SVT-L", 0.3, twins.format("l"), 0),
        ("convnext_tiny", "convnext", "ConvNeXt-T", 0.4, convnext.format("tiny"), 6),
        ("convnext_small", "convnext", "ConvNeXt-S", 0.3, convnext.format("small"), 12),
        ("convnext_base", "convnext", "ConvNeXt-B", 0.4, convnext.format("base"), 12),
    ]
    for dataset in ("ade20k", "voc12aug"):
        for key, family, label, dpr, cfg, layers in uper:
            out.append(Row(f"upernet_{key}", family, dataset, "Table 2", label, dpr, cfg, layers))
    heads = [("fcn", "FCNHead", "fcn/fcn"), ("pspnet", "PSPHead", "pspnet/pspnet"),
             ("deeplabv3", "ASPPHead", "deeplabv3/deeplabv3"),
             ("deeplabv3plus", "SepASPPHead", "deeplabv3plus/deeplabv3plus")]  # fmt: skip
    d8 = (("r101", ("cityscapes", "ade20k"), "Table 3"), ("r50", ("ade20k",), "Table 4"))
    for depth, datasets, table in d8:
        for dataset in datasets:
            suffix = "4xb2-80k_cityscapes-512x1024" if dataset == "cityscapes" else "4xb4-160k_ade20k-512x512"
            for head, label, cfg in heads:
                out.append(
                    Row(f"{head}_{depth}_d8", "resnet", dataset, table, label, 0.0,
                        f"{cfg}_{depth}-d8_{suffix}.py")
                )  # fmt: skip
    return out


def recipe_name(row: Row) -> str:
    """The recipe's file stem, e.g. ``upernet_swin_tiny_ade20k``."""
    return f"{row.model}_{row.dataset}"


def render(row: Row) -> str:
    """The recipe TOML of one row."""
    fam = FAMILIES[row.family]
    fmt, classes, crop, scale, total, iters = DATASETS[row.dataset]
    per_gpu = total // GPUS
    interval = iters // 10  # MMSeg evaluates and saves every 16k (160k) / 8k (80k) iterations
    optim = dict(fam.optim)
    if row.num_layers:
        optim["layer_decay_num_layers"] = row.num_layers
    schedule = {"iters": iters, **fam.schedule}
    lines = [
        f"# {row.table} of the paper, {row.label} on {row.dataset}.",
        "# Generated by train/make_recipes.py: edit the table there, not this file.",
        f"# Mirrors MMSegmentation's {_MMSEG}{row.mmseg}",
        f"# Total batch {total} = {per_gpu} per GPU x {GPUS} GPUs (the paper's machine): train/README.md",
        "",
        "[model]",
        f'name = "{row.model}"',
        "# The paper fine-tunes ImageNet-1K backbones: timm's weights (network), or backbone_weights = FILE;",
        "# --set model.kwargs.pretrained=false trains from scratch (tests, smoke runs).",
        f"kwargs = {{ num_classes = {classes}, pretrained = true }}",
        f"drop_path_rate = {row.drop_path}",
        "",
        "[data]",
        f'format = "{fmt}"',
        f"num_classes = {classes}",
        f"crop_size = [{crop[0]}, {crop[1]}]",
        f"scale = [{scale[0]}, {scale[1]}]",
        "ratio_range = [0.5, 2.0]",
        "cat_max_ratio = 0.75",
        f"batch_size = {per_gpu}",
        "workers = 4",
        "",
        "[optim]",
        *(f"{k} = {_toml(v)}" for k, v in optim.items()),
        "",
        "[schedule]",
        *(f"{k} = {_toml(v)}" for k, v in schedule.items()),
        "",
        "[loss]",
        "aux_weight = 0.4",
        'average = "all"',
        "",
        "[eval]",
        f"interval = {interval}",
        'split = "val"',
        f"scale = [{scale[0]}, {scale[1]}]",
        f'mode = "{fam.eval_mode}"',
        *(["crop_size = [512, 512]", "stride = [341, 341]"] if fam.eval_mode == "slide" else []),
        "",
        "[checkpoint]",
        f"interval = {interval}",
        "keep = 3",
        "",
        "[eq]",
        'mode = "none"  # the paper\'s w/o Scale EQ; "fold" (or "insert") is w/ Scale EQ',
        "",
        "[run]",
        f'out = "runs/{recipe_name(row)}"',
        f'amp = "{fam.amp}"',
        f"gpus = {GPUS}",
        "log_interval = 50",
        "",
    ]
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def main(argv: list[str]) -> int:
    """Write (or with ``--check`` compare) every recipe; returns the exit code."""
    stale = []
    for row in rows():
        path = RECIPES / f"{recipe_name(row)}.toml"
        text = render(row)
        if "--check" in argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python train/make_recipes.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
