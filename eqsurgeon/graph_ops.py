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
from eqsurgeon.call_args import first_input
from eqsurgeon.channels import channel_dim_after, layout_op, op_packet, padded_dims
from eqsurgeon.op_tables import (
    ADD_ATEN,
    ADD_FUNCS,
    BROADCAST_ATEN,
    BROADCAST_FUNCS,
    BROADCAST_METHODS,
    CAST_ATEN,
    CAST_METHODS,
    CAT_ATEN,
    CAT_FUNCS,
    FUSING_ATEN,
    FUSING_FUNCS,
    INTERP_FUNCS,
    STACK_FUNCS,
    SUM_FUNCS,
    TRANSPARENT_ATEN,
    TRANSPARENT_FUNCS,
    TRANSPARENT_METHODS,
    TRANSPARENT_MODULES,
    UPSAMPLE_ATEN,
)

aten = torch.ops.aten


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

    def __init__(self, model: nn.Module, param_names: Mapping[str, str]) -> None:
        self.param_names = dict(param_names)
        self.modules = dict(model.named_modules())

    def module(self, node: fx.Node) -> nn.Module | None:
        if node.op == "call_module":
            return self.modules.get(str(node.target))
        return None

    def input_of(self, node: fx.Node) -> fx.Node | None:
        """The tensor a node transforms: its first argument, passed by position or by keyword
        (symbolic tracing records ``conv(input=x)`` as written; torch.export always by position)."""
        if node.op == "call_module":
            mod = self.module(node)
            fn = mod.forward if mod is not None else None
        else:
            fn = node.target if node.op == "call_function" else None
        first = first_input(node.args, node.kwargs, fn)
        return first if isinstance(first, fx.Node) else None

    def is_cat(self, node: fx.Node) -> bool:
        return node.op == "call_function" and (node.target in CAT_FUNCS or op_packet(node) in CAT_ATEN)

    def cat_parts(self, node: fx.Node) -> tuple[list[fx.Node] | fx.Node, int]:
        """The concatenated tensors and the dim; the tensors are one node when a module or function
        returned the whole list (fx records ``cat(self.neck(xs))`` so; export lists the tensors)."""
        parts = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return (parts if isinstance(parts, fx.Node) else list(parts)), int(dim)

    def is_add(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in ("add", "add_")
        return node.op == "call_function" and (node.target in ADD_FUNCS or op_packet(node) in ADD_ATEN)

    def added(self, node: fx.Node) -> list[object] | None:
        """The terms an add node sums: its two operands, or the tensors of ``stack(xs).sum(0)`` (a merge
        by addition, as smp's FPN writes it); ``None`` for any other node."""
        # Symbolic tracing records keywords as written: ``torch.add(input=a, other=b)``,
        # ``torch.sum(input=torch.stack(xs), dim=0)``.
        if self.is_add(node):
            other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
            return [self.input_of(node), other]
        if not _is_sum(node):
            return None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        stacked = self.input_of(node)
        if dim not in (0, [0], (0,)) or not isinstance(stacked, fx.Node):
            return None
        if not (
            stacked.op == "call_function"
            and (stacked.target in STACK_FUNCS or op_packet(stacked) is aten.stack)
        ):
            return None
        parts = stacked.args[0] if stacked.args else stacked.kwargs.get("tensors")
        stack_dim = stacked.args[1] if len(stacked.args) > 1 else stacked.kwargs.get("dim", 0)
        return list(parts) if stack_dim == 0 and isinstance(parts, (list, tuple)) else None

    def upsample(self, node: fx.Node) -> UpsampleCall | None:
        """Mode of an interpolation node, or ``None`` when the node is something else."""
        mod = self.module(node)
        if isinstance(mod, nn.Upsample):  # UpsamplingBilinear2d / Nearest2d are subclasses
            return _upsample_call(mod.mode, mod.align_corners)
        if node.op != "call_function":
            return None
        custom = registry.upsample_functions()
        if node.target in INTERP_FUNCS or node.target in custom:
            default = INTERP_FUNCS.get(node.target) or custom[node.target]
            align = node.kwargs.get("align_corners", node.args[4] if len(node.args) > 4 else None)
            if node.target is F.upsample_bilinear:
                align = True
            mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else default)
            return _upsample_call(str(mode), align)
        mode = UPSAMPLE_ATEN.get(op_packet(node))
        if mode is None:
            return None
        align = node.args[2] if mode in _ALIGNED_MODES else None
        return _upsample_call(mode, align if isinstance(align, bool) else None)

    def is_transparent(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.module(node), TRANSPARENT_MODULES)
        if node.op == "call_method":
            return node.target in TRANSPARENT_METHODS or (node.target in CAST_METHODS and _floating(node))
        if node.op != "call_function":
            return False
        if node.target in TRANSPARENT_FUNCS or op_packet(node) in TRANSPARENT_ATEN:
            return True
        if op_packet(node) in CAST_ATEN:
            return _floating(node)
        # native_dropout returns (output, mask); element 0 carries the feature.
        if node.target is operator.getitem and node.args[1] == 0 and isinstance(node.args[0], fx.Node):
            return op_packet(node.args[0]) is aten.native_dropout
        return op_packet(node) is aten.native_dropout

    def is_layout(self, node: fx.Node) -> bool:
        return layout_op(node) is not None

    def padded_dims(self, node: fx.Node) -> tuple[int, ...] | None:
        """Dims a padding node pads by a nonzero amount (-1 is the last), or ``None`` when the node
        is no padding or its amounts are not known statically."""
        return padded_dims(node, self.module(node))

    def channel_dim_after(self, node: fx.Node, dim: int) -> int | None:
        """Where dim ``dim`` of a layout node's input sits in its output, or ``None`` when the node
        splits or merges it (or is not a layout op)."""
        source = self.input_of(node)
        before = shape(source) if source is not None else None
        after = shape(node)
        if before is None or after is None:
            return None
        return channel_dim_after(node, before, after, dim)

    def broadcast(self, node: fx.Node) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Input and output shapes of an ``expand``/``expand_as``/``broadcast_to`` node, else ``None``."""
        if node.op == "call_method":
            found = node.target in BROADCAST_METHODS
        else:
            found = node.op == "call_function" and (
                node.target in BROADCAST_FUNCS or op_packet(node) in BROADCAST_ATEN
            )
        source = self.input_of(node) if found else None
        before, after = (shape(source) if source is not None else None), shape(node)
        return (before, after) if before is not None and after is not None else None

    def fusing(self, node: fx.Node) -> Fusing | None:
        """The conv/linear a node runs, with its module name when it is a module call."""
        mod = self.module(node)
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            return Fusing(_module_op(mod), str(node.target))
        if node.op != "call_function":
            return None
        if node.target in FUSING_FUNCS:
            return Fusing(FUSING_FUNCS[node.target], None)
        op = FUSING_ATEN.get(op_packet(node))
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


def _is_sum(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target == "sum"
    return node.op == "call_function" and (node.target in SUM_FUNCS or op_packet(node) is aten.sum)


def _floating(node: fx.Node) -> bool:
    # A cast keeps a feature's scale into float16/32/64 or bfloat16; into an integer dtype it rounds.
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


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
