"""Per-parameter optimizer settings of the paper's recipes: which weights decay, and ConvNeXt's lr decay.

MMSegmentation's recipes differ in both:

- Swin and Twins (``paramwise_cfg.custom_keys``): no weight decay where the name contains ``norm`` or a
  position table (``relative_position_bias_table``/``absolute_pos_embed``; Twins' ``pos_block``). Biases
  and the decode head's BN (named ``bn``) still decay.
- ConvNeXt (``LearningRateDecayOptimizerConstructor``, ``stage_wise``): no weight decay on 1-d parameters
  and biases; the backbone lr shrinks by ``decay_rate`` per stage towards the stem.
- ResNet (default constructor): every parameter decays.

The first two are ``optim.no_decay_names`` and ``optim.layer_decay_*``; the trainer's
``optim.no_decay_norm_bias`` covers the 1-d rule.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from eqsurgeon.training.config import OptimConfig

# The trainer's built-in no-decay names, applied with ``no_decay_norm_bias`` (kept in step with optim.py).
_BUILTIN_NO_DECAY = ("pos_embed", "position_bias_table", "absolute_pos_embed", "cls_token")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Parameter groups with their weight decay and lr (``cfg.lr`` × stage scale), head groups first.

    Groups keep their lr scale under ``lr_scale`` so a reader (or a test) can see it.

    >>> groups = param_groups(nn.Sequential(nn.Linear(2, 2)), OptimConfig(no_decay_norm_bias=False))
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(2, 0.01)]
    """
    num_layers = cfg.layer_decay_num_layers + 2 if cfg.layer_decay_num_layers else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not _exempt(name, p.ndim, cfg)
        layer = convnext_stage_id(name, num_layers) if num_layers else 0
        scale = cfg.layer_decay_rate ** (num_layers - layer - 1) if num_layers else 1.0
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr": cfg.lr * scale,
                "lr_scale": scale,
            },
        )
        group["params"].append(p)
        group["param_names"].append(name)
    # Largest lr first: the trainer logs param_groups[0]["lr"], which should be the recipe's lr.
    return sorted(groups.values(), key=lambda g: (-g["lr_scale"], -g["weight_decay"]))


def convnext_stage_id(name: str, num_layers: int) -> int:
    """MMSeg's ``get_stage_id_for_convnext`` on this package's names (timm ConvNeXt in ``backbone.body``).

    The stem and every downsampling layer are stage 0, the blocks of stage i are i + 1, everything else
    (decode heads, the backbone's output norms) is ``num_layers - 1``, i.e. lr scale 1.

    >>> [convnext_stage_id(n, 8) for n in ("backbone.body.stem_0.weight",
    ...     "backbone.body.stages_2.downsample.1.weight", "backbone.body.stages_2.blocks.0.gamma",
    ...     "decode_head.conv_seg.weight")]
    [0, 0, 3, 7]
    """
    if re.match(r"backbone\.body\.stem[._]", name):
        return 0
    match = re.match(r"backbone\.body\.stages[._](\d+)\.(downsample|blocks)\.", name)
    if match:
        return 0 if match.group(2) == "downsample" else int(match.group(1)) + 1
    return num_layers - 1


def _exempt(name: str, ndim: int, cfg: OptimConfig) -> bool:
    if cfg.no_decay_norm_bias and (ndim <= 1 or any(k in name for k in _BUILTIN_NO_DECAY)):
        return True
    return any(k in name for k in cfg.no_decay_names)
