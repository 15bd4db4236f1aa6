"""The trainer's pure parts on hand-made tensors: loss averaging, mIoU, inference, schedule, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon.io import read_state_dict
from eqsurgeon.training.checkpoint import list_checkpoints, load_state, save_checkpoint, write_weights
from eqsurgeon.training.config import ModelConfig, ScheduleConfig
from eqsurgeon.training.inference import predict
from eqsurgeon.training.losses import cross_entropy, segmentation_loss
from eqsurgeon.training.metrics import area_counts, summarize
from eqsurgeon.training.optim import build_optimizer, build_scheduler, lr_factor


def test_loss_averaging_all_pixels_vs_valid_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, :3] = 255  # a quarter of the pixels ignored
    valid = F.cross_entropy(logits, target, ignore_index=255)  # PyTorch: mean over valid pixels
    n_valid = int((target != 255).sum())
    assert torch.allclose(cross_entropy(logits, target, average="valid"), valid)
    assert torch.allclose(cross_entropy(logits, target, average="all"), valid * n_valid / target.numel())


def test_loss_upsamples_logits_and_weights_the_aux_head() -> None:
    torch.manual_seed(0)
    main, aux = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 16, 16))
    up = F.interpolate(main, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(cross_entropy(main, target), F.cross_entropy(up, target))
    both = segmentation_loss((main, aux), target, aux_weight=0.4)
    assert torch.allclose(both, cross_entropy(main, target) + 0.4 * cross_entropy(aux, target))
    assert torch.allclose(segmentation_loss(main, target), cross_entropy(main, target))


def test_miou_is_dataset_level_not_mean_of_images() -> None:
    # image 1: class 0 right on 1 pixel of 1; image 2: class 0 wrong on 3 pixels of 3.
    a = area_counts(torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 255)
    b = area_counts(torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 0, 1]), 2, 255)
    m = summarize(a + b)
    assert m.iou[0] == pytest.approx(1 / 4)  # inter 1 / union 4, not mean(1.0, 0.0)
    assert m.iou[1] == pytest.approx(2 / 5)
    assert m.miou == pytest.approx((1 / 4 + 2 / 5) / 2) and m.pixels == 6
    absent = summarize(area_counts(torch.tensor([0]), torch.tensor([0]), 3, 255))
    assert math.isnan(absent.iou[2]) and absent.miou == 1.0  # absent classes leave the mean


def test_slide_inference_matches_whole_for_a_translation_invariant_model() -> None:
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 1).eval()
    x = torch.randn(2, 3, 37, 50)
    whole = predict(net, x, (37, 50), "whole")
    slide = predict(net, x, (37, 50), "slide", crop_size=(16, 16), stride=(11, 11))
    assert torch.allclose(whole, slide, atol=1e-5)
    assert predict(net, x, (74, 100)).shape == (2, 4, 74, 100)


def test_schedule_warmup_then_poly_to_min_lr() -> None:
    # mmengine's LinearLR/PolyLR span end - begin - 1 steps: warmup 0..9 reaches 1 at 9, the decay over
    # iterations 10..100 reaches min_lr at the last one (100 = iters - 1).
    cfg = ScheduleConfig(iters=101, warmup_iters=10, warmup_ratio=1e-6, power=0.9, min_lr=1e-4)
    assert lr_factor(0, cfg, 0.01) == pytest.approx(1e-6)
    assert lr_factor(9, cfg, 0.01) == lr_factor(10, cfg, 0.01) == pytest.approx(1.0)
    assert lr_factor(100, cfg, 0.01) * 0.01 == pytest.approx(1e-4)
    assert lr_factor(99, cfg, 0.01) * 0.01 > 1.0001e-4
    assert lr_factor(55, cfg, 0.01) == pytest.approx(0.01 + 0.99 * 0.5**0.9)


def test_no_weight_decay_on_norms_and_biases() -> None:
    from eqsurgeon.training.config import OptimConfig

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_checkpoints_keep_the_last_k_and_load_weights_only(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"iter": 0, "optimizer": opt.state_dict(), "rng": [{"torch": torch.get_rng_state()}]}
    for it in (10, 20, 30):
        iteration_state = {**state, "iter": it}
        save_checkpoint(tmp_path, it, model.state_dict(), iteration_state, None, ModelConfig("m"), keep=2)
    kept = list_checkpoints(tmp_path)
    assert [c.iteration for c in kept] == [20, 30]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind
    loaded = load_state(kept[-1])  # torch.load(weights_only=True) inside
    assert loaded["iter"] == 30 and torch.equal(loaded["rng"][0]["torch"], state["rng"][0]["torch"])
    weights, metadata = read_state_dict(kept[-1].weights)
    assert torch.equal(weights["weight"], model.weight) and metadata["iteration"] == "30"
    kept[0].weights.unlink()  # a checkpoint missing a file is not complete
    assert [c.iteration for c in list_checkpoints(tmp_path)] == [30]


def test_miou_averages_the_classes_present_in_prediction_or_label() -> None:
    # class 0: right on 2 of 2; class 1: predicted once where class 2 is labelled; class 3: absent from both
    areas = area_counts(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 2, 2]), 4, 255)
    m = summarize(areas)
    assert m.iou[:3] == pytest.approx((1.0, 0.0, 0.5)) and math.isnan(m.iou[3])
    assert m.miou == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3: a class only predicted counts, an absent one not
    assert math.isnan(m.acc[1]) and m.acc[2] == pytest.approx(0.5) and m.aacc == pytest.approx(0.75)
    nothing = summarize(area_counts(torch.tensor([0]), torch.tensor([255]), 2, 255))
    assert math.isnan(nothing.miou) and nothing.pixels == 0 and math.isnan(nothing.aacc)


def test_default_schedule_decays_linearly_after_warmup() -> None:
    cfg = ScheduleConfig(iters=111, warmup_iters=10)  # poly power and min_lr left at their defaults
    # mmengine's PolyLR(begin=10, end=111) decays over end − begin − 1 = 100 steps, to 0 at iteration 110
    factors = [lr_factor(i, cfg, 0.01) for i in (10, 35, 60, 85, 110, 200)]
    assert factors == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


def test_scheduler_applies_the_poly_power_to_every_group() -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.2}])
    scheduler = build_scheduler(optimizer, ScheduleConfig(iters=11, warmup_iters=0, power=2.0), 0.1)
    lrs = []
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        lrs.append([g["lr"] for g in optimizer.param_groups])
    assert lrs[-1] == pytest.approx([0.1 * 0.5**2, 0.2 * 0.5**2])  # halfway: (1 − 1/2)² of each base lr
    assert lrs[0] == pytest.approx([0.1 * 0.9**2, 0.2 * 0.9**2])


def _interrupt_during_write(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """Make ``module.name(obj, file)`` write a few bytes into the file, then raise KeyboardInterrupt."""

    def partial(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, partial)


def test_a_checkpoint_interrupted_while_writing_its_state_leaves_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path, 10, model.state_dict(), {"iter": 10, "rng": []}, None, ModelConfig("m"), keep=2)
    _interrupt_during_write(monkeypatch, torch, "save")
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 20, model.state_dict(), {"iter": 20, "rng": []}, None, ModelConfig("m"), 2)
    monkeypatch.undo()
    (last,) = list_checkpoints(tmp_path)  # iteration 20 has weights but no state: not complete
    assert last.iteration == 10 and load_state(last)["iter"] == 10
    assert not (tmp_path / "ckpt_0000020.state.pt").exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_best_weights_interrupted_while_overwritten_keep_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eqsurgeon.io import files as io_files

    best = tmp_path / "best.safetensors"
    write_weights(best, {"w": torch.ones(3)}, None, ModelConfig("m"), 10)
    before = best.read_bytes()
    monkeypatch.setattr(io_files.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_weights(best, {"w": torch.zeros(3)}, None, ModelConfig("m"), 20)
    assert best.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]
