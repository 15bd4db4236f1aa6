"""Classify fx-graph nodes from either frontend: concat, upsample, scale-preserving, fusing layer, add.

Symbolic tracing records ``call_module``/``call_function``/``call_method`` nodes on torch-level callables;
torch.export records ATen overloads on parameter placeholders. ``OpView`` hides that difference so the
site finder reads one vocabulary.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from eqsurgeon import registry

aten = torch.ops.aten

_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_CAT_ATEN = {aten.cat, aten.concat, aten.concatenate}

# F.interpolate and its deprecated aliases; the value is the mode when the call does not say.
_INTERP_FUNCS: dict[object, str] = {
    F.interpolate: "nearest",
    F.upsample: "nearest",
    F.upsample_bilinear: "bilinear",
    F.upsample_nearest: "nearest",
}
_UPSAMPLE_ATEN = {
    aten.upsample_nearest1d: "nearest",
    aten.upsample_nearest2d: "nearest",
    aten.upsample_nearest3d: "nearest",
    aten._upsample_nearest_exact1d: "nearest-exact",
    aten._upsample_nearest_exact2d: "nearest-exact",
    aten._upsample_nearest_exact3d: "nearest-exact",
    aten.upsample_linear1d: "linear",
    aten.upsample_bilinear2d: "bilinear",
    aten._upsample_bilinear2d_aa: "bilinear",
    aten.upsample_bicubic2d: "bicubic",
    aten._upsample_bicubic2d_aa: "bicubic",
    aten.upsample_trilinear3d: "trilinear",
}

# Ops that do not change a feature's scale: dropout (identity at eval, unbiased in training),
# identity, copies and dtype casts.
_TRANSPARENT_MODULES: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.Identity)
_TRANSPARENT_FUNCS = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
    torch.feature_dropout,
    torch.alpha_dropout,
    torch.feature_alpha_dropout,
    torch.clone,
}
_TRANSPARENT_METHODS = {"contiguous", "clone", "float", "half", "bfloat16", "double", "to", "type"}
_TRANSPARENT_ATEN = {
    aten.dropout,
    aten.dropout_,
    aten.feature_dropout,
    aten.feature_dropout_,
    aten.alpha_dropout,
    aten.alpha_dropout_,
    aten.feature_alpha_dropout,
    aten.feature_alpha_dropout_,
    aten.clone,
    aten._to_copy,
    aten.to,
    aten.contiguous,
    aten.alias,
    aten.type_as,
}

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

_FUSING_FUNCS: dict[object, str] = {
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d",
    F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    F.linear: "linear",
}
_FUSING_ATEN = {
    aten.conv1d: "conv1d",
    aten.conv2d: "conv2d",
    aten.conv3d: "conv3d",
    aten.conv_transpose1d: "conv_transpose1d",
    aten.conv_transpose2d: "conv_transpose2d",
    aten.conv_transpose3d: "conv_transpose3d",
    aten.linear: "linear",
    aten.convolution: "convolution",
}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_ADD_ATEN = {aten.add, aten.add_}


@dataclass(frozen=True)
class Fusing:
    """A conv/linear node: the module it belongs to, or ``None`` for a functional call."""

    op: str
    module_name: str | None


@dataclass(frozen=True)
class UpsampleCall:
    """An interpolation node's mode and ``align_corners``."""

    mode: str
    align_corners: bool | None


