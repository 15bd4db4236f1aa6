"""How layout and padding ops move or keep a tensor's channel dim, for either frontend's nodes.

A concat's channel ranges stay valid at a fusing layer only if every op in between keeps each channel
whole: a permute moves the dim, a reshape keeps it when the elements before it and its size are
unchanged, a padding keeps it when it pads other dims only.

    [B, C, H, W] ─flatten(2)─▶ [B, C, HW] ─transpose(1, 2)─▶ [B, HW, C]      channel dim 1 → 1 → 2
    [B, C, H, W] ─view(B, 2, C/2, H, W)─▶ channels split: not followed
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from eqsurgeon.call_args import first_input

aten = torch.ops.aten

# Ops that only rearrange values (layout): they keep a feature's distribution, so walking back from a
# concat may pass them; walking forward passes them only while the channel dim can be followed
# (``channel_dim_after``).
_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
_RESHAPES = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "_unsafe_view"}
_LAYOUT_METHODS = _PERMUTES | _RESHAPES
_LAYOUT_FUNCS = {
    torch.permute,
    torch.transpose,
    torch.swapaxes,
    torch.swapdims,
    torch.movedim,
    torch.moveaxis,
    torch.reshape,
    torch.flatten,
    torch.unflatten,
    torch.squeeze,
    torch.unsqueeze,
}
_LAYOUT_ATEN = {
    aten.permute,
    aten.transpose,
    aten.swapaxes,
    aten.swapdims,
    aten.movedim,
    aten.moveaxis,
    aten.reshape,
    aten.view,
    aten._unsafe_view,
    aten.flatten,
    aten.unflatten,
    aten.squeeze,
    aten.unsqueeze,
}

# Padding: constant (TF-style "same" padding, usually by zero amounts), reflect, replicate, circular.
# It adds positions, never mixes channels; it passes when it pads no channel (``padded_dims``).
_PAD_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)
_PAD_FUNCS = {F.pad, torch.constant_pad_nd}
_PAD_ATEN = {
    aten.pad,
    aten.constant_pad_nd,
    aten.reflection_pad1d,
    aten.reflection_pad2d,
    aten.reflection_pad3d,
    aten.replication_pad1d,
    aten.replication_pad2d,
    aten.replication_pad3d,
    aten._pad_circular,
}


def layout_op(node: fx.Node) -> str | None:
    """The layout op a node runs (``"permute"``, ``"view"``...), or ``None``.

    >>> graph = fx.symbolic_trace(lambda x: x.permute(0, 2, 3, 1).relu()).graph
    >>> [layout_op(n) for n in graph.nodes]
    [None, 'permute', None, None]
    """
    if node.op == "call_method":
        return str(node.target) if node.target in _LAYOUT_METHODS else None
    if node.op != "call_function":
        return None
    if node.target in _LAYOUT_FUNCS:
        return getattr(node.target, "__name__", "")
    packet = op_packet(node)
    if packet in _LAYOUT_ATEN:
        return str(packet).rpartition(".")[2]
    return "getitem" if _selects_all(node, packet) else None


def channel_dim_after(node: fx.Node, before: tuple[int, ...], after: tuple[int, ...], dim: int) -> int | None:
    """Where dim ``dim`` of a layout node's input (shape ``before``) sits in its output (``after``).

    ``None`` when the node is no layout op, or splits or merges that dim.

    >>> permute, flatten = (
    ...     next(n for n in fx.symbolic_trace(f).graph.nodes if n.op == "call_method")
    ...     for f in (lambda x: x.permute(0, 2, 3, 1), lambda x: x.flatten(2))
    ... )
    >>> channel_dim_after(permute, (2, 8, 4, 4), (2, 4, 4, 8), 1)
    3
    >>> channel_dim_after(flatten, (2, 8, 4, 4), (2, 8, 16), 1)
    1
    """
    name = layout_op(node)
    if name is None:
        return None
    if name in _PERMUTES:
        perm = _permutation(name, node, len(before))
        return perm.index(dim) if perm is not None and dim in perm else None
    return _reshaped_dim(before, after, dim)


def padded_dims(node: fx.Node, module: nn.Module | None) -> tuple[int, ...] | None:
    """Dims a padding node pads by a nonzero amount (counted from the end: -1 is the last).

    ``None`` when the node is no padding, or its amounts are not known statically.

    >>> graph = fx.symbolic_trace(lambda x: F.pad(x, (1, 1, 0, 0))).graph
    >>> [padded_dims(n, None) for n in graph.nodes]
    [None, (-1,), None]
    """
    if isinstance(module, _PAD_MODULES):
        amounts: object = module.padding
    elif node.op == "call_function" and (node.target in _PAD_FUNCS or op_packet(node) in _PAD_ATEN):
        amounts = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", node.kwargs.get("padding"))
    else:
        return None
    if not isinstance(amounts, (tuple, list)):
        return None
    values = [_static_int(a) for a in amounts]
    if any(v is None for v in values) or len(values) % 2:
        return None
    return tuple(-1 - i for i in range(len(values) // 2) if values[2 * i] or values[2 * i + 1])


def _selects_all(node: fx.Node, packet: object) -> bool:
    """Basic indexing that keeps every element: ``t[:, :]``, ``t[...]``, ``t[None]``, ``t[:, :C]`` on C
    channels (fx's ``getitem``; export's ``aten.slice``). Only slices, ``...`` and ``None`` index, so an
    unchanged element count means every slice took its whole dim in order: a view that keeps all values,
    read like a reshape. Slices that drop channels or positions change the count and stop the walk."""
    if node.target is operator.getitem:
        index = node.args[1] if len(node.args) > 1 else None
        items = index if isinstance(index, tuple) else (index,)
        if not all(i is None or i is Ellipsis or isinstance(i, slice) for i in items):
            return False
    elif packet is not aten.slice:
        return False
    before, after = _value(first_input(node.args, node.kwargs)), _value(node)  # aten.slice(self=t) too
    return before is not None and after is not None and before.numel() == after.numel()


def _value(node: object) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def op_packet(node: fx.Node) -> object:
    """The ATen overload packet a node calls: an overload's packet, or the packet itself when the model
    calls ``torch.ops.aten.<op>`` without naming an overload; ``None`` for anything else.

    >>> graph = fx.symbolic_trace(lambda x: torch.ops.aten.relu(x)).graph
    >>> [op_packet(n) is torch.ops.aten.relu for n in graph.nodes]
    [False, True, False]
    """
    if isinstance(node.target, torch._ops.OpOverloadPacket):
        return node.target
    return getattr(node.target, "overloadpacket", None)


def _static_int(value: object) -> int | None:
    # fx records sizes computed from shapes as nodes; the shape pass stored their values.
    if isinstance(value, fx.Node):
        value = value.meta.get("val")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_DIM_KEYWORDS = {
    "transpose": ("dim0", "dim1"),
    "swapdims": ("dim0", "dim1"),
    "swapaxes": ("axis0", "axis1"),
    "movedim": ("source", "destination"),
    "moveaxis": ("source", "destination"),
}


def _permutation(name: str, node: fx.Node, ndim: int) -> list[int] | None:
    """``perm`` with ``out.dim(j) == in.dim(perm[j])`` for permute/transpose/movedim nodes."""
    rest = list(node.args[1:])
    # Symbolic tracing keeps keywords as written: t.transpose(1, dim1=2), torch.movedim(t, source=1, ...).
    rest += [node.kwargs[k] for k in _DIM_KEYWORDS.get(name, ())[len(rest) :] if k in node.kwargs]
    if name == "permute":
        dims = (
            rest[0]
            if len(rest) == 1 and isinstance(rest[0], (list, tuple))
            else rest or node.kwargs.get("dims")
        )
        order = [_static_int(d) for d in dims or ()]
        if len(order) != ndim or any(d is None for d in order):
            return None
        return [d % ndim for d in order]  # type: ignore[operator]
    if len(rest) < 2:
        return None
    if name in ("movedim", "moveaxis"):
        src, dst = (list(x) if isinstance(x, (list, tuple)) else [x] for x in rest[:2])
        src_i, dst_i = [_static_int(d) for d in src], [_static_int(d) for d in dst]
        if None in src_i or None in dst_i or len(src_i) != len(dst_i):
            return None
        perm: list[int | None] = [None] * ndim
        for s, d in zip(src_i, dst_i):
            perm[d % ndim] = s % ndim  # type: ignore[operator]
        others = iter(i for i in range(ndim) if i not in {s % ndim for s in src_i})  # type: ignore[operator]
        return [p if p is not None else next(others) for p in perm]
    a, b = _static_int(rest[0]), _static_int(rest[1])
    if a is None or b is None:
        return None
    perm_t = list(range(ndim))
    perm_t[a % ndim], perm_t[b % ndim] = perm_t[b % ndim], perm_t[a % ndim]
    return perm_t


def _reshaped_dim(before: tuple[int, ...], after: tuple[int, ...], dim: int) -> int | None:
    # A reshape keeps dim d whole when some output dim has its size and the same number of elements
    # before it: then every element keeps its index along d.
    lead = 1
    for s in before[:dim]:
        lead *= s
    acc = 1
    for j, s in enumerate(after):
        if acc == lead and s == before[dim]:
            return j
        acc *= s
    return None
