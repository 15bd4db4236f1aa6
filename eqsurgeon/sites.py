"""Find fusion sites: channel concats whose result reaches a conv/linear through scale-preserving ops.

Pure analysis over a captured graph; never mutates the model.

    up(P2) ─┐                                         subjects: P1 [0:C1)        ratio 1
    P1 ─────┼─▶ cat(dim=1) ─▶ dropout ─▶ conv  ==▶    up(P2) [C1:C1+C2)  bilinear ×2
    up(P3) ─┘                                         up(P3) [...]       bilinear ×4
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from eqsurgeon.capture import Captured, capture
from eqsurgeon.graph_ops import Fusing, OpView, shape
from eqsurgeon.records import AddSite, FusionSite, Subject, Upsample


@dataclass(frozen=True)
class Findings:
    """Everything site finding reports for one graph, in topological order."""

    sites: tuple[FusionSite, ...]
    add_sites: tuple[AddSite, ...]


def find_sites(model: nn.Module, example_input: torch.Tensor, frontend: str = "auto") -> list[FusionSite]:
    """Capture ``model`` and list its fusion sites.

    Args:
        model: the segmentation model (left unchanged).
        example_input: a batch at the size to analyse; upsample factors are read at this size.
        frontend: ``"auto"``, ``"fx"`` or ``"export"`` (see :func:`eqsurgeon.capture.capture`).

    Returns:
        Sites in topological order, skipped ones included (``status == "skipped"``).

    >>> class Fuse(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(6, 2, 1)
    ...     def forward(self, x):
    ...         up = nn.functional.interpolate(x[:, :, ::2, ::2], scale_factor=2.0, mode="bilinear")
    ...         return self.conv(torch.cat([x, up], dim=1))
    >>> [s.layer for s in find_sites(Fuse(), torch.randn(1, 3, 8, 8))]
    ['conv']
    """
    return list(find(capture(model, example_input, frontend), model).sites)


def find(captured: Captured, model: nn.Module) -> Findings:
    """Find fusion and add sites in an already captured graph of ``model``."""
    view = OpView(model, captured.frontend, captured.param_names)
    graph = captured.graph_module.graph
    calls = Counter(key for n in graph.nodes if view.fusing(n) and (key := view.weight_key(n)))
    found: list[tuple[fx.Node, FusionSite]] = []
    for node in graph.nodes:
        if view.is_cat(node):
            found.extend(_sites_of_cat(view, node, calls))
    # Topological order of the fusing layers: an earlier site's fold can change a later site's inputs.
    order = {n: i for i, n in enumerate(graph.nodes)}
    sites = [site for _, site in sorted(found, key=lambda pair: order[pair[0]])]
    adds = tuple(a for n in graph.nodes if view.is_add(n) and (a := _add_site(view, n)))
    return Findings(tuple(sites), adds)


def _sites_of_cat(view: OpView, cat: fx.Node, calls: Counter[str]) -> list[tuple[fx.Node, FusionSite]]:
    out_shape = shape(cat)
    if out_shape is None:
        return []
    ndim = len(out_shape)
    dim = view.cat_parts(cat)[1] % ndim
    found = []
    for consumer in _consumers(view, cat):
        fusing = view.fusing(consumer)
        assert fusing is not None
        if fusing.op == "linear":
            if dim != ndim - 1:
                continue
            channel_dim = -1
        elif dim != 1:
            continue
        else:
            channel_dim = 1
        subjects = tuple(_subjects(view, cat, dim, 0, None))
        found.append((consumer, _make_site(view, consumer, fusing, subjects, channel_dim, calls)))
    return found


def _make_site(
    view: OpView,
    consumer: fx.Node,
    fusing: Fusing,
    subjects: tuple[Subject, ...],
    channel_dim: int,
    calls: Counter[str],
) -> FusionSite:
    if fusing.module_name is None:
        reason = f"functional {fusing.op} with no module of its own: there is no layer to hook or fold"
        return FusionSite(consumer.name, fusing.op, 1, subjects, channel_dim, "skipped", reason)
    mod = view.modules[fusing.module_name]
    site = FusionSite(fusing.module_name, fusing.op, getattr(mod, "groups", 1), subjects, channel_dim)
    n_calls = calls[view.weight_key(consumer) or ""]
    width = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
    if n_calls > 1:
        reason = f"module runs {n_calls} times per forward; folding would rescale every call"
    elif subjects[-1].channels[1] != width:
        reason = f"concat gives {subjects[-1].channels[1]} channels but the layer takes {width}"
    else:
        return site
    return replace(site, status="skipped", reason=reason)


def _consumers(view: OpView, node: fx.Node) -> list[fx.Node]:
    """Conv/linear nodes that take ``node`` as input through scale-preserving ops only."""
    found, stack = [], [node]
    while stack:
        cur = stack.pop()
        for user in cur.users:
            first = user.args[0] if user.args else None
            if first is not cur:
                continue
            if view.fusing(user):
                found.append(user)
            elif view.is_transparent(user):
                stack.append(user)
    return found


def _subjects(view: OpView, cat: fx.Node, dim: int, offset: int, outer: Upsample | None) -> list[Subject]:
    parts, _ = view.cat_parts(cat)
    subjects: list[Subject] = []
    for part in parts:
        source, up = _trace_back(view, part)
        up = up or outer
        if view.is_cat(source) and shape(source) and view.cat_parts(source)[1] % len(shape(source)) == dim:
            inner = _subjects(view, source, dim, offset, up)  # nested concats flatten
            subjects.extend(inner)
            offset = inner[-1].channels[1] if inner else offset
            continue
        width = shape(part)[dim]
        subjects.append(Subject((offset, offset + width), view.describe(source), up))
        offset += width
    return subjects


def _trace_back(view: OpView, node: fx.Node) -> tuple[fx.Node, Upsample | None]:
    """Walk back over scale-preserving and layout ops and at most one interpolation to the producer."""
    up = None
    while isinstance(node, fx.Node):
        call = view.upsample(node) if up is None else None
        if call is not None:
            src = node.args[0]
            factor = _factor(shape(src), shape(node))
            up = Upsample(call.mode, factor, call.align_corners)
            node = src
        elif view.is_transparent(node) or view.is_layout(node):
            node = node.args[0]
        else:
            break
    return node, up


def _factor(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> tuple[float, ...]:
    if not before or not after:
        return ()
    return tuple(round(a / b, 4) for a, b in zip(after[2:], before[2:]))


def _add_site(view: OpView, node: fx.Node) -> AddSite | None:
    inputs = []
    for arg in node.args[:2]:
        if not isinstance(arg, fx.Node) or shape(arg) is None:
            return None
        source, up = _trace_back(view, arg)
        width = shape(arg)[1] if len(shape(arg)) > 1 else 1
        inputs.append(Subject((0, width), view.describe(source), up))
    if not any(s.upsample for s in inputs):
        return None
    return AddSite(view.describe(node, with_node=True), tuple(inputs))
