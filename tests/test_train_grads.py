"""The trainer's gradient balance log, and the multiscale synthetic data the GPU A/B trains on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eqsurgeon.cli import app
from eqsurgeon.training.config import load_config
from eqsurgeon.training.demo_data import make_demo_data
from eqsurgeon.training.loop import train
from tests._train_helpers import DEMO_RECIPE, quick

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("grads") / "demo", images=8, size=32)


def test_metrics_carry_each_sites_grad_ratio_under_one_name_in_every_mode(data: Path, tmp_path: Path) -> None:
    logged = {}
    for mode in ("none", "insert"):
        extra = (f"eq.mode={mode}", "eq.images=4", "eq.batch_size=4", "schedule.iters=4", "eval.interval=0")
        train(load_config(DEMO_RECIPE, quick(data, tmp_path / mode, *extra)))
        lines = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        logged[mode] = [r for r in records if "grad_ratio" in r]
        assert [r["iter"] for r in logged[mode]] == [2, 4]  # every run.log_interval, on the loss line
        assert all("loss" in r for r in logged[mode])
    for mode, records in logged.items():
        for r in records:
            assert set(r["grad_ratio"]) == {"bottleneck.0", "fuse.0"}, mode  # insert's .layer is not named
            assert all(v >= 1 for v in r["grad_ratio"].values())


def test_demo_data_multiscale_writes_train_and_val_with_nine_classes(tmp_path: Path) -> None:
    out = tmp_path / "ms"
    args = ["demo-data", str(out), "--kind", "multiscale", "--images", "4", "--size", "128"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 + 1 images" in result.output
    for split, count in (("train", 4), ("val", 1)):
        images = sorted((out / split / "images").iterdir())
        assert [p.name for p in images] == [f"ms_{i:04d}.png" for i in range(count)]
        for path in images:
            mask = np.array(Image.open(out / split / "masks" / path.name))
            assert Image.open(path).size == (128, 128) and mask.shape == (128, 128)
            assert mask.max() <= 8 and (mask == 0).any() and (mask > 0).any()
    labels = np.concatenate([np.array(Image.open(p)).ravel() for p in (out / "train" / "masks").iterdir()])
    assert len(set(labels.tolist())) >= 4  # several textures and objects, not one class
    bad = CliRunner().invoke(app, ["demo-data", str(tmp_path / "x"), "--kind", "stripes"])
    assert bad.exit_code == 2 and "--kind 'stripes' is unknown" in bad.stderr


@pytest.mark.slow
def test_gpu_ab_smoke_runs_every_part(tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu_ab.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    logs = tmp_path / "gpu_ab"
    for name in ("env", "train", "steps"):
        assert (logs / f"{name}.rc").read_text().strip() == "0", (logs / f"{name}.log").read_text()[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["bench"] == "ab" and set(last["delta_miou"]) == {"fold", "insert"}
    assert all(isinstance(d["mean"], float) for d in last["delta_miou"].values())
    assert set(last["grad_ratio_last"]) == {"none", "fold", "insert"}
    assert last["step_insert_vs_none"]["eager"] > 0 and last["step_insert_vs_none"]["compile"] is None
    for needle in ("ΔmIoU fold", "ΔmIoU insert", "grad_ratio at decode_head.bottleneck.conv", "insert/none"):
        assert needle in done.stdout, needle
