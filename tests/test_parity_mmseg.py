"""MMSegmentation 1.2.2 as the oracle: heads, loss, mIoU, parameter groups and the LR schedule.

Runs only where mmseg is installed (``make test-parity``); elsewhere every test here is skipped. The data
pipeline is compared in test_parity_pipeline.py, converted checkpoints in test_mmseg_convert.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _mmseg

pytestmark = [pytest.mark.parity, pytest.mark.skipif(not _mmseg.available(), reason=_mmseg.SKIP_REASON)]

from eqsurgeon.training.config import ScheduleConfig, load_config  # noqa: E402
from eqsurgeon.training.losses import segmentation_loss  # noqa: E402
from eqsurgeon.training.metrics import area_counts, summarize  # noqa: E402
from eqsurgeon.training.optim import build_optimizer, lr_factor  # noqa: E402
from eqsurgeon.zoo import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BN = {"type": "BN", "requires_grad": True}


# -- heads: the zoo's decode and auxiliary heads against mmseg's, with the same weights -----------------
def _mm_heads(name: str, chans: list[int], num_classes: int) -> tuple[Any, Any]:
    from mmseg.models import decode_heads as mm

    common = {"num_classes": num_classes, "norm_cfg": BN, "align_corners": False, "dropout_ratio": 0.1}
    aux = mm.FCNHead(in_channels=chans[2], in_index=2, channels=16, num_convs=1, concat_input=False, **common)
    c5 = {"in_channels": chans[3], "in_index": 3, "channels": 32}
    decode = {
        "upernet_tiny": lambda: mm.UPerHead(in_channels=chans, in_index=[0, 1, 2, 3], channels=32,
                                            pool_scales=(1, 2, 3, 6), **common),
        "segformer_tiny": lambda: mm.SegformerHead(in_channels=chans, in_index=[0, 1, 2, 3], channels=32,
                                                   **common),
        "pspnet_tiny": lambda: mm.PSPHead(pool_scales=(1, 2, 3, 6), **c5, **common),
        "fcn_tiny": lambda: mm.FCNHead(num_convs=2, concat_input=True, **c5, **common),
        "deeplabv3_tiny": lambda: mm.ASPPHead(dilations=(1, 12, 24, 36), **c5, **common),
        "deeplabv3plus_tiny": lambda: mm.DepthwiseSeparableASPPHead(
            dilations=(1, 12, 24, 36), c1_in_channels=chans[0], c1_channels=8, **c5, **common),
    }[name]()  # fmt: skip
    return decode, aux


HEAD_MODELS = ["upernet_tiny", "segformer_tiny", "pspnet_tiny", "fcn_tiny", "deeplabv3_tiny",
               "deeplabv3plus_tiny"]  # fmt: skip


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_decode_and_auxiliary_heads_are_bit_exact(name: str) -> None:
    torch.manual_seed(0)
    zoo = create_model(name, num_classes=5)
    with torch.no_grad():
        feats = [f.detach() for f in zoo.backbone.eval()(torch.randn(2, 3, 64, 80))]
    mm_decode, mm_aux = _mm_heads(name, zoo.backbone.channels, 5)
    pairs = [(zoo.decode_head, mm_decode)]
    if zoo.auxiliary_head is not None:
        pairs.append((zoo.auxiliary_head, mm_aux))
    for ours, theirs in pairs:
        theirs.load_state_dict(ours.state_dict(), strict=True)  # identical keys and shapes
        for train in (False, True):
            ours.train(train)
            theirs.train(train)
            torch.manual_seed(1)
            a = ours(feats)
            torch.manual_seed(1)
            b = theirs(feats)
            assert torch.equal(a, b), (name, train, (a - b).abs().max())


# -- loss and metric -------------------------------------------------------------------------------------
@pytest.mark.parametrize("average", ["all", "valid"])
def test_loss_matches_cross_entropy_loss_with_its_aux_weight(average: str) -> None:
    from mmseg.models.losses import CrossEntropyLoss

    torch.manual_seed(0)
    main, aux = torch.randn(2, 6, 9, 11), torch.randn(2, 6, 9, 11)
    target = torch.randint(0, 6, (2, 9, 11))
    target[:, :3] = 255
    avg_non_ignore = average == "valid"
    mm_main = CrossEntropyLoss(loss_weight=1.0, avg_non_ignore=avg_non_ignore)
    mm_aux = CrossEntropyLoss(loss_weight=0.4, avg_non_ignore=avg_non_ignore)
    expected = mm_main(main, target, ignore_index=255) + mm_aux(aux, target, ignore_index=255)
    ours = segmentation_loss((main, aux), target, 255, 0.4, average)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)


def test_miou_matches_iou_metric() -> None:
    from mmseg.evaluation import IoUMetric

    g = torch.Generator().manual_seed(0)
    num_classes, totals, ours = 7, [torch.zeros(7, dtype=torch.float64) for _ in range(4)], torch.zeros(3, 7)
    for _ in range(5):
        label = torch.randint(0, num_classes - 1, (31, 37), generator=g)  # class 6 never labelled
        label[torch.rand(31, 37, generator=g) < 0.2] = 255
        wrong = torch.randint(0, 6, (31, 37), generator=g)
        pred = torch.where(torch.rand(31, 37, generator=g) < 0.6, label, wrong)
        pred[pred == 255] = 0
        for t, v in zip(totals, IoUMetric.intersect_and_union(pred, label, num_classes, 255), strict=True):
            t += v.double()
        ours += area_counts(pred, label, num_classes, 255)
    theirs = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    mine = summarize(ours.long())
    np.testing.assert_allclose(np.array(mine.iou), theirs["IoU"], rtol=1e-12, equal_nan=True)
    assert mine.miou == pytest.approx(float(np.nanmean(theirs["IoU"])), rel=1e-12)
    assert mine.aacc == pytest.approx(float(theirs["aAcc"]), rel=1e-12)


# -- parameter groups: every parameter's lr and weight decay, through the converter's name map ----------
FAMILIES = {
    "upernet_swin_tiny_ade20k": "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    "upernet_twins_svt_small_ade20k": "twins/twins_svt-s_uperhead_8xb2-160k_ade20k-512x512.py",
    "upernet_convnext_tiny_ade20k": "convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py",
    "pspnet_r50_d8_ade20k": "pspnet/pspnet_r50-d8_4xb4-160k_ade20k-512x512.py",
}


@pytest.mark.parametrize("recipe", sorted(FAMILIES))
def test_parameter_groups_match_the_mmseg_optimizer(recipe: str) -> None:
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from eqsurgeon.zoo.convert_mmseg import backbone_family, zoo_key

    mm_model = _mmseg.build_segmentor(FAMILIES[recipe], num_classes=150)
    optim_cfg = Config.fromfile(str(_mmseg.config_path(FAMILIES[recipe]))).optim_wrapper
    optim_cfg.type = "OptimWrapper"  # the ConvNeXt configs ask for AmpOptimWrapper, which needs CUDA
    optim_cfg.pop("loss_scale", None)
    wrapper = build_optim_wrapper(mm_model, optim_cfg)
    names = {id(p): n for n, p in mm_model.named_parameters()}
    cfg = load_config(ROOT / "train" / "recipes" / f"{recipe}.toml", ["model.kwargs.pretrained=false"])
    family = backbone_family(cfg.model.name)
    theirs: dict[str, tuple[float, float]] = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            new = zoo_key(names[id(p)], family)
            assert new is not None
            for key in (new.replace("<q|kv>", "q"), new.replace("<q|kv>", "kv")):  # Twins' in_proj splits
                theirs[key] = (group["lr"], group["weight_decay"])
    model = create_model(cfg.model.name, num_classes=150)
    ours = {}
    optimizer = build_optimizer(model, cfg.optim)
    zoo_names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            ours[zoo_names[id(p)]] = (group["lr"], group["weight_decay"])
    assert set(ours) == set(theirs)
    differing = {k: (ours.get(k), v) for k, v in theirs.items() if ours.get(k) != pytest.approx(v, rel=1e-12)}
    assert not differing, list(differing.items())[:5]


# -- LR schedule at the boundary iterations of every recipe family --------------------------------------
SCHEDULES = {
    "upernet_swin_tiny_ade20k": FAMILIES["upernet_swin_tiny_ade20k"],
    "pspnet_r50_d8_ade20k": FAMILIES["pspnet_r50_d8_ade20k"],
    "pspnet_r101_d8_cityscapes": "pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py",
}


@pytest.mark.parametrize("recipe", sorted(SCHEDULES))
def test_lr_curve_matches_mmengine_at_the_boundaries(recipe: str) -> None:
    from mmengine.config import Config
    from mmengine.optim.scheduler import LinearLR, PolyLR

    mm_cfg = Config.fromfile(str(_mmseg.config_path(SCHEDULES[recipe])))
    cfg = load_config(ROOT / "train" / "recipes" / f"{recipe}.toml")
    base = cfg.optim.lr
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    kinds = {"LinearLR": LinearLR, "PolyLR": PolyLR}
    schedulers = []
    for s in mm_cfg.param_scheduler:
        kwargs = {k: v for k, v in s.items() if k != "type"}
        schedulers.append(kinds[s["type"]](optimizer, **kwargs))
    n, w = cfg.schedule.iters, cfg.schedule.warmup_iters
    assert n == mm_cfg.train_cfg.max_iters
    marks = {0, 1, 2, n // 2, n - 2, n - 1} | ({w - 2, w - 1, w, w + 1} if w else set())
    for it in range(n):
        if it in marks:
            expected = optimizer.param_groups[0]["lr"]
            ours = lr_factor(it, cfg.schedule, base) * base
            assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15), it
        optimizer.step()
        for s in schedulers:
            s.step()
    if not cfg.schedule.min_lr:
        assert lr_factor(n - 1, cfg.schedule, base) == 0.0


def test_schedule_off_by_one_is_mmengines() -> None:
    cfg = ScheduleConfig(iters=10, warmup_iters=4, warmup_ratio=0.0, power=1.0)
    assert [lr_factor(i, cfg, 1.0) for i in (3, 4, 9)] == [1.0, 1.0, 0.0]
