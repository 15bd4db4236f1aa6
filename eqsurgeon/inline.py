"""Inline searched leaves: one graph in which each opaque leaf call is replaced by the leaf's nodes.

    x ─▶ block(x) ─▶ head              x ─▶ block.conv_kxk ─▶ … ─┐
         (opaque)               ==▶    └──────────────────────── cat ─▶ block.conv_fusion ─▶ head

The leaf's inputs are wired to the call's arguments and its outputs to the call's users, so a concat
outside a leaf reaches a conv inside it, and an upsample outside reaches a concat inside.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from torch import fx
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from eqsurgeon.graph_ops import clean_path
from eqsurgeon.leaves import CallPath, LeafGraph, Slots
from eqsurgeon.records import UnsearchedLeaf


def inline_leaves(
    graph: fx.Graph, children: Mapping[str, LeafGraph | str]
) -> tuple[fx.Graph, tuple[UnsearchedLeaf, ...]]:
    """One graph in which each searched leaf call is replaced by the leaf's own nodes.

    Layers inside a leaf are named as in the full model (``call_module``/``get_attr`` targets and
    ``nn_module_stack`` paths get the leaf's name in front); export's parameter placeholders become
    ``get_attr`` nodes on the parameter's full name. The graph is for reading only: it is never run.

    Returns:
        The flat graph, and the leaves that stay one call because they could not be searched.

    >>> import torch
    >>> from eqsurgeon.capture import capture
    >>> cap = capture(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 8, 8))
    >>> flat, unsearched = inline_leaves(cap.graph_module.graph, {})
    >>> [n.op for n in flat.nodes], unsearched
    (['placeholder', 'call_module', 'output'], ())
    """
    inliner = _Inliner()
    inliner.copy(graph, children)
    return inliner.flat, tuple(inliner.unsearched)


class _Inliner:
    def __init__(self) -> None:
        self.flat = fx.Graph()
        self.unsearched: list[UnsearchedLeaf] = []

    def copy(
        self,
        graph: fx.Graph,
        children: Mapping[str, LeafGraph | str],
        leaf: LeafGraph | None = None,
        prefix: str = "",
        call: tuple[Any, Any] | None = None,
    ) -> Any:
        env: dict[fx.Node, Any] = {}

        def look(n: fx.Node) -> Any:
            return env[n]

        for node in graph.nodes:
            if node.op == "placeholder" and leaf is not None:
                env[node] = self._input(node, leaf, prefix, call)
            elif node.op == "output":
                out = map_arg(node.args[0], look)
                if leaf is None:
                    self.flat.output(out)
                    return None
                return pytree.tree_unflatten(list(out), leaf.out_spec) if leaf.out_spec is not None else out
            elif (picked := _picked(node, env)) is not _NOTHING:
                env[node] = picked if picked is not None else self._dead_end(node, leaf, prefix)
            else:
                env[node] = self._node(node, children.get(node.name), look, leaf, prefix)
        return None

    def _node(
        self,
        node: fx.Node,
        child: LeafGraph | str | None,
        look: Callable[[fx.Node], Any],
        leaf: LeafGraph | None,
        prefix: str,
    ) -> Any:
        name = _join(prefix, str(node.target)) if node.op in ("call_module", "get_attr") else None
        if isinstance(child, LeafGraph):
            call = (map_arg(node.args, look), map_arg(node.kwargs, look))
            return self.copy(child.graph, child.children, child, str(name), call)
        if isinstance(child, str):
            self.unsearched.append(UnsearchedLeaf(str(name), child))
        new = self.flat.node_copy(node, look)
        if name is not None:
            new.target = name
        if leaf is not None:
            new.meta["nn_module_stack"] = _stack(node, leaf, prefix)
        return new

    def _input(self, node: fx.Node, leaf: LeafGraph, prefix: str, call: tuple[Any, Any] | None) -> Any:
        if node.name in leaf.params:
            new = self.flat.create_node("get_attr", _join(prefix, leaf.params[node.name]), name=node.name)
            new.meta = dict(node.meta)
            return new
        where = leaf.inputs.get(node.name)
        if isinstance(where, Slots):
            return tuple(_at(call, path) for path in where.paths)
        value = _at(call, where)
        return value if value is not None else self._dead_end(node, leaf, prefix)

    def _dead_end(self, node: fx.Node, leaf: LeafGraph | None, prefix: str) -> fx.Node:
        # An input site finding cannot follow outside (held in a container the graph builds): a source.
        new = self.flat.create_node("placeholder", node.name, name=node.name)
        new.meta = dict(node.meta)
        if leaf is not None:
            new.meta["nn_module_stack"] = _stack(node, leaf, prefix)
        return new


def _at(call: tuple[Any, Any] | None, path: CallPath | None) -> Any:
    if call is None or path is None:
        return None
    value: Any = call
    for key in path:
        if isinstance(value, fx.Node):
            return None  # the value is inside a node's result (a tuple the graph builds): not followed
        try:
            value = value[key]
        except (IndexError, KeyError, TypeError):
            return None
    return value if isinstance(value, (fx.Node, tuple, list, dict)) else None


_NOTHING = object()


def _picked(node: fx.Node, env: Mapping[fx.Node, Any]) -> Any:
    # getitem with a constant index on an inlined leaf's tuple/dict result is that element.
    if node.op != "call_function" or node.target is not operator.getitem:
        return _NOTHING
    base, index = node.args[0], node.args[1]
    held = env.get(base) if isinstance(base, fx.Node) else None
    if not isinstance(held, (tuple, list, dict)) or isinstance(index, (fx.Node, slice)):
        return _NOTHING
    try:
        return held[index]
    except (IndexError, KeyError, TypeError):
        return _NOTHING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _stack(node: fx.Node, leaf: LeafGraph, prefix: str) -> dict[str, tuple[str, Any]]:
    stack = {prefix: (prefix, leaf.kind)}
    for path, kind in (node.meta.get("nn_module_stack") or {}).values():
        inner = clean_path(str(path))
        if inner:
            stack[_join(prefix, inner)] = (_join(prefix, inner), kind)
    return stack
