"""Shared set-up for the trainer tests: a tiny model spec and recipe overrides for a few-second run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
DEMO_RECIPE = ROOT / "train" / "recipes" / "demo.toml"
TINY = f"{Path(__file__).parents[1] / 'fixtures' / 'tiny_seg.py'}:tiny_seg"


def quick(data: Path, out: Path, *extra: str, model: str = TINY) -> list[str]:
    """Overrides turning the demo recipe into a run of a few iterations on ``data``."""
    return [
        f'model.name="{model}"',
        f'data.root="{data}"',
        f'run.out="{out}"',
        "data.workers=0",
        "data.batch_size=4",
        "data.crop_size=[32, 32]",
        "schedule.iters=6",
        "schedule.warmup_iters=2",
        "checkpoint.interval=2",
        "checkpoint.keep=2",
        "eval.interval=3",
        "eval.max_images=4",
        "run.log_interval=2",
        *extra,
    ]


def as_sets(items: list[str]) -> list[str]:
    """``--set`` flags for recipe overrides: ``["a.b=1"]`` → ``["--set", "a.b=1"]``."""
    return [a for item in items for a in ("--set", item)]


def truncated_copy(run: Path, dest: Path, after: int) -> Path:
    """Copy a run folder as it stood when the run died after iteration ``after``."""
    import shutil

    from eqsurgeon.training.checkpoint import list_checkpoints

    shutil.copytree(run, dest)
    for c in list_checkpoints(dest):
        if c.iteration > after:
            c.weights.unlink()
            c.state.unlink()
    return dest


def torchrun(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[str, str]:
    """Run ``torch.distributed.run --standalone --nproc-per-node 2 *args``; its (stdout, stderr) on success.

    A new session, so a hung run's ranks are killed with it instead of outliving the test.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr
