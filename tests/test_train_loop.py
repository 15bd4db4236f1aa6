"""The training loop on CPU: run folder contents, resume, refusals, NaN stop, AMP options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from eqsurgeon.errors import DataError, OutputExistsError, RecipeError, TrainingError
from eqsurgeon.io import read_state_dict
from eqsurgeon.training.checkpoint import list_checkpoints, load_state
from eqsurgeon.training.config import load_config, load_config_text
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.loop import train
from tests._train_helpers import DEMO_RECIPE, TINY, quick, truncated_copy


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("train") / "demo", images=8, size=32)


def test_run_folder_holds_config_metrics_and_checkpoints(data: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO_RECIPE, quick(data, tmp_path / "run"))
    logs: list[dict] = []
    result = train(cfg, on_log=logs.append)
    run = tmp_path / "run"
    assert load_config_text((run / "config.toml").read_text()) == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # loss lines at each log step and before each evaluation (the NaN check runs there too)
    assert [r["iter"] for r in records if "loss" in r] == [2, 3, 4, 6]
    assert [r["iter"] for r in records if "mIoU" in r] == [3, 6]
    lrs = [r["lr"] for r in records if "loss" in r]
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] == 0.0  # poly decay reaches 0 at the last iteration
    assert all(r["loss"] > 0 for r in records if "loss" in r)
    assert [r["phase"] for r in logs].count("eval") == 2 and "eta_s" in logs[0]
    assert [c.iteration for c in list_checkpoints(run)] == [4, 6]  # keep = 2
    state = load_state(list_checkpoints(run)[-1])
    assert state["iter"] == 6 and set(state) >= {"optimizer", "scheduler", "scaler", "rng", "data"}
    assert state["data"]["position"] == 6 * 4
    weights, meta = read_state_dict(result.weights)
    assert meta["iteration"] == "6" and "cls.weight" in weights
    best = json.loads((run / "best.json").read_text())
    assert (run / "best.safetensors").is_file() and best["mIoU"] == result.best_miou
    assert json.loads((run / "summary.json").read_text())["iterations"] == 6


def test_resume_from_a_checkpoint_is_bit_exact(data: Path, tmp_path: Path) -> None:
    full = train(load_config(DEMO_RECIPE, quick(data, tmp_path / "full", "checkpoint.keep=3")))
    # Pretend the run died after iteration 4: keep only what existed then.
    part = truncated_copy(tmp_path / "full", tmp_path / "part", after=4)
    resumed = train(load_config(DEMO_RECIPE, quick(data, part, "checkpoint.keep=3")), resume=True)
    a, _ = read_state_dict(full.weights)
    b, _ = read_state_dict(resumed.weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x)["iter"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert lines == sorted(lines) and lines.count(6) == 2  # one loss and one eval line, not repeated


def test_an_existing_run_needs_resume_and_the_same_recipe(data: Path, tmp_path: Path) -> None:
    args = quick(data, tmp_path / "run", "schedule.iters=2")
    train(load_config(DEMO_RECIPE, args))
    with pytest.raises(OutputExistsError, match="pass --resume"):
        train(load_config(DEMO_RECIPE, args))
    with pytest.raises(RecipeError, match=r"different recipe \(optim.lr: 0.01 -> 0.5\)"):
        train(load_config(DEMO_RECIPE, [*args, "optim.lr=0.5"]), resume=True)
    # data.workers may change: it does not change what is computed.
    train(load_config(DEMO_RECIPE, [*args, "data.workers=1"]), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path) -> None:
    nan_model = f"{TINY.rsplit(':', 1)[0]}:nan_after"
    cfg = load_config(
        DEMO_RECIPE,
        quick(
            data,
            tmp_path / "run",
            "run.log_interval=100",
            "eval.interval=0",
            "schedule.iters=10",
            model=nan_model,
        ),
    )
    with pytest.raises(TrainingError, match=r"loss became nan between iterations 5 and 6; the last good"):
        train(cfg)
    kept = list_checkpoints(tmp_path / "run")
    assert [c.iteration for c in kept] == [2, 4]
    assert all(torch.isfinite(t).all() for t in read_state_dict(kept[-1].weights)[0].values())


def test_model_with_wrong_class_count_is_refused(data: Path, tmp_path: Path) -> None:
    cfg = load_config(DEMO_RECIPE, quick(data, tmp_path / "run", "model.kwargs.num_classes=3"))
    with pytest.raises(RecipeError, match=r"predicts 3 classes but data\.num_classes = 5"):
        train(cfg)


def test_bad_label_in_a_worker_is_a_one_line_error(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    from PIL import Image

    Image.new("L", (32, 32), 9).save(bad / "masks" / "demo_0003.png")
    cfg = load_config(DEMO_RECIPE, quick(bad, tmp_path / "run", "data.workers=2", "data.batch_size=8"))
    with pytest.raises(DataError) as err:
        train(cfg)
    assert str(err.value).startswith("mask ") and "demo_0003.png has label 9" in str(err.value)
    assert "\n" not in str(err.value)


def test_bf16_channels_last_and_grad_clip_run(data: Path, tmp_path: Path) -> None:
    cfg = load_config(
        DEMO_RECIPE,
        quick(
            data,
            tmp_path / "run",
            "run.amp=bf16",
            "run.channels_last=true",
            "optim.grad_clip=1.0",
            "schedule.iters=2",
            "eval.mode=slide",
            "eval.crop_size=[16, 16]",
            "eval.stride=[12, 12]",
        ),
    )
    result = train(cfg)
    # slide inference evaluated every labelled pixel of the held-out images, and what it logged is
    # what the final metrics say
    assert result.metrics is not None and result.metrics.pixels > 0
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in logged if "mIoU" in r][-1]
    assert final["mIoU"] == pytest.approx(result.metrics.miou) and result.metrics.miou == pytest.approx(
        sum(v for v in result.metrics.iou if v == v) / sum(1 for v in result.metrics.iou if v == v)
    )
    fp16 = load_config(DEMO_RECIPE, quick(data, tmp_path / "fp16", "run.amp=fp16", "schedule.iters=2"))
    assert train(fp16).iterations == 2


def test_tensorboard_scalars_when_installed(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    written: list[tuple[str, float, int]] = []

    class Writer:  # stands in for tensorboard's SummaryWriter, which CI does not install
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def close(self) -> None:
            written.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(load_config(DEMO_RECIPE, quick(data, tmp_path / "run", "schedule.iters=2")))
    tags = {tag for tag, _, _ in written}
    assert {"loss", "lr", "img_s", "mIoU", "closed"} <= tags
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ratios = next(r for r in logged if r.get("grad_ratio"))  # one tag per fusion site, grouped
    assert {f"grad_ratio/{layer}" for layer in ratios["grad_ratio"]} <= tags
    assert ("loss", pytest.approx(written[0][1]), 2) in written
