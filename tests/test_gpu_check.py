"""benchmarks/gpu_check.sh and gpu_calibrate.sh --smoke: every bench runs and leaves its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _smoke(script: str, out: Path) -> subprocess.CompletedProcess:
    """Run ``benchmarks/SCRIPT --smoke`` with logs under ``out``; it must exit 0."""
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", f"benchmarks/{script}", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_bench(tmp_path: Path) -> None:
    done = _smoke("gpu_check.sh", tmp_path)
    logs = tmp_path / "gpu_check"
    for name in ("env", "bench_train", "bench_data", "bench_calibrate"):
        assert (logs / f"{name}.rc").read_text().strip() == "0", (logs / f"{name}.log").read_text()[-2000:]
    summary = json.loads((logs / "summary.json").read_text())
    assert summary["train"]["bench"] == "train" and summary["data"]["bench"] == "data"
    assert summary["data"]["target_img_s"] == summary["train"]["img_s"]["trainer"]  # fed from bench_train
    assert summary["data"]["ratio_vs_decode"] > 0 and summary["data"]["trainer_img_s"] > 0
    assert summary["data"]["trainer_vs_target"] == pytest.approx(
        summary["data"]["trainer_img_s"] / summary["data"]["target_img_s"], rel=0.01
    )
    for needle in ("trainer / minimal", "fold / none", "data best / step rate", "calibrate (issue 3)",
                   "data CPU / JPEG decode (target <= 2.0)", "trainer on files / in memory"):  # fmt: skip
        assert needle in done.stdout, needle


@pytest.mark.slow
def test_gpu_calibrate_smoke_runs_both_precisions(tmp_path: Path) -> None:
    _smoke("gpu_calibrate.sh", tmp_path)
    logs = tmp_path / "gpu_calibrate"
    assert "var rel err" in (logs / "bf16_moments.log").read_text()
    for name, amp in (("bench_calibrate", False), ("bench_calibrate_amp", True)):
        result = json.loads((logs / f"{name}.log").read_text().strip().splitlines()[-1])
        assert (result["bench"], result["amp"]) == ("calibrate", amp)
        assert result["ratio_vs_forward"] > 0 and result["images_to_converge"]
