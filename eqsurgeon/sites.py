"""Find fusion sites: channel concats whose result reaches a conv/linear through scale-preserving ops.

Pure analysis over a captured graph (opaque leaves inlined by capture); never mutates the model.

    up(P2) ─┐                                         subjects: P1 [0:C1)        ratio 1
    P1 ─────┼─▶ cat(dim=1) ─▶ dropout ─▶ conv  ==▶    up(P2) [C1:C1+C2)  bilinear ×2
    up(P3) ─┘                                         up(P3) [...]       bilinear ×4

Between the concat and the layer, scale-preserving ops pass (dropout, identity, copies, casts to a
floating dtype), and so do ops that keep every channel whole while the channel dim is followed: spatial
padding, reshapes that keep the channel dim, permutes that move it, full slices, expands that repeat other
dims. A Linear fuses the channels on its last dim (``channel_dim=-1``). Walking back from the concat, an
``expand`` that repeats positions (a pooled 1×1 map broadcast to H×W) is read as a nearest upsample.

    cat(dim=1) ─▶ pad(H, W) ─▶ conv              cat(dim=1) ─▶ flatten(2) ─▶ transpose(1, 2) ─▶ linear
    channel dim: 1 ─────────▶ 1                  channel dim: 1 ───────▶ 1 ────────────▶ 2 = last
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from eqsurgeon.capture import Captured, capture
from eqsurgeon.graph_ops import Fusing, OpView, shape
from eqsurgeon.records import AddSite, FusionSite, Subject, UnsearchedLeaf, Upsample


@dataclass(frozen=True)
class Findings:
    """Everything site finding reports for one graph, in topological order.

    ``unsearched`` lists the opaque leaves that could not be traced: a site inside one is unknown.
    """

    sites: tuple[FusionSite, ...]
    add_sites: tuple[AddSite, ...]
    unsearched: tuple[UnsearchedLeaf, ...] = ()


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
    view = OpView(model, captured.param_names)
    graph = captured.graph
    calls = Counter(key for n in graph.nodes if view.fusing(n) and (key := view.weight_key(n)))
    found: list[tuple[fx.Node, FusionSite]] = []
    for node in graph.nodes:
        if view.is_cat(node):
            found.extend(_sites_of_cat(view, node, calls))
    # Topological order of the fusing layers: an earlier site's fold can change a later site's inputs.
    order = {n: i for i, n in enumerate(graph.nodes)}
    sites = [site for _, site in sorted(found, key=lambda pair: order[pair[0]])]
    adds = tuple(a for n in graph.nodes if (a := _add_site(view, n)))
    return Findings(tuple(sites), adds, captured.unsearched)


def _sites_of_cat(view: OpView, cat: fx.Node, calls: Counter[str]) -> list[tuple[fx.Node, FusionSite]]:
    out_shape = shape(cat)
    if out_shape is None:
        return []
    dim = view.cat_parts(cat)[1] % len(out_shape)
    # An empty part (``x[:, :0]``) adds no channel: it has no scale to equalize.
    subjects = tuple(s for s in _subjects(view, cat, dim, 0, None) if s.channels[1] > s.channels[0])
    if not subjects:
        return []
    found = []
    for consumer, at in _consumers(view, cat, dim):
        fusing = view.fusing(consumer)
        assert fusing is not None
        in_shape = shape(view.input_of(consumer)) or ()
        if fusing.op == "linear":
            if at != len(in_shape) - 1:
                continue
            channel_dim = -1
        elif at != 1:
            continue
        else:
            channel_dim = 1
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


def _consumers(view: OpView, node: fx.Node, dim: int) -> list[tuple[fx.Node, int]]:
    """Conv/linear nodes that take ``node`` as input through ops that keep every channel whole, each with
    the dim that holds ``node``'s dim ``dim`` at the layer's input."""
    found, stack, seen = [], [(node, dim)], set()
    while stack:
        cur, at = stack.pop()
        for user in cur.users:
            if view.input_of(user) is not cur or (user, at) in seen:
                continue
            seen.add((user, at))
            if view.fusing(user):
                found.append((user, at))
            elif view.is_transparent(user):
                stack.append((user, at))
            elif (nxt := _channels_kept(view, user, at)) is not None:
                stack.append((user, nxt))
    return found


def _channels_kept(view: OpView, node: fx.Node, at: int) -> int | None:
    """The channel dim after a padding, layout or broadcasting node that keeps channel dim ``at`` whole,
    else None."""
    if (bcast := view.broadcast(node)) is not None:
        before, after = bcast
        lead = len(after) - len(before)
        return at + lead if before[at] == after[at + lead] else None
    padded = view.padded_dims(node)
    if padded is not None:
        ndim = len(shape(node) or ())
        return at if ndim and all(d % ndim != at for d in padded) else None
    return view.channel_dim_after(node, at)


def _subjects(view: OpView, cat: fx.Node, dim: int, offset: int, outer: Upsample | None) -> list[Subject]:
    parts, _ = view.cat_parts(cat)
    if isinstance(parts, fx.Node):
        return _listed_subjects(view, parts, dim, offset, outer)
    subjects: list[Subject] = []
    for part in parts:
        source, up = _trace_back(view, part, dim)
        up = up or outer
        if view.is_cat(source) and shape(source) and view.cat_parts(source)[1] % len(shape(source)) == dim:
            inner = _subjects(view, source, dim, offset, up)  # nested concats flatten
            subjects.extend(inner)
            offset = inner[-1].channels[1] if inner else offset
            continue
        part_shape = shape(part) or ()
        width = part_shape[dim] if dim < len(part_shape) else 0  # torch.cat still takes a 1-D empty tensor
        subjects.append(Subject((offset, offset + width), view.describe(source), up))
        offset += width
    return subjects


def _listed_subjects(
    view: OpView, listed: fx.Node, dim: int, offset: int, outer: Upsample | None
) -> list[Subject]:
    """Subjects of a concat whose tensors came as one list from a call the walk cannot enter: each is
    named ``producer[i]``, its width read from the recorded list; what made each tensor is not seen."""
    values = listed.meta.get("val")
    widths = [int(v.shape[dim]) for v in values] if isinstance(values, (list, tuple)) else []
    subjects = []
    for i, width in enumerate(widths):
        subjects.append(Subject((offset, offset + width), f"{view.describe(listed)}[{i}]", outer))
        offset += width
    return subjects


def _trace_back(view: OpView, node: fx.Node, dim: int | None) -> tuple[fx.Node, Upsample | None]:
    """Walk back over scale-preserving and layout ops and at most one interpolation to the producer.

    ``dim`` is the channel dim at ``node`` (followed back through layout ops; ``None`` once lost): an
    ``expand`` passes only while it repeats other dims, and one that repeats positions is an upsample.
    """
    up = None
    while True:
        if (bcast := view.broadcast(node)) is not None:
            step = _broadcast_step(*bcast, dim)
            if step is None or (step[1] is not None and up is not None):
                return node, up
            dim, factor = step
            up = Upsample("nearest", factor, None) if factor is not None else up
            node = view.input_of(node)  # not None: broadcast() read its shape
            continue
        call = view.upsample(node) if up is None else None
        passes = call is not None or view.is_transparent(node) or view.is_layout(node)
        src = view.input_of(node) if passes or view.padded_dims(node) is not None else None
        if src is None:
            return node, up
        if call is not None:
            up = Upsample(call.mode, _factor(shape(src), shape(node)), call.align_corners)
        elif view.is_layout(node):
            dim = _dim_before(view, node, src, dim)
        node = src


def _dim_before(view: OpView, node: fx.Node, src: fx.Node, dim: int | None) -> int | None:
    """The dim of a layout node's input that its output holds at ``dim``, or ``None``."""
    ndim = len(shape(src) or ())
    if dim is None or not ndim:
        return None
    return next((d for d in range(ndim) if view.channel_dim_after(node, d) == dim), None)


