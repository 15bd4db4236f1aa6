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

from eqsurgeon.data.demo import make_demo_data
from eqsurgeon.training.checkpoint import checkpoint_files, load_weights
from eqsurgeon.training.config import load_config
from eqsurgeon.training.loop import train
from tests._train_helpers import DEMO_RECIPE, ROOT, TINY, quick

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("slow") / "demo", images=16, size=64)


def test_tiny_model_overfits_demo_data(data: Path, tmp_path: Path) -> None:
    # The demo recipe as shipped, shortened: eval on the training images.
    cfg = load_config(DEMO_RECIPE, [f'model.name="{TINY}"', f'data.root="{data}"', f'run.out="{tmp_path}"',
                                    "data.workers=0", "schedule.iters=200", "eval.interval=0",
                                    "run.log_interval=50"])
    result = train(cfg)
    assert result.metrics is not None and result.metrics.miou >= 0.9, result.metrics


def _cmd(out: Path, data: Path, *extra: str) -> list[str]:
    slow = f"{TINY.rsplit(':', 1)[0]}:slow_seg"
    sets = quick(data, out, "data.workers=2", "data.batch_size=2", "schedule.iters=8",
                 "checkpoint.interval=4", "checkpoint.keep=5", "eval.interval=0", model=slow)
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
    a, _ = load_weights(checkpoint_files(tmp_path / "full", 8).weights)
    b, _ = load_weights(checkpoint_files(killed, 8).weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torchrun(out: Path, data: Path, *extra: str) -> None:
    sets = quick(data, out, "schedule.iters=10", "eval.interval=5", "checkpoint.interval=5", *extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TESTS / "_train_script.py"), str(DEMO_RECIPE), *sets]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_gloo_ranks_end_identical(data: Path, tmp_path: Path) -> None:
    _torchrun(tmp_path, data)
    r0, _ = load_weights(tmp_path / "rank0.safetensors")
    r1, _ = load_weights(tmp_path / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    written, _ = load_weights(checkpoint_files(tmp_path, 10).weights)
    assert all(torch.equal(r0[k], written[k]) for k in r0)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "mIoU" in r] == [5, 10]  # rank 0 alone wrote, once per eval
    assert max(r["img_s"] for r in records if "img_s" in r) > 0
