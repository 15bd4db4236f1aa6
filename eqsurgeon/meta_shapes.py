"""Every node's shape from meta tensors: the fast shape pass of a symbolically traced graph.

The graph runs on a meta input with the parameters and buffers swapped for meta tensors of the same
shapes (``torch.func.functional_call``; the model's own tensors are not touched). Meta kernels compute
shapes in C++ or in torch's reference functions, with none of the per-op bookkeeping of fake tensors:
on the largest zoo model the pass takes a third of a ``FakeTensorProp``'s time. Opaque leaves run whole
on meta tensors too; the inputs each one receives are kept, so that :mod:`eqsurgeon.leaves` can trace it
on fake tensors of those shapes afterwards.

    GraphModule ──functional_call(meta state, meta input)──▶ node.meta["val"] + {leaf call: its inputs}

Ops that meta tensors cannot run (a CPU tensor built inside ``forward``, a value read from data) make
the pass give up, with nothing left behind; capture then uses fake tensors throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

LeafCall = tuple[tuple[Any, ...], dict[str, Any]]  # the (args, kwargs) a leaf call received, as meta


def meta_shapes(
    gm: fx.GraphModule, example_input: torch.Tensor, is_leaf: Callable[[nn.Module], bool]
) -> dict[str, LeafCall] | None:
    """Record every node's value in ``meta["val"]``: a meta tensor, a number, or a tuple of them.

    Args:
        gm: the symbolically traced model.
        example_input: the batch whose shapes are propagated (its data is not read).
        is_leaf: whether a ``call_module`` target is an opaque leaf whose inputs are wanted.

    Returns:
        node name → the meta ``(args, kwargs)`` of each opaque leaf call, or None when some op could not
        run on meta tensors (then no node keeps a value).

    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten()))
    >>> meta_shapes(gm, torch.randn(2, 3, 5, 5), lambda m: False)
    {}
    >>> [tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "call_module"]
    [(2, 4, 5, 5), (2, 100)]
    """
    runner = _Runner(gm, is_leaf)
    state = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    meta = {f"gm.{name}": torch.empty_like(t, device="meta") for name, t in state.items()}
    try:
        with torch.no_grad():
            torch.func.functional_call(runner, meta, (torch.empty_like(example_input, device="meta"),))
    except Exception:  # any op that meta tensors cannot run: the caller falls back to fake tensors
        for node in gm.graph.nodes:
            node.meta.pop("val", None)
        return None
    return runner.leaf_calls


class _Runner(nn.Module):
    """Holds ``gm`` as a submodule, so that functional_call swaps its state for the run."""

    def __init__(self, gm: fx.GraphModule, is_leaf: Callable[[nn.Module], bool]) -> None:
        super().__init__()
        self.gm = gm
        self.is_leaf = is_leaf
        self.leaf_calls: dict[str, LeafCall] = {}

    def forward(self, x: torch.Tensor) -> Any:
        return _Interpreter(self).run(x)


class _Interpreter(fx.Interpreter):
    def __init__(self, runner: _Runner) -> None:
        super().__init__(runner.gm)
        self.runner = runner
        self._node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self._node = n  # call_module is told the target only
        result = super().run_node(n)
        value = map_aggregate(result, _recorded)
        if value is not None:
            n.meta["val"] = value
        return result

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._node is not None and self.runner.is_leaf(self.fetch_attr(target)):
            self.runner.leaf_calls[self._node.name] = (args, kwargs)
        return super().call_module(target, args, kwargs)

    def fetch_attr(self, target: str) -> Any:
        # A tensor attribute that is neither parameter nor buffer: functional_call swaps only those.
        value = super().fetch_attr(target)
        if isinstance(value, torch.Tensor) and not value.is_meta:
            return torch.empty_like(value, device="meta")
        return value


def _recorded(obj: Any) -> Any:
    # What FakeTensorProp records: tensors and plain numbers; nothing for other values.
    return obj if isinstance(obj, (torch.Tensor, int, float, bool)) else None
