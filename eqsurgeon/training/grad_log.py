"""The trainer's gradient balance log: each fusion site's grad_ratio, every ``run.log_interval``.

The sites are found once, on the model as it will train (fresh, folded, or with insert mode's
equalizers), by capturing it on a zero batch of the crop size. Hooks on the fusing weights then read the
gradients the training step computes anyway (:class:`eqsurgeon.grad_hooks.GradRatioHooks`): no extra
forward or backward, and one reduction per fusing weight on the logged steps only. A model that cannot
be captured trains as before, without the ratios.
"""

from __future__ import annotations

import torch
from torch import nn

from eqsurgeon.errors import EqSurgeonError
from eqsurgeon.grad_hooks import GradRatioHooks
from eqsurgeon.training.config import TrainConfig


def grad_ratio_hooks(model: nn.Module, cfg: TrainConfig, device: torch.device) -> GradRatioHooks:
    """Hooks on ``model``'s fusing weights (none when it cannot be captured); arm them on logged steps.

    >>> # the trainer: hooks.armed = logging this step; after the step, record["grad_ratio"] = hooks.read()
    """
    from eqsurgeon.capture import capture
    from eqsurgeon.sites import find

    example = torch.zeros(2, 3, *cfg.data.crop_size, device=device)
    try:
        sites = find(capture(model, example), model).sites
    except EqSurgeonError:  # not capturable: the run is still worth training
        sites = ()
    return GradRatioHooks(model, sites)
