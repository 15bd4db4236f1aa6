"""Capture a model's forward as a torch.fx graph: symbolic tracing first, torch.export as fallback.

Both frontends give a ``torch.fx.GraphModule``; every node carries ``meta["val"]`` (a fake tensor with the
shape) afterwards, so site finding reads shapes the same way for either.

    model ──symbolic_trace──▶ GraphModule ──FakeTensorProp──▶ shapes in node.meta["val"]
          └─(raises)─▶ torch.export.export(strict=False) ──▶ ExportedProgram.graph_module
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
from eqsurgeon.errors import CaptureError, one_line
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
    """

    graph_module: fx.GraphModule
    frontend: str
    fx_error: str | None = None
    param_names: Mapping[str, str] = field(default_factory=dict)
    program: torch.export.ExportedProgram | None = None

    def as_module(self) -> nn.Module:
        """A callable module with the model's signature that runs the captured graph."""
        return self.program.module() if self.program is not None else self.graph_module


def capture(model: nn.Module, example_input: torch.Tensor, frontend: str = "auto") -> Captured:
    """Capture ``model`` on ``example_input``; the model's state is unchanged afterwards.

    Args:
        model: any ``nn.Module`` taking one image batch.
        example_input: a batch of the size that will be analysed (shapes and upsample factors come from it).
        frontend: ``"auto"`` (fx, then export when fx raises), ``"fx"`` or ``"export"``.

    Raises:
        CaptureError: when the requested frontend(s) cannot capture the model.

    >>> cap = capture(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 8, 8))
    >>> cap.frontend
    'fx'
    """
    if frontend not in FRONTENDS:
        raise CaptureError(f"unknown frontend {frontend!r}; use one of {', '.join(FRONTENDS)}")
    fx_error = None
    # Captured in eval mode so that tracing neither updates BN buffers nor draws dropout masks.
    with preserved_state(model), torch.no_grad(), _quiet():
        model.eval()
        if frontend in ("auto", "fx"):
            try:
                return Captured(_symbolic_trace(model, example_input), "fx")
            except Exception as exc:  # any tracing failure means: try the other frontend
                fx_error = _one_line(exc)
                if frontend == "fx":
                    raise CaptureError(
                        f"torch.fx cannot trace the model ({fx_error}); try --frontend export"
                    ) from exc
        try:
            program = torch.export.export(model, (example_input,), strict=False)
        except Exception as exc:
            tried = f"torch.fx: {fx_error}; " if fx_error else ""
            raise CaptureError(
                f"cannot capture the model ({tried}torch.export: {_one_line(exc)}); make forward traceable "
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


def _symbolic_trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph, model.__class__.__name__)
    # Shapes on fake tensors: no real compute, so analysis costs one real forward, not two.
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, mode).propagate(mode.from_tensor(example_input))
    return gm


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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"  # whole sentences, no escape codes
