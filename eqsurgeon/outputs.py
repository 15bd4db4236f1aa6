"""The one reader of a segmentation model's forward output: main logits, and auxiliary logits if any.

Every caller that needs logits (the trainer's loss, evaluation, inference) goes through
:func:`split_outputs`, so a model works everywhere or nowhere. Accepted outputs, checked in this order:

==================================================  ============================  =====================
output                                              main                          auxiliary
==================================================  ============================  =====================
a tensor                                            itself                        —
an object with ``.logits`` (transformers'           ``.logits``                   ``.auxiliary_logits``
``SemanticSegmenterOutput``, a dict subclass)                                     when present
a mapping with ``"out"`` (torchvision)              ``["out"]``                   ``["aux"]``
a tuple/list (the zoo's ``(main, aux)``; smp with   first item                    second item when it
``aux_params``: ``(mask, class_logits)``)                                         is a map like main
==================================================  ============================  =====================

smp's class logits ``[N, classes]`` are an image-level classification, not a segmentation map, so they
are never taken for auxiliary logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from eqsurgeon.errors import ModelLoadError

FORMS = "a tensor, an object with .logits, a dict with 'out' (and 'aux'), or a (main, aux) tuple"


def split_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) from a model's forward output.

    Raises:
        ModelLoadError: no logits tensor can be found in ``out``.

    >>> m = torch.zeros(1, 2, 4, 4)
    >>> split_outputs((m, m))[1] is m, split_outputs({"out": m})[1]
    (True, None)
    >>> split_outputs((m, torch.zeros(1, 5)))[1] is None  # smp's classification head
    True
    """
    if isinstance(out, torch.Tensor):
        return out, None
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):  # before Mapping: transformers' outputs are dicts too
        return logits, _aux(logits, getattr(out, "auxiliary_logits", None))
    if isinstance(out, Mapping) and isinstance(out.get("out"), torch.Tensor):
        return out["out"], _aux(out["out"], out.get("aux"))
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0], _aux(out[0], out[1] if len(out) > 1 else None)
    raise ModelLoadError(
        f"cannot find logits in a forward output of type {type(out).__name__}; return {FORMS}"
    )


def main_output(out: Any) -> torch.Tensor:
    """The main logits of a forward output (see :func:`split_outputs`).

    >>> main_output({"out": torch.ones(1, 2, 2, 2)}).shape
    torch.Size([1, 2, 2, 2])
    """
    return split_outputs(out)[0]


def _aux(main: torch.Tensor, aux: Any) -> torch.Tensor | None:
    # an auxiliary segmentation map has the main map's layout: [N, C, h, w]
    if isinstance(aux, torch.Tensor) and aux.dim() == main.dim() and aux.shape[0] == main.shape[0]:
        return aux
    return None
