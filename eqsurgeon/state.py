"""Snapshot and restore a module's train/eval flags and buffers (and, for a backward, its gradients).

Analysis must leave a model bit-identical; every stage that runs the model in a different mode does so
inside ``preserved_state``, and one that runs a backward also inside ``preserved_grads``.
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


@contextmanager
def preserved_grads(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``.grad`` (values, or its absence) on exit.

    >>> lin = torch.nn.Linear(2, 1)
    >>> with preserved_grads(lin):
    ...     lin(torch.ones(1, 2)).sum().backward()
    >>> lin.weight.grad is None
    True
    """
    saved = [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, grad in saved:
                if grad is None:
                    param.grad = None
                elif param.grad is not None and param.grad.shape == grad.shape:
                    param.grad.copy_(grad)  # the same tensor object, for code that holds a reference
                else:
                    param.grad = grad
