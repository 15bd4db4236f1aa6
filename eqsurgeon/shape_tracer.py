"""Symbolic tracing of one leaf module on fake inputs, with shapes as plain values.

Plain symbolic tracing stops at control flow on sizes (``if H % window:``, ``int(x.shape[-1])``), which
is why libraries keep such modules opaque. Here every recorded node also gets its fake value at once,
so a proxy's ``shape``, ``size()`` and ``dim()`` are ints: the trace follows the branch the real input
takes, and each node carries ``meta["val"]`` without a second shape pass. Control flow on tensor values
still fails, as it must.

    leaf(x, size=(28, 28)) ──bind──▶ Bound(tensors) ──ShapeTracer──▶ graph, nodes named "leaf.<path>"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.utils import _pytree as pytree

from eqsurgeon import registry
from eqsurgeon.graph_ops import clean_path

NOT_RUN = object()  # a leaf search that did not compute the leaf's output


class LeafSearcher(Protocol):
    """What the tracer asks when it meets a nested opaque leaf."""

    leaves: tuple[type[nn.Module], ...]

    def opaque(self, module: nn.Module) -> bool: ...

    def leaf(self, leaf: nn.Module, args: Any, kwargs: Any, depth: int) -> tuple[Any, Any]: ...


def trace_leaf(
    searcher: LeafSearcher, leaf: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], depth: int
) -> tuple[fx.Graph, Any, dict[str, Any], list[tuple[Any, ...]]]:
    """Trace ``leaf(*args, **kwargs)`` on fake tensors.

    Returns:
        The graph (names relative to the leaf; one placeholder holding the tensor arguments as a tuple),
        the leaf's fake output, the nested leaves' entries by node name, and where each tensor argument
        sits in ``(args, kwargs)`` (``(0, 1)`` is ``args[1]``).

    >>> from torch._subclasses.fake_tensor import FakeTensorMode
    >>> class NoNestedLeaves:
    ...     leaves = ()
    ...     def opaque(self, module): return False
    ...     def leaf(self, leaf, args, kwargs, depth): raise AssertionError
    >>> block = nn.Sequential(nn.Conv2d(3, 4, 1))
    >>> with FakeTensorMode(allow_non_fake_inputs=True):
    ...     graph, out, _, where = trace_leaf(NoNestedLeaves(), block, (torch.empty(1, 3, 8, 8),), {}, 0)
    >>> [n.target for n in graph.nodes if n.op == "call_module"], tuple(out.shape), where
    (['0'], (1, 4, 8, 8), [(0, 0)])
    """
    flat_paths, spec = pytree.tree_flatten_with_path((args, kwargs))
    flat = [v for _, v in flat_paths]
    slots = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
    tracer = ShapeTracer(searcher, leaf, depth, tuple(flat[i] for i in slots))
    bound = _Bound(leaf, [None if i in slots else v for i, v in enumerate(flat)], spec, slots)
    graph = tracer.trace(bound)
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    value = map_aggregate(output.args[0], lambda n: n.meta.get("val") if isinstance(n, fx.Node) else n)
    _relative_to(graph, _BOUND_NAME)
    where = [tuple(getattr(k, "idx", getattr(k, "key", k)) for k in flat_paths[i][0]) for i in slots]
    return graph, value, tracer.children, where


_BOUND_NAME = "leaf"


class _Bound(nn.Module):
    """Calls a leaf with its non-tensor arguments fixed; its tensors come in as one tuple.

    Fixing sizes and flags lets control flow on them trace; the leaf stays a submodule, so its layers
    are named ``leaf.<name>`` in the traced graph.
    """

    def __init__(self, leaf: nn.Module, flat: list[Any], spec: pytree.TreeSpec, slots: list[int]) -> None:
        super().__init__()
        self.leaf = leaf  # the name is _BOUND_NAME
        self._flat, self._spec, self._slots = flat, spec, slots

    def forward(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        flat = list(self._flat)
        for k, i in enumerate(self._slots):
            flat[i] = tensors[k]
        args, kwargs = pytree.tree_unflatten(flat, self._spec)
        return self.leaf(*args, **kwargs)


class _ShapeProxy(fx.Proxy):
    """A proxy that carries its node's fake value, so sizes, dims and dtypes are plain values.

    Control flow on shapes (padding to whole windows, choosing to interpolate) then traces the branch
    the real input takes; control flow on tensor values still fails, as it should.
    """

    def _val(self) -> Any:
        return self.node.meta.get("val")

    @property
    def shape(self) -> Any:
        v = self._val()
        return v.shape if isinstance(v, torch.Tensor) else self.__getattr__("shape")

    @property
    def ndim(self) -> Any:
        v = self._val()
        return v.ndim if isinstance(v, torch.Tensor) else self.__getattr__("ndim")

    @property
    def dtype(self) -> Any:
        v = self._val()
        return v.dtype if isinstance(v, torch.Tensor) else self.__getattr__("dtype")

    @property
    def device(self) -> Any:
        v = self._val()
        return v.device if isinstance(v, torch.Tensor) else self.__getattr__("device")

    def size(self, dim: int | None = None) -> Any:
        v = self._val()
        if not isinstance(v, torch.Tensor):
            return self.__getattr__("size")(*(() if dim is None else (dim,)))
        return v.size() if dim is None else v.size(dim)

    def dim(self) -> Any:
        v = self._val()
        return v.dim() if isinstance(v, torch.Tensor) else self.__getattr__("dim")()

    def numel(self) -> Any:
        v = self._val()
        return v.numel() if isinstance(v, torch.Tensor) else self.__getattr__("numel")()

    def __len__(self) -> int:
        v = self._val()
        return len(v) if isinstance(v, (torch.Tensor, tuple, list)) else super().__len__()

    def __iter__(self) -> Any:
        v = self._val()
        if isinstance(v, (torch.Tensor, tuple, list)):
            return iter([self[i] for i in range(len(v))])
        return super().__iter__()


class ShapeTracer(fx.Tracer):
    """Symbolic tracing of one leaf that computes every node's fake value as it records it."""

    def __init__(
        self, search: LeafSearcher, target: nn.Module, depth: int, tensors: tuple[torch.Tensor, ...]
    ) -> None:
        super().__init__(autowrap_functions=registry.autowrap_functions())
        self.children: dict[str, Any] = {}
        self._search, self._target, self._depth, self._tensors = search, target, depth, tensors
        self._passive = 0  # > 0 while a leaf module runs on fake values

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if m is self._target:
            return False
        return isinstance(m, self._search.leaves) or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        proxy.node.meta["val"] = self._value(proxy.node, kind, target, args, kwargs)
        return proxy

    def _value(self, node: fx.Node, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            return self._tensors
        if kind == "get_attr":
            return _fetch(self.root, str(target))
        a, k = map_aggregate((args, kwargs), _fake_value)
        if kind == "call_function":
            return target(*a, **k)
        if kind == "call_method":
            return getattr(a[0], target)(*a[1:], **k)
        module = _fetch(self.root, str(target))
        if self._search.opaque(module):
            entry, value = self._search.leaf(module, a, k, self._depth + 1)
            self.children[node.name] = entry
            if value is not NOT_RUN:
                return value
        # The module's own submodule calls and attribute reads go through the tracer's patches: run
        # them plainly instead of recording them.
        self._passive += 1
        try:
            return module(*a, **k)
        finally:
            self._passive -= 1

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        return forward(*args, **kwargs) if self._passive else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        return attr_val if self._passive else super().getattr(attr, attr_val, parameter_proxy_cache)


def _fake_value(x: Any) -> Any:
    return x.node.meta.get("val") if isinstance(x, fx.Proxy) else x


def _fetch(root: nn.Module, target: str) -> Any:
    # Plain dict lookups: the tracer patches nn.Module.__getattr__ to record attribute reads.
    obj: Any = root
    for part in target.split("."):
        found = False
        for table in ("_modules", "_parameters", "_buffers"):
            entries = obj.__dict__.get(table, {}) if isinstance(obj, nn.Module) else {}
            if part in entries:
                obj, found = entries[part], True
                break
        obj = obj if found else object.__getattribute__(obj, part)
    return obj


def _relative_to(graph: fx.Graph, name: str) -> None:
    # Names in the traced wrapper start with "leaf."; make them relative to the leaf itself.
    head = name + "."
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and str(node.target).startswith(head):
            node.target = str(node.target)[len(head) :]
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {
                k: (_strip(str(path), name), kind) for k, (path, kind) in stack.items()
            }


def _strip(path: str, name: str) -> str:
    path = clean_path(path)
    return path[len(name) + 1 :] if path.startswith(name + ".") else "" if path == name else path
