"""Snapshot and restore a module's train/eval flags and buffers.

Analysis must leave a model bit-identical; every stage that runs the model in a different mode does so
inside ``preserved_state``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag and every buffer's value on exit.

    >>> bn = torch.nn.BatchNorm1d(2)
    >>> with preserved_state(bn):
    ...     _ = bn.train()(torch.randn(4, 2))
    >>> bool(bn.running_mean.eq(0).all())
    True
    """
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
