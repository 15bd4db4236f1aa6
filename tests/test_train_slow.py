"""The trainer's acceptance runs: learning, SIGKILL + --resume exactness, and 2-process DDP on gloo.

Each starts fresh Python processes or trains for a few hundred iterations, so they are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eqsurgeon.io import read_state_dict, record_to_dict
from eqsurgeon.training.checkpoint import checkpoint_files
from eqsurgeon.training.config import load_config
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.distributed import DistInfo
from eqsurgeon.training.equalize import equalize_in_loop
from eqsurgeon.training.loop import train
from eqsurgeon.training.model import build_model
from tests._train_helpers import DEMO_RECIPE, ROOT, TINY, quick, torchrun

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("slow") / "demo", images=16, size=64)


def test_tiny_zoo_model_overfits_demo_data(data: Path, tmp_path: Path) -> None:
    # The demo recipe's upernet_tiny, evaluated on its 16 training images. Overfitting is the point, so
    # the scale/colour augmentation is off (crop and flip stay); with it the demo needs ~300 iterations.
    cfg = load_config(
        DEMO_RECIPE,
        [
            f'data.root="{data}"',
            f'run.out="{tmp_path}"',
            "data.workers=0",
            "schedule.iters=150",
            "eval.interval=0",
            "run.log_interval=50",
            "data.ratio_range=[1.0, 1.0]",
            "data.photometric=false",
        ],
    )
    assert cfg.model.name == "upernet_tiny"
    result = train(cfg)
    assert result.metrics is not None and result.metrics.miou >= 0.9, result.metrics


def _cmd(out: Path, data: Path, *extra: str) -> list[str]:
    slow = f"{TINY.rsplit(':', 1)[0]}:slow_seg"
    sets = quick(
        data,
        out,
        "data.workers=2",
        "data.batch_size=2",
        "schedule.iters=8",
        "checkpoint.interval=4",
        "checkpoint.keep=5",
        "eval.interval=0",
        model=slow,
    )
    return [sys.executable, str(TESTS / "_train_script.py"), str(DEMO_RECIPE), *sets, *extra]


def test_sigkill_then_resume_is_bit_identical(data: Path, tmp_path: Path) -> None:
    subprocess.run(_cmd(tmp_path / "full", data), env=ENV, check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, data), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint_files(killed, 4).state.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # workers die with their parent (pdeathsig in DataLoader)
    proc.wait()
    assert not checkpoint_files(killed, 8).weights.exists(), "the run finished before the kill"
    subprocess.run(_cmd(killed, data, "--resume"), env=ENV, check=True, capture_output=True)
    a, _ = read_state_dict(checkpoint_files(tmp_path / "full", 8).weights)
    b, _ = read_state_dict(checkpoint_files(killed, 8).weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torchrun(sets: list[str]) -> None:
    torchrun([str(TESTS / "_train_script.py"), str(DEMO_RECIPE), *sets], ENV)


# In-loop calibration on 8 crops (4 per rank), BN on running statistics so a crop's features do not
# depend on which batch it is in; the tolerance is tiny so every crop is used.
EQ = ["eq.mode=fold", "eq.bn_mode=eval", "eq.images=8", "eq.batch_size=2", "eq.tolerance=1e-9"]


def test_two_process_gloo_ranks_end_identical(data: Path, tmp_path: Path) -> None:
    sets = quick(
        data,
        tmp_path,
        "schedule.iters=10",
        "eval.interval=5",
        "checkpoint.interval=5",
        "data.crop_size=[64, 64]",
        *EQ,
        model="upernet_tiny",
    )
    _torchrun(sets)
    r0, _ = read_state_dict(tmp_path / "rank0.safetensors")
    r1, _ = read_state_dict(tmp_path / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    written, _ = read_state_dict(checkpoint_files(tmp_path, 10).weights)
    assert all(torch.equal(r0[k], written[k]) for k in r0)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "mIoU" in r] == [5, 10]  # rank 0 alone wrote, once per eval
    assert max(r["img_s"] for r in records if "img_s" in r) > 0

    # Both ranks applied the same μ/σ, pooled from all 8 crops ...
    eq0 = json.loads((tmp_path / "rank0.json").read_text())["eq"]
    eq1 = json.loads((tmp_path / "rank1.json").read_text())["eq"]
    assert eq0 == eq1 and eq0["images"] == 8 and eq0["bn_mode"] == "eval"
    # ... equal to one process measuring the same 8 crops.
    cfg = load_config(DEMO_RECIPE, sets)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    _, record = equalize_in_loop(model, cfg, make_datasets(cfg)[0], DistInfo(0, 1, 0, torch.device("cpu")))
    single = record_to_dict(record)
    assert single["images"] == 8
    pairs = [
        (a, b)
        for s0, s1 in zip(eq0["sites"], single["sites"], strict=True)
        for a, b in zip(s0["inputs"], s1["inputs"], strict=True)
    ]
    assert len(pairs) >= 4
    for a, b in pairs:
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-6, abs=1e-6)
        assert a["std"] == pytest.approx(b["std"], rel=1e-6, abs=1e-6)
        assert a["scale"] == pytest.approx(b["scale"], rel=1e-6)
