"""Capture a model's forward as a torch.fx graph: symbolic tracing first, torch.export as fallback.

Both frontends give a ``torch.fx.GraphModule``; every node carries ``meta["val"]`` (a meta or fake tensor
with the shape) afterwards, so site finding reads shapes the same way for either. Modules that symbolic
tracing keeps as one call are traced on their own on the inputs the shape pass gives them
(:mod:`eqsurgeon.leaves`) and inlined into ``Captured.graph``, the graph site finding reads
(:mod:`eqsurgeon.inline`).

    model ──symbolic_trace──▶ GraphModule ──meta shapes, leaves on fake inputs──▶ graph with leaves inlined
          │                              └─(meta refuses an op)─▶ LeafSearch (fake shapes throughout)
          └─(raises)─▶ torch.export.export(strict=False) ──▶ ExportedProgram.graph_module (no leaves)
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from eqsurgeon import registry
from eqsurgeon.errors import CaptureError
from eqsurgeon.inline import inline_leaves
from eqsurgeon.leaves import LeafSearch, is_opaque, one_line, search_leaves
from eqsurgeon.meta_shapes import meta_shapes
from eqsurgeon.records import UnsearchedLeaf
from eqsurgeon.state import preserved_state

FRONTENDS = ("auto", "fx", "export")


@dataclass(frozen=True)
class Captured:
    """A captured graph and how it was obtained.

    Attributes:
        graph_module: the graph; for ``export`` the exported program's graph module.
        frontend: ``"fx"`` or ``"export"``.
        fx_error: one line saying why symbolic tracing failed, when it was tried and failed.
        param_names: for ``export``, placeholder name → parameter FQN in the model; empty for ``fx``.
        program: for ``export``, the exported program (its graph takes parameters as inputs).
        flat: for ``fx``, the graph with every searchable leaf call replaced by the leaf's nodes.
        unsearched: leaves that neither frontend could trace on their inputs; they stay one call.
    """

    graph_module: fx.GraphModule
    frontend: str
    fx_error: str | None = None
    param_names: Mapping[str, str] = field(default_factory=dict)
    program: torch.export.ExportedProgram | None = None
    flat: fx.Graph | None = None
    unsearched: tuple[UnsearchedLeaf, ...] = ()

    @property
    def graph(self) -> fx.Graph:
        """The graph site finding reads: leaves inlined (fx), or the exported graph."""
        return self.flat if self.flat is not None else self.graph_module.graph

    def as_module(self) -> nn.Module:
        """A callable module with the model's signature that runs the captured graph."""
        return self.program.module() if self.program is not None else self.graph_module


def capture(model: nn.Module, example_input: torch.Tensor, frontend: str = "auto") -> Captured:
    """Capture ``model`` on ``example_input``; the model's state is unchanged afterwards.

    Args:
        model: any ``nn.Module`` taking one image batch.
        example_input: a batch of the size that will be analysed (shapes and upsample factors come from it).
        frontend: ``"auto"`` (fx; export when fx raises or leaves a leaf module unsearched, unless
            export fails too), ``"fx"`` or ``"export"``.

    Raises:
        CaptureError: when the requested frontend(s) cannot capture the model.

    >>> cap = capture(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 8, 8))
    >>> cap.frontend
    'fx'
    """
    if frontend not in FRONTENDS:
        raise CaptureError(f"unknown frontend {frontend!r}; use one of {', '.join(FRONTENDS)}")
    fx_error = None
    traced = None
    # Captured in eval mode so that tracing neither updates BN buffers nor draws dropout masks.
    with preserved_state(model), torch.no_grad(), _quiet():
        model.eval()
        if frontend in ("auto", "fx"):
            try:
                traced = _symbolic_trace(model, example_input)
            except Exception as exc:  # any tracing failure means: try the other frontend
                fx_error = one_line(exc)
                if frontend == "fx":
                    raise CaptureError(
                        f"torch.fx cannot trace the model ({fx_error}); try --frontend export"
                    ) from exc
            if traced is not None and (frontend == "fx" or not traced.unsearched):
                return traced
            if traced is not None:
                # Export's graph has no leaves: it may see inside the ones fx's could not search.
                names = ", ".join(u.name for u in traced.unsearched)
                fx_error = f"leaf module(s) {names} could not be searched under torch.fx"
        try:
            program = torch.export.export(model, (example_input,), strict=False)
        except Exception as exc:
            if traced is not None:
                return traced  # its unsearched leaves are reported
            tried = f"torch.fx: {fx_error}; " if fx_error else ""
            raise CaptureError(
                f"cannot capture the model ({tried}torch.export: {one_line(exc)}); make forward traceable "
                "or register untraceable submodules with eqsurgeon.register_leaf_module"
            ) from exc
    params = dict(program.graph_signature.inputs_to_parameters)
    return Captured(program.graph_module, "export", fx_error, params, program)


class _Tracer(fx.Tracer):
    """Symbolic tracer that keeps registered (and timm's) leaf modules and every conv/linear whole."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=registry.autowrap_functions())
        self._leaves = registry.leaf_modules() + _FUSING_TYPES

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Subclasses of conv/linear (timm's Conv2dSame, StdConv2d...) stay one call so hooks see their input.
        return isinstance(m, self._leaves) or super().is_leaf_module(m, module_qualified_name)


_FUSING_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def _symbolic_trace(model: nn.Module, example_input: torch.Tensor) -> Captured:
    from torch._subclasses.fake_tensor import FakeTensorMode

    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph, model.__class__.__name__)
    # Shapes without real compute, so analysis costs one real forward, not two: from meta tensors, with
    # each opaque leaf then traced on fake tensors shaped like its inputs; when meta tensors cannot run
    # the graph, from fake tensors, which also trace each leaf as they reach it.
    calls = meta_shapes(gm, example_input, lambda m: is_opaque(m, _FUSING_TYPES))
    if calls is not None:
        children = search_leaves(gm, calls, example_input.device, _FUSING_TYPES)
        flat, unsearched = inline_leaves(gm.graph, children)
        return Captured(gm, "fx", flat=flat, unsearched=unsearched)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    search = LeafSearch(gm, mode, _FUSING_TYPES)
    search.propagate(mode.from_tensor(example_input))
    flat, unsearched = inline_leaves(gm.graph, search.children)
    return Captured(gm, "fx", flat=flat, unsearched=unsearched)


@contextmanager
def _quiet() -> Iterator[None]:
    # Tracers log, warn and print (torch.export prints a failed partial graph to stderr) while they
    # probe; a failed capture is reported in one line instead.
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
