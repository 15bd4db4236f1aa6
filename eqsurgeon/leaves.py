"""Search inside opaque leaf modules: trace each one on the inputs it really receives.

Symbolic tracing keeps some modules as one call (timm's no-trace blocks, eqsurgeon- and user-registered
leaves). While capture propagates fake tensors through the model's graph, every such call is traced on
its own with the fake inputs it receives there: by the shape-aware tracer (:mod:`eqsurgeon.shape_tracer`)
first, by torch.export when that raises. :mod:`eqsurgeon.inline` then splices each leaf's graph into the
model's, so site finding reads one graph with every layer named as in the full model.

    model graph ──LeafSearch (fake shapes)──▶ {leaf call: LeafGraph | why not} ──inline──▶ flat graph

A leaf that neither can trace stays one call and is listed, with both reasons, as unsearched.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.utils import _pytree as pytree

from eqsurgeon import registry
from eqsurgeon.shape_tracer import NOT_RUN, trace_leaf

CallPath = tuple[Any, ...]  # a position in a call's (args, kwargs), e.g. (0, 1) = args[1]

MAX_DEPTH = 16  # leaves nested in leaves; deeper ones are reported unsearched

# torch.nn's own modules are primitives: fx keeps them whole by default and none of them holds a concat.
_PRIMITIVE_PACKAGES = ("torch.nn.", "torch.ao.nn.")


@dataclass(frozen=True)
class Slots:
    """A placeholder that holds a tuple: the values at these positions of the call's ``(args, kwargs)``."""

    paths: tuple[CallPath, ...]


@dataclass(frozen=True)
class LeafGraph:
    """One opaque leaf's forward as a graph whose names are relative to the leaf.

    Attributes:
        graph: the leaf's nodes, each with ``meta["val"]``.
        frontend: ``"fx"`` or ``"export"``: what traced it.
        kind: the leaf's class, ``module.QualName``.
        inputs: input placeholder name → where its value sits in the call's ``(args, kwargs)``.
        params: for export, parameter/buffer placeholder name → its name inside the leaf.
        out_spec: how the graph's flat outputs nest into the leaf's return value (None: as returned).
        children: node name → a nested leaf's graph, or why that leaf could not be searched.
    """

    graph: fx.Graph
    frontend: str
    kind: str
    inputs: Mapping[str, CallPath | Slots]
    params: Mapping[str, str] = field(default_factory=dict)
    out_spec: pytree.TreeSpec | None = None
    children: Mapping[str, LeafGraph | str] = field(default_factory=dict)


def is_opaque(module: nn.Module, kept_whole: tuple[type[nn.Module], ...]) -> bool:
    """Whether a module that symbolic tracing kept as one call hides code that site finding must read.

    >>> is_opaque(nn.BatchNorm2d(3), (nn.Conv2d,))
    False
    """
    if isinstance(module, kept_whole):
        return False
    return not type(module).__module__.startswith(_PRIMITIVE_PACKAGES)


class LeafSearch(FakeTensorProp):
    """Fake-tensor propagation that also traces every opaque leaf call it runs (see the module doc).

    After ``propagate``, ``children`` maps each opaque leaf's node name to its :class:`LeafGraph` or to the
    reason it could not be traced.

    Args:
        gm: the symbolically traced model.
        mode: the fake mode to propagate in.
        kept_whole: module types kept as one call on purpose (the fusing layers).
    """

    def __init__(
        self, gm: fx.GraphModule, mode: FakeTensorMode, kept_whole: tuple[type[nn.Module], ...]
    ) -> None:
        super().__init__(gm, mode)
        self.children: dict[str, LeafGraph | str] = {}
        self._search = _Search(kept_whole)
        self._node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self._node = n  # call_module is told the target only; the node names the leaf's entry
        return super().run_node(n)

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        leaf = self.fetch_attr(target)
        if self._node is not None and self._search.opaque(leaf):
            entry, value = self._search.leaf(leaf, args, kwargs, 0)
            self.children[self._node.name] = entry
            if value is not NOT_RUN:
                return value
        return super().call_module(target, args, kwargs)


