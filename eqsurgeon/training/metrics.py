"""mIoU from dataset-level intersection and union, as MMSegmentation's IoUMetric computes it.

Areas are summed over the whole evaluation set (and all-reduced across ranks) before dividing, so a
class's IoU is not an average of per-image IoUs. Classes that appear in neither prediction nor label
(union 0) are NaN and left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SegMetrics:
    """Evaluation result.

    Attributes:
        miou: mean IoU over classes with a non-empty union.
        iou: per-class IoU (NaN where the class is absent from both prediction and label).
        acc: per-class accuracy (recall), NaN where the class has no labelled pixel.
        aacc: overall pixel accuracy.
        pixels: labelled (non-ignored) pixels counted.
    """

    miou: float
    iou: tuple[float, ...]
    acc: tuple[float, ...]
    aacc: float
    pixels: int


def area_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """[3, C] int64: per class, intersection, predicted area and labelled area, over non-ignored pixels.

    >>> area_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]), 2, 255).tolist()
    [[1, 1], [1, 1], [1, 1]]
    """
    valid = target != ignore_index
    pred, target = pred[valid].long(), target[valid].long()
    inter = torch.bincount(target[pred == target], minlength=num_classes)
    area_pred = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(target, minlength=num_classes)
    return torch.stack([inter, area_pred, area_label])[:, :num_classes]


def summarize(areas: torch.Tensor) -> SegMetrics:
    """Per-class IoU and mIoU from dataset-level [3, C] areas (see :func:`area_counts`).

    >>> m = summarize(torch.tensor([[1, 0], [1, 1], [2, 0]]))
    >>> m.iou[0], math.isnan(m.acc[1]), m.miou
    (0.5, True, 0.25)
    """
    inter, area_pred, area_label = areas.double()
    union = area_pred + area_label - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, math.nan))
    acc = torch.where(area_label > 0, inter / area_label.clamp(min=1), torch.full_like(union, math.nan))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else math.nan
    total = float(area_label.sum())
    return SegMetrics(
        miou=miou,
        iou=tuple(float(v) for v in iou),
        acc=tuple(float(v) for v in acc),
        aacc=float(inter.sum()) / total if total else math.nan,
        pixels=int(total),
    )


def metrics_json(metrics: SegMetrics, names: Sequence[str]) -> dict[str, Any]:
    """The evaluation as JSON-ready data, each class with its name; fractions 0-1, null where undefined.

    >>> doc = metrics_json(summarize(torch.tensor([[1, 0], [1, 1], [2, 0]])), ["sky", "road"])
    >>> doc["mIoU"], doc["classes"][1]
    (0.25, {'name': 'road', 'IoU': 0.0, 'Acc': None})
    """
    accs = [a for a in metrics.acc if not math.isnan(a)]
    return {
        "mIoU": _finite(metrics.miou),
        "aAcc": _finite(metrics.aacc),
        "mAcc": _finite(sum(accs) / len(accs)) if accs else None,
        "pixels": metrics.pixels,
        "classes": [
            {"name": name, "IoU": _finite(iou), "Acc": _finite(acc)}
            for name, iou, acc in zip(names, metrics.iou, metrics.acc, strict=True)
        ],
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
