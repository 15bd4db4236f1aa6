"""Describe zoo models: exact parameter count, GFLOPs at 512×512, fusion-site count, paper table.

Parameters and FLOPs are computed on the meta device (no memory, no weights), so describing the largest
model takes about a second. FLOPs follow the convention of the papers' tables (fvcore, mmcv's
``get_flops``): one multiply-add counts as one FLOP, i.e. ``torch.utils.flop_counter`` total / 2.

>>> s = summarize("upernet_tiny", sites=False)
>>> s.name, s.params > 0, s.sites is None
('upernet_tiny', True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eqsurgeon.registry import create_model, model_entry

FLOPS_SIZE = (512, 512)
SITES_SIZE = (64, 64)


@dataclass(frozen=True)
class ModelSummary:
    """What ``eqsurgeon models`` shows about one zoo model.

    Attributes:
        name: registry name.
        params: exact parameter count (150 classes, auxiliary head included).
        gflops: multiply-adds in billions for one 3×512×512 image in eval mode; None if not computed.
        sites: concat fusion sites ``find_sites`` reports (eval graph: the auxiliary head has none);
            None if not computed.
        paper_table: the paper table the model's numbers appear in ("" if none).
        mmseg_config: the MMSegmentation config it mirrors ("" if none).
        tags: registry tags (e.g. "tiny").
    """

    name: str
    params: int
    gflops: float | None
    sites: int | None
    paper_table: str
    mmseg_config: str
    tags: tuple[str, ...]


def summarize(name: str, flops: bool = True, sites: bool = True) -> ModelSummary:
    """Summarize the zoo model ``name``.

    Args:
        name: a registered zoo model name.
        flops: count FLOPs at 512×512 (meta device, ~1 s for the large models).
        sites: count fusion sites with ``eqsurgeon.find_sites`` at 64×64 (meta device, seconds per model).

    Returns:
        The summary record.

    >>> summarize("fcn_tiny", sites=False).gflops > 0
    True
    """
    entry = model_entry(name)
    with torch.device("meta"):
        meta_model = create_model(name).eval()
    params = sum(p.numel() for p in meta_model.parameters())
    gflops = _gflops(meta_model) if flops else None
    n_sites = _count_sites(meta_model) if sites else None
    return ModelSummary(name, params, gflops, n_sites, entry.paper_table, entry.mmseg_config, entry.tags)


def _gflops(meta_model: nn.Module) -> float:
    x = torch.empty(1, 3, *FLOPS_SIZE, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(x)
    return counter.get_total_flops() / 2e9


def _count_sites(meta_model: nn.Module) -> int:
    from eqsurgeon.sites import find_sites  # the analysis stage; imported late to keep this module light

    # Capture needs shapes only (fake-tensor propagation), so the meta model and a meta input suffice.
    return len(find_sites(meta_model, torch.empty(1, 3, *SITES_SIZE, device="meta")))


def table_document(names: list[str] | None = None) -> dict[str, object]:
    """The ``eqsurgeon models --format json`` document for ``names`` (all zoo models by default).

    ``eqsurgeon models`` answers from a copy of this document (``eqsurgeon/cli/_zoo_table.json``,
    written by ``python -m eqsurgeon.zoo.summary``), so listing the zoo builds no model and imports no
    torch; a test rebuilds it from the real models and compares.
    """
    from eqsurgeon.registry import list_models

    rows = [summarize(n) for n in (names or list_models())]
    return {
        "flops_input": list(FLOPS_SIZE),
        "models": [
            {
                "name": r.name,
                "params": r.params,
                "gflops": None if r.gflops is None else round(r.gflops, 2),
                "sites": r.sites,
                "paper_table": r.paper_table,
                "mmseg_config": r.mmseg_config,
                "tags": list(r.tags),
            }
            for r in rows
        ],
    }


if __name__ == "__main__":
    import json
    from pathlib import Path

    target = Path(__file__).resolve().parents[1] / "cli" / "_zoo_table.json"
    target.write_text(json.dumps(table_document(), indent=2) + "\n")
    print(f"wrote {target}")