class OpView:
    """Answers "what is this node?" for a graph captured by either frontend."""

    def __init__(self, model: nn.Module, frontend: str, param_names: Mapping[str, str]) -> None:
        self.model = model
        self.frontend = frontend
        self.param_names = dict(param_names)
        self.modules = dict(model.named_modules())

    def module(self, node: fx.Node) -> nn.Module | None:
        if node.op == "call_module":
            return self.modules.get(str(node.target))
        return None

    def is_cat(self, node: fx.Node) -> bool:
        return node.op == "call_function" and (node.target in _CAT_FUNCS or _packet(node) in _CAT_ATEN)

    def cat_parts(self, node: fx.Node) -> tuple[list[fx.Node], int]:
        parts = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return list(parts), int(dim)

    def is_add(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in ("add", "add_")
        return node.op == "call_function" and (node.target in _ADD_FUNCS or _packet(node) in _ADD_ATEN)

    def upsample(self, node: fx.Node) -> UpsampleCall | None:
        """Mode of an interpolation node, or ``None`` when the node is something else."""
        mod = self.module(node)
        if isinstance(mod, nn.Upsample):  # UpsamplingBilinear2d / Nearest2d are subclasses
            return _upsample_call(mod.mode, mod.align_corners)
        if node.op != "call_function":
            return None
        custom = registry.upsample_functions()
        if node.target in _INTERP_FUNCS or node.target in custom:
            default = _INTERP_FUNCS.get(node.target) or custom[node.target]
            align = node.kwargs.get("align_corners")
            if node.target is F.upsample_bilinear:
                align = True
            mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else default)
            return _upsample_call(str(mode), align)
        mode = _UPSAMPLE_ATEN.get(_packet(node))
        if mode is None:
            return None
        align = node.args[2] if mode in _ALIGNED_MODES else None
        return _upsample_call(mode, align if isinstance(align, bool) else None)

    def is_transparent(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.module(node), _TRANSPARENT_MODULES)
        if node.op == "call_method":
            return node.target in _TRANSPARENT_METHODS
        if node.op != "call_function":
            return False
        if node.target in _TRANSPARENT_FUNCS or _packet(node) in _TRANSPARENT_ATEN:
            return True
        # native_dropout returns (output, mask); element 0 carries the feature.
        if node.target is operator.getitem and node.args[1] == 0 and isinstance(node.args[0], fx.Node):
            return _packet(node.args[0]) is aten.native_dropout
        return _packet(node) is aten.native_dropout

    def is_layout(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in _LAYOUT_METHODS
        return node.op == "call_function" and (node.target in _LAYOUT_FUNCS or _packet(node) in _LAYOUT_ATEN)

    def padded_dims(self, node: fx.Node) -> tuple[int, ...] | None:
        """Dims a padding node pads by a nonzero amount (counted from the end: -1 is the last), or
        ``None`` when the node pads nothing or its amounts are not known statically."""
        mod = self.module(node)
        if isinstance(mod, _PAD_MODULES):
            amounts: object = mod.padding
        elif node.op == "call_function" and (node.target in _PAD_FUNCS or _packet(node) in _PAD_ATEN):
            amounts = (
                node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", node.kwargs.get("padding"))
            )
        else:
            return None
        if not isinstance(amounts, (tuple, list)):
            return None
        values = [_static_int(a) for a in amounts]
        if any(v is None for v in values) or len(values) % 2:
            return None
        return tuple(-1 - i for i in range(len(values) // 2) if values[2 * i] or values[2 * i + 1])

    def channel_dim_after(self, node: fx.Node, dim: int) -> int | None:
        """Where dim ``dim`` of a layout node's input sits in its output, or ``None`` when the node
        splits or merges it (or is not a layout op)."""
        before = shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        after = shape(node)
        if before is None or after is None or not self.is_layout(node):
            return None
        name = _layout_name(node)
        if name in _PERMUTES:
            perm = _permutation(name, node, len(before))
            return perm.index(dim) if perm is not None and dim in perm else None
        return _reshaped_dim(before, after, dim)

    def fusing(self, node: fx.Node) -> Fusing | None:
        """The conv/linear a node runs, with its module name when it is a module call."""
        mod = self.module(node)
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            return Fusing(_module_op(mod), str(node.target))
        if node.op != "call_function":
            return None
        if node.target in _FUSING_FUNCS:
            return Fusing(_FUSING_FUNCS[node.target], None)
        op = _FUSING_ATEN.get(_packet(node))
        if op is None:
            return None
        owner = self._weight_owner(node)
        if owner is not None:
            return Fusing(_module_op(self.modules[owner]), owner)
        return Fusing(op, None)

    def weight_key(self, node: fx.Node) -> str | None:
        """What identifies one fusing module across nodes: its module name, else the weight node."""
        if node.op == "call_module":
            return str(node.target)
        owner = self._weight_owner(node)
        if owner is not None:
            return owner
        weight = node.args[1] if len(node.args) > 1 else None
        return weight.name if isinstance(weight, fx.Node) else None

    def describe(self, node: fx.Node, with_node: bool = False) -> str:
        """A readable name for a node: its module path when known (``path:node`` with ``with_node``)."""
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        path = clean_path(list(stack.values())[-1][0]) if stack else ""
        if not path:
            return node.name
        return f"{path}:{node.name}" if with_node else path

    def _weight_owner(self, node: fx.Node) -> str | None:
        weight = node.args[1] if len(node.args) > 1 else None
        if not isinstance(weight, fx.Node):
            return None
        # Export passes parameters as placeholders; a leaf inlined from export reads them by full name.
        if weight.op == "placeholder":
            fqn = self.param_names.get(weight.name, "")
        elif weight.op == "get_attr":
            fqn = str(weight.target)
        else:
            return None
        owner, _, leaf = fqn.rpartition(".")
        mod = self.modules.get(owner)
        if leaf == "weight" and isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            return owner
        return None


def shape(node: fx.Node) -> tuple[int, ...] | None:
    """The static shape recorded on a node by FakeTensorProp or torch.export."""
    val = node.meta.get("val", node.meta.get("tensor_meta"))
    if val is None or not hasattr(val, "shape"):
        return None
    return tuple(int(s) for s in val.shape)


_ALIGNED_MODES = ("linear", "bilinear", "bicubic", "trilinear")


def _upsample_call(mode: str, align_corners: bool | None) -> UpsampleCall:
    # F.interpolate reads align_corners=None as False for the modes that take it.
    if mode in _ALIGNED_MODES:
        return UpsampleCall(mode, bool(align_corners))
    return UpsampleCall(mode, None)


def _packet(node: fx.Node) -> object:
    return getattr(node.target, "overloadpacket", None)


def _static_int(value: object) -> int | None:
    # fx records sizes computed from shapes as nodes; the shape pass stored their values.
    if isinstance(value, fx.Node):
        value = value.meta.get("val")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _layout_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    packet = _packet(node)
    if packet is not None:
        return str(packet).rpartition(".")[2]
    return getattr(node.target, "__name__", "")


def _permutation(name: str, node: fx.Node, ndim: int) -> list[int] | None:
    """``perm`` with ``out.dim(j) == in.dim(perm[j])`` for permute/transpose/movedim nodes."""
    rest = list(node.args[1:])
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


def _module_op(mod: nn.Module) -> str:
    if isinstance(mod, nn.Linear):
        return "linear"
    assert isinstance(mod, nn.modules.conv._ConvNd)
    kind = "conv_transpose" if mod.transposed else "conv"
    return f"{kind}{len(mod.kernel_size)}d"


def clean_path(path: str) -> str:
    """A module path as ``nn_module_stack`` records it, spelled as a plain qualified name.

    >>> clean_path("L['self'].decode_head._modules['0']")
    'decode_head.0'
    """
    for prefix in ("L['self'].", "L['self']", "L__self__"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    return path.replace("._modules['", ".").replace("']", "")
