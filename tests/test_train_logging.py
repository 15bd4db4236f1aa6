"""What a run reports: plain log lines when stdout is not a terminal (as they happen), rank 0 alone under
torchrun, train.log, curves.png, eval.json with class names, long class tables summarized."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from eqsurgeon.cli.train import iou_table
from eqsurgeon.training.classes import ADE20K
from eqsurgeon.training.config import load_config
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.loop import train
from eqsurgeon.training.metrics import summarize
from tests._train_helpers import DEMO_RECIPE, ROOT, TINY, quick, torchrun

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d - eqsurgeon - INFO - "
TRAIN_LINE = re.compile(
    STAMP + r"Iter\(train\) \[ ?\d+/\d+\]  lr: \d\.\d{4}e[-+]\d\d  eta: \d+:\d\d:\d\d  img/s: \d+\.\d  "
    r"memory: \d+  loss: \d+\.\d{4}  decode\.loss_ce: \d+\.\d{4}  aux\.loss_ce: \d+\.\d{4}$"
)
EVAL_LINE = re.compile(
    STAMP + r"Iter\(val\) \[ ?\d+/\d+\]  mIoU: \d+\.\d\d  aAcc: \d+\.\d\d  mAcc: \d+\.\d\d$"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("logs") / "demo", images=8, size=32)


def _cli(out: Path, data: Path, *sets: str, model: str = TINY) -> list[str]:
    overrides = quick(data, out, *sets, model=model)
    return [sys.executable, "-m", "eqsurgeon", "train", str(DEMO_RECIPE),
            *(a for item in overrides for a in ("--set", item))]  # fmt: skip


@pytest.mark.slow
def test_piped_stdout_gets_plain_lines_as_the_run_goes(data: Path, tmp_path: Path) -> None:
    # slow_seg sleeps 0.2 s per step: 16 steps leave the run going while the first lines arrive
    slow = f"{TINY.rsplit(':', 1)[0]}:slow_seg"
    sets = ("schedule.iters=16", "eval.interval=8", "run.log_interval=2")
    cmd = _cli(tmp_path / "run", data, *sets, model=slow)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        running_at_first_line = proc.poll() is None
        rest, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert running_at_first_line, "the first log line came only when the run ended"
    assert TRAIN_LINE.match(first.rstrip("\n")), first
    lines = (first + rest).splitlines()
    train_lines = [x for x in lines if "Iter(train)" in x]
    assert [re.search(r"\[ ?(\d+)/", x).group(1) for x in train_lines] == [str(i) for i in range(2, 17, 2)]
    assert all(TRAIN_LINE.match(x) for x in train_lines), train_lines
    evals = [x for x in lines if "Iter(val)" in x]
    assert len(evals) == 2 and all(EVAL_LINE.match(x) for x in evals), evals
    assert sum("| stripes/warm" in x for x in lines) == 2  # each evaluation's class table, by name
    assert "\x1b[" not in first + rest and "━" not in first  # no bar, no terminal codes in a pipe
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [x[len("2025/01/01 00:00:00") :] for x in log if "Iter(" in x] == [
        x[len("2025/01/01 00:00:00") :] for x in lines if "Iter(" in x
    ]


@pytest.mark.slow
def test_torchrun_two_ranks_report_once_without_stride_warnings(data: Path, tmp_path: Path) -> None:
    sets = quick(data, tmp_path / "run", "schedule.iters=4", "eval.interval=2", "run.log_interval=2",
                 "data.crop_size=[32, 32]", model="upernet_tiny")  # fmt: skip
    args = ["-m", "eqsurgeon", "train", str(DEMO_RECIPE), *(a for item in sets for a in ("--set", item))]
    stdout, stderr = torchrun(args, ENV)
    train_lines = [x for x in stdout.splitlines() if "Iter(train)" in x]
    assert [re.search(r"\[(\d+)/", x).group(1) for x in train_lines] == ["2", "4"]  # once each: rank 0
    assert stdout.count("Iter(val)") == 2 and stdout.count("run summary") == 1
    assert stdout.count("per-class IoU") == 1
    # upernet_tiny's depthwise convs see channels-last activations: DDP warned on every rank before
    assert "Grad strides do not match bucket view strides" not in stderr
    assert "Traceback" not in stderr and "eqsurgeon" not in stderr, stderr[-2000:]


def test_run_folder_has_train_log_curves_and_named_eval(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # tensorboard not installed
    cfg = load_config(DEMO_RECIPE, quick(data, tmp_path / "run", "run.tensorboard=on"))
    logs: list[dict] = []
    started = time.time()
    result = train(cfg, on_log=logs.append)
    run = tmp_path / "run"
    notes = [r["text"] for r in logs if r["phase"] == "note"]
    assert len(notes) == 1 and "pip install" in notes[0] and "tensorboard" in notes[0]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "curves.png").stat().st_mtime >= started
    doc = json.loads((run / "eval.json").read_text())
    assert doc["iter"] == 6 and doc["mIoU"] == pytest.approx(result.metrics.miou)
    assert [c["name"] for c in doc["classes"]] == list(cfg.data.class_names) == list(result.class_names)
    log = (run / "train.log").read_text()
    assert log.count("Iter(val)") == 2 and log.count("| checker/cool") == 2 and "pip install" in log
    assert log.count("Iter(train)") == len([r for r in logs if r["phase"] == "train"]) == 4
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert all(r["loss"] == pytest.approx(r["loss_decode"] + r["loss_aux"], rel=1e-5) for r in losses)


def _ade20k(root: Path, images: int = 3, size: int = 32) -> Path:
    """A tiny ADE20K layout: JPEGs and masks with labels 0 (other) to 150."""
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(images):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "images" / split / f"ADE_{split}_{i:08d}.jpg")
            labels = np.kron(rng.integers(0, 151, (size // 8, size // 8)), np.ones((8, 8))).astype(np.uint8)
            Image.fromarray(labels, mode="L").save(base / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    return root


def test_ade20k_runs_name_their_150_classes(tmp_path: Path) -> None:
    root = _ade20k(tmp_path / "ade")
    sets = [*quick(root, tmp_path / "run", "schedule.iters=2", "eval.interval=0"), 'data.format="ade20k"',
            "data.num_classes=150", "data.class_names=[]", "model.kwargs={ num_classes = 150 }"]  # fmt: skip
    result = train(load_config(DEMO_RECIPE, sets))
    doc = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [c["name"] for c in doc["classes"]] == list(ADE20K) and doc["classes"][7]["name"] == "bed"
    table = Console(width=100, record=True)
    table.print(iou_table(result.metrics, result.class_names, full_table="run/train.log"))
    text = table.export_text()
    shown = [n for n in ADE20K if re.search(rf"│ {re.escape(n)} +│", text)]
    assert len(shown) == 10 and "…" in text  # the 5 worst and 5 best, not 150 rows
    assert "150 classes" in text and "run/train.log" in text and "mean" in text
    assert (tmp_path / "run" / "train.log").read_text().count("| ") >= 150 + 1  # every class in the file
    # eqsurgeon eval --json: the same names, detected from the folder (data.format = "auto")
    from typer.testing import CliRunner

    from eqsurgeon.cli import app

    auto = [s.replace('"ade20k"', '"auto"') for s in sets if not s.startswith(("data.root", "run.out"))]
    args = ["eval", str(DEMO_RECIPE), "--checkpoint", str(result.weights), "--json", str(tmp_path / "e.json"),
            "--data", str(root), *(a for s in auto for a in ("--set", s))]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert [c["name"] for c in json.loads((tmp_path / "e.json").read_text())["classes"]] == list(ADE20K)
    assert "every class in" in done.output and "…" in done.output


def test_short_tables_are_printed_whole() -> None:
    import torch

    metrics = summarize(torch.tensor([[5, 1, 2], [6, 2, 2], [7, 1, 3]]))
    console = Console(width=100, record=True)
    console.print(iou_table(metrics, ("sky", "road", "car")))
    text = console.export_text()
    assert all(name in text for name in ("sky", "road", "car")) and "…" not in text


def test_progress_is_a_bar_on_a_terminal_lines_in_a_pipe_and_nothing_on_other_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from contextlib import nullcontext

    from eqsurgeon.cli import _train_progress as shown
    from eqsurgeon.training.config import TrainConfig

    cfg = TrainConfig()
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(shown.console, "_force_terminal", True)
    assert isinstance(shown.progress(cfg), shown._Bar)
    monkeypatch.setattr(shown.console, "_force_terminal", False)
    pipe = io.StringIO()
    monkeypatch.setattr(shown.console, "_file", pipe)  # not a terminal, like a pipe
    assert isinstance(shown.progress(cfg), shown._PlainLines)
    with shown.progress(cfg) as on_log:
        on_log({"phase": "note", "text": "rank 0 says this"})
    assert pipe.getvalue().endswith("eqsurgeon - INFO - rank 0 says this\n")
    monkeypatch.setenv("RANK", "1")
    with shown.progress(cfg) as on_log:
        on_log({"phase": "note", "text": "rank 1 says nothing"})
    assert isinstance(shown.progress(cfg), nullcontext)
    assert "rank 1" not in pipe.getvalue()
