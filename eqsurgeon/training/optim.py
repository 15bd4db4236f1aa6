"""Optimizer and learning-rate schedule of a recipe (MMSeg's AdamW/SGD with linear warmup + poly decay)."""

from __future__ import annotations

import torch
from torch import nn

from eqsurgeon.training.config import OptimConfig, ScheduleConfig

# Parameter names MMSeg's recipes exempt from weight decay besides norms and biases.
NO_DECAY_NAMES = ("pos_embed", "position_bias_table", "absolute_pos_embed", "cls_token")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters, norms/biases/position tables without weight decay.

    >>> opt = build_optimizer(nn.Linear(2, 2), OptimConfig(lr=0.1))
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.01, 0.0]
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES)
        (no_decay if cfg.no_decay_norm_bias and exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.no_decay_names or cfg.layer_decay_num_layers:  # the paper recipes' per-parameter rules
        from eqsurgeon.training.param_groups import param_groups

        groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(iteration: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """Multiplier of the base lr at ``iteration``: linear warmup from ``warmup_ratio``, then poly decay.

    The recipes' mmengine schedule, ``LinearLR(begin=0, end=W)`` then ``PolyLR(begin=W, end=N,
    eta_min=min_lr)``, in closed form. mmengine runs each over ``end - begin - 1`` steps: the warmup reaches
    the full lr at iteration W − 1, stays there at W, and the decay reaches ``min_lr`` at the last
    iteration N − 1.

    >>> cfg = ScheduleConfig(iters=11, warmup_iters=3, warmup_ratio=0.0, power=1.0)
    >>> [round(lr_factor(i, cfg, 1.0), 3) for i in (0, 1, 2, 3, 6, 10)]
    [0.0, 0.5, 1.0, 1.0, 0.571, 0.0]
    """
    if iteration < cfg.warmup_iters:
        return cfg.warmup_ratio + (1 - cfg.warmup_ratio) * iteration / max(cfg.warmup_iters - 1, 1)
    span = max(cfg.iters - cfg.warmup_iters - 1, 1)
    progress = min((iteration - cfg.warmup_iters) / span, 1.0)
    floor = cfg.min_lr / base_lr if base_lr else 0.0
    return floor + (1 - floor) * (1 - progress) ** cfg.power


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, base_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR applying :func:`lr_factor` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg, base_lr))