def _broadcast_step(
    before: tuple[int, ...], after: tuple[int, ...], dim: int | None
) -> tuple[int, tuple[float, ...] | None] | None:
    """What an expand from ``before`` to ``after`` does to a feature whose channel dim is ``dim`` after it.

    Returns the channel dim before it and, when it repeats positions, the factor of that replicating
    (nearest) upsample, as for an interpolation from a pooled 1×1 map; ``None`` for the factor when it
    repeats only the batch. ``None`` when it repeats the channel dim itself, or the dim is not known.

    >>> _broadcast_step((1, 6, 1, 1), (2, 6, 8, 8), 1), _broadcast_step((1, 6, 4, 4), (2, 6, 4, 4), 1)
    ((1, (8.0, 8.0)), (1, None))
    """
    lead = len(after) - len(before)
    if dim is None or dim < lead or before[dim - lead] != after[dim]:
        return None
    sizes = (1,) * lead + before
    # The batch is dim 0; every other dim but the channel dim holds positions (H, W; tokens).
    factor = tuple(round(after[j] / sizes[j], 4) for j in range(1, len(after)) if j != dim)
    return dim - lead, (factor if any(f != 1 for f in factor) else None)


def _factor(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> tuple[float, ...]:
    if not before or not after:
        return ()
    return tuple(round(a / b, 4) for a, b in zip(after[2:], before[2:]))


def _add_site(view: OpView, node: fx.Node) -> AddSite | None:
    terms = view.added(node)
    if terms is None:
        return None
    inputs = []
    for arg in terms:
        if not isinstance(arg, fx.Node) or shape(arg) is None:
            return None
        wide = len(shape(arg)) > 1
        source, up = _trace_back(view, arg, 1 if wide else None)
        width = shape(arg)[1] if wide else 1
        inputs.append(Subject((0, width), view.describe(source), up))
    if not any(s.upsample for s in inputs):
        return None
    return AddSite(view.describe(node, with_node=True), tuple(inputs))
