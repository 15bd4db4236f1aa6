"""Each fusion site's grad_ratio during training, from hooks on the fusing weights' gradients.

Any training loop can use it (the bundled trainer does, see ``eqsurgeon.training.grad_log``): arm the
hooks on the steps to log, and read the ratios after the backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from eqsurgeon import stats
from eqsurgeon.gradients import fusing_layer, original_layer, per_channel_sums, slice_counts
from eqsurgeon.records import FusionSite


class GradRatioHooks:
    """Each site's grad_ratio in a training step, read from hooks on the fusing weights' gradients.

    No extra forward or backward: a tensor hook on each fusing weight sees the gradient the step
    computes anyway and, only when ``armed``, queues its per-slice mean square on the device (one
    reduction over the weight). :meth:`read` turns the queue into ratios with one host sync. Under a
    GradScaler or DDP the hook sees the scaled, per-process gradient; a ratio is unchanged by a
    constant scale. Sites are keyed by the layer's original name (insert mode's ``.layer`` dropped).

    >>> from eqsurgeon.records import Subject
    >>> conv = nn.Conv2d(4, 2, 1)
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))
    >>> hooks = GradRatioHooks(conv, [site])
    >>> hooks.armed = True
    >>> conv(torch.cat([torch.ones(1, 2, 3, 3), 3 * torch.ones(1, 2, 3, 3)], 1)).sum().backward()
    >>> round(hooks.read()[""], 6), hooks.read()
    (3.0, {})
    """

    def __init__(self, model: nn.Module, sites: Iterable[FusionSite]) -> None:
        self.armed = False
        self._pending: dict[str, torch.Tensor] = {}
        self._inputs: dict[str, int] = {}  # inputs per site
        self._handles: list[Any] = []
        for site in (s for s in sites if s.ok):
            weight = fusing_layer(model, site.layer).weight
            if weight.requires_grad:
                hook = self._hook(original_layer(model, site.layer), site, weight)
                self._handles.append(weight.register_hook(hook))

    def read(self) -> dict[str, float | None]:
        """``{layer: grad_ratio}`` of the last armed backward (then forgotten); ``{}`` when there was none.

        A ratio that is not finite (a zero gradient, or an fp16 overflow the GradScaler will skip) is None.
        """
        if not self._pending:
            return {}
        names = [n for n in self._inputs if n in self._pending]  # site order, not backward order
        means = torch.cat([self._pending[n] for n in names]).double().sqrt().tolist()
        self._pending.clear()
        out, start = {}, 0
        for name in names:
            width = self._inputs[name]
            ratio = stats.grad_ratio(means[start : start + width])
            out[name] = ratio if math.isfinite(ratio) else None
            start += width
        return out

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str, site: FusionSite, weight: torch.Tensor) -> Callable[[torch.Tensor], None]:
        index = torch.cat([torch.full((s.width,), i) for i, s in enumerate(site.subjects)]).to(weight.device)
        counts = torch.tensor(slice_counts(weight, site), dtype=torch.float32, device=weight.device)
        self._inputs[name] = len(site.subjects)

        def hook(grad: torch.Tensor) -> None:
            if self.armed:
                per_channel = per_channel_sums(grad.detach().float().square(), site.op, site.groups)
                sums = torch.zeros_like(counts).index_add_(0, index, per_channel)
                self._pending[name] = sums / counts

        return hook