def search_leaves(
    gm: fx.GraphModule,
    calls: Mapping[str, tuple[tuple[Any, ...], dict[str, Any]]],
    device: torch.device,
    kept_whole: tuple[type[nn.Module], ...],
) -> dict[str, LeafGraph | str]:
    """Trace each opaque leaf call on fake tensors shaped like the (meta) inputs it received.

    The counterpart of :class:`LeafSearch` for a graph whose shapes came from meta tensors
    (:mod:`eqsurgeon.meta_shapes`): the same search, on the same input shapes and strides.

    Returns:
        node name → the leaf's :class:`LeafGraph`, or why it could not be searched.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    search = _Search(kept_whole)
    by_name = {n.name: n for n in gm.graph.nodes}
    children: dict[str, LeafGraph | str] = {}
    with mode:
        for name, call in calls.items():
            args, kwargs = pytree.tree_map_only(torch.Tensor, lambda t: _fake_like(t, device), call)
            leaf = gm.get_submodule(by_name[name].target)
            children[name] = search.leaf(leaf, args, kwargs, 0)[0]
    return children


def _fake_like(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Built inside the fake mode: a fake tensor on the model's device, no memory behind it.
    return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)


class _Search:
    """Traces opaque leaves on fake inputs: shape-aware symbolic tracing, then torch.export.

    Leaves with the same class, configuration and input shapes trace to equal graphs, so each such
    group is traced once.
    """

    def __init__(self, kept_whole: tuple[type[nn.Module], ...]) -> None:
        self.kept_whole = kept_whole
        self.leaves = registry.leaf_modules() + kept_whole
        self._cache: dict[Hashable, LeafGraph | str] = {}

    def opaque(self, module: nn.Module) -> bool:
        return is_opaque(module, self.kept_whole)

    def leaf(self, leaf: nn.Module, args: Any, kwargs: Any, depth: int) -> tuple[LeafGraph | str, Any]:
        """The leaf's graph (or why there is none), and its fake output when tracing computed it."""
        key = _fingerprint(leaf, args, kwargs)
        if key is not None and key in self._cache:
            return self._cache[key], NOT_RUN
        value: Any = NOT_RUN
        if depth >= MAX_DEPTH:
            entry: LeafGraph | str = f"leaves nested more than {MAX_DEPTH} deep"
        else:
            try:
                entry, value = self._trace(leaf, tuple(args), dict(kwargs), depth)
            except Exception as exc:  # any tracing failure means: try export
                fx_error = one_line(exc)
                try:
                    entry = _export(leaf, tuple(args), dict(kwargs))
                except Exception as exc2:
                    entry = f"torch.fx: {fx_error}; torch.export: {one_line(exc2)}"
        if key is not None:
            self._cache[key] = entry
        return entry, value

    def _trace(
        self, leaf: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], depth: int
    ) -> tuple[LeafGraph, Any]:
        graph, value, children, paths = trace_leaf(self, leaf, args, kwargs, depth)
        placeholder = next(n.name for n in graph.nodes if n.op == "placeholder")
        inputs = {placeholder: Slots(tuple(paths))}
        return LeafGraph(graph, "fx", _kind(leaf), inputs, children=children), value


def _export(leaf: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LeafGraph:
    with unset_fake_temporarily():
        real = pytree.tree_map_only(torch.Tensor, _stand_in, (tuple(args), dict(kwargs)))
        program = torch.export.export(leaf, real[0], real[1], strict=False)
    specs = program.graph_signature.input_specs
    user = [s.arg.name for s in specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    params = {
        s.arg.name: str(s.target)
        for s in specs
        if s.kind != torch.export.graph_signature.InputKind.USER_INPUT and s.target is not None
    }
    leaves = pytree.tree_flatten_with_path(real)[0]
    inputs = {name: _keys(path) for name, (path, _) in zip(user, leaves)} if len(user) == len(leaves) else {}
    graph = program.graph_module.graph
    return LeafGraph(graph, "export", _kind(leaf), inputs, params, program.call_spec.out_spec)


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    # Export takes real tensors; uninitialized ones of the fake's shape cost no compute.
    return torch.empty(tuple(t.shape), dtype=t.dtype, device=t.device)


def _keys(path: tuple[Any, ...]) -> CallPath:
    return tuple(getattr(k, "idx", getattr(k, "key", k)) for k in path)


def _kind(leaf: nn.Module) -> str:
    return f"{type(leaf).__module__}.{type(leaf).__qualname__}"


def one_line(exc: BaseException) -> str:
    r"""An exception as one line: its type and the first line of its message.

    >>> one_line(ValueError("bad size\nmore detail"))
    'ValueError: bad size'
    """
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


class _Unhashable(Exception):
    pass


_HOOKS = ("_forward_hooks", "_forward_pre_hooks")
_ATOMS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, enum.Enum)


def _fingerprint(leaf: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
    """Class, configuration and input shapes of a leaf call: equal fingerprints trace to equal graphs.

    ``None`` when some attribute is not plain data (then the leaf is traced on its own).
    """
    try:
        parts: list[Hashable] = [_freeze((args, kwargs))]
        for name, m in leaf.named_modules():
            if any(getattr(m, h, None) for h in _HOOKS):
                return None
            attrs = tuple((k, _freeze(v)) for k, v in vars(m).items() if not _internal(k))
            tensors = tuple(
                (k, None if t is None else (tuple(t.shape), t.dtype))
                for k, t in (*m._parameters.items(), *m._buffers.items())
            )
            parts.append((name, type(m), attrs, tensors))
        return tuple(parts)
    except _Unhashable:
        return None


def _internal(key: str) -> bool:
    return key in ("_parameters", "_buffers", "_modules") or "hook" in key


def _freeze(v: Any) -> Hashable:
    if isinstance(v, _ATOMS):
        return (type(v), v)
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, str(v.device))
    if isinstance(v, (tuple, list)):
        return (type(v), tuple(_freeze(x) for x in v))
    if isinstance(v, (set, frozenset)):
        return (type(v), frozenset(_freeze(x) for x in v))
    if isinstance(v, dict):
        return (dict, tuple((_freeze(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, functools.partial):
        return ("partial", _freeze(v.func), _freeze(v.args), _freeze(v.keywords))
    if isinstance(v, type) or inspect.isfunction(v) or inspect.isbuiltin(v):
        return ("code", v)
    raise _Unhashable(type(v).__name__)
