"""``eqsurgeon train RECIPE --compare --seeds N``: runs, table, compare.json, PNG; and the table's math."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eqsurgeon.training.compare import RunOutcome, summarize
from tests._train_helpers import DEMO_RECIPE, as_sets, quick
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(images=6, size=32)


def test_compare_two_seeds_on_demo_data(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    sets = quick(data, out, "schedule.iters=4", "eval.interval=2", "eq.images=8", "eq.batch_size=4",
                 model="upernet_tiny")[1:]  # fmt: skip
    args = ["train", str(DEMO_RECIPE), "--compare", "--seeds", "2", "--out", str(out), *as_sets(sets)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    for needle in ("w/o EQ", "w/ EQ", "Diff", "fold", "insert", "±", "compare.json"):
        assert needle in result.output, needle

    doc = json.loads((out / "compare.json").read_text())
    assert doc["seeds"] == [0, 1]
    assert sorted((r["mode"], r["seed"]) for r in doc["runs"]) == sorted(
        (m, s) for m in ("none", "fold", "insert") for s in (0, 1)
    )
    for run in doc["runs"]:
        assert [p[0] for p in run["curve"]] == [2, 4]  # every evaluation, from the run's metrics.jsonl
        assert run["mIoU"] == run["curve"][-1][1]
        assert (Path(run["run_dir"]) / "summary.json").is_file()
    by = {(r["mode"], r["seed"]): r["mIoU"] for r in doc["runs"]}
    fold = next(row for row in doc["table"] if row["mode"] == "fold")
    diffs = [by[("fold", s)] - by[("none", s)] for s in (0, 1)]
    assert fold["diff"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert fold["without_eq"]["mean"] == pytest.approx((by[("none", 0)] + by[("none", 1)]) / 2)
    # equalization really ran in the EQ runs, and not in the baseline
    assert (out / "fold_s0" / "eq.json").is_file() and not (out / "none_s0" / "eq.json").exists()
    png = (out / "miou_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # each site's grad_ratio, logged every run.log_interval (2) by the trainer, under the same layer
    # names in every mode (insert's wrappers are not named), drawn beside the mIoU panel
    sites = {"decode_head.bottleneck.conv", "decode_head.fpn_bottleneck.conv"}
    for run in doc["runs"]:
        assert [p[0] for p in run["grad_ratio"]] == [2, 4]
        assert all(set(r) == sites and all(v >= 1 for v in r.values()) for _, r in run["grad_ratio"])
    summary, ppm = {(r["mode"], r["layer"]): r for r in doc["grad_ratio"]}, "decode_head.bottleneck.conv"
    assert set(summary) == {(m, s) for m in ("none", "fold", "insert") for s in sites}
    first = [r["grad_ratio"][0][1][ppm] for r in doc["runs"] if r["mode"] == "insert"]
    assert summary[("insert", ppm)]["first"] == pytest.approx(sum(first) / 2)
    assert "grad_ratio" in result.output
    from PIL import Image

    with Image.open(out / "miou_curves.png") as img:
        assert img.width > 3 * 400  # the mIoU panel and one grad_ratio panel per site

    again = run_cli(*args)  # a finished comparison is not overwritten
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = run_cli(*[*args, "--resume"])  # reuses every finished run: no training
    assert resumed.exit_code == 0 and "seed 0 →" not in resumed.output
    assert json.loads((out / "compare.json").read_text())["runs"] == doc["runs"]


def test_summarize_pairs_seeds_and_reports_sample_std() -> None:
    runs = [RunOutcome("none", s, Path("."), m, m, ()) for s, m in ((0, 0.40), (1, 0.50), (2, 0.45))]
    runs += [RunOutcome("insert", s, Path("."), m, m, ()) for s, m in ((0, 0.41), (1, 0.52), (2, 0.45))]
    (row,) = summarize(runs, ["insert"])
    assert row.diff.mean == pytest.approx(0.01)
    assert row.diff.std == pytest.approx(0.01)  # diffs 0.01, 0.02, 0.00
    assert row.without.std == pytest.approx(0.05)
    (single,) = summarize(runs[:1] + runs[3:4], ["insert"])
    assert math.isnan(single.diff.std) and single.diff.mean == pytest.approx(0.01)


@pytest.mark.slow
def test_compare_under_torchrun_two_ranks(data: Path, tmp_path: Path) -> None:
    """All runs share one process group: the trainer keeps a caller's group instead of re-creating one."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    sets = quick(data, out, "schedule.iters=2", "eval.interval=2", "eq.images=8", "eq.batch_size=4",
                 model="upernet_tiny")[1:]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "eqsurgeon", "train", str(DEMO_RECIPE), "--compare", "--seeds", "1", "--out", str(out),
           *as_sets(sets)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "compare.json").read_text())
    assert sorted(r["mode"] for r in doc["runs"]) == ["fold", "insert", "none"]
    assert (out / "miou_curves.png").is_file()


def test_train_notes_a_gpu_count_that_changes_the_total_batch(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = quick(data, out, "schedule.iters=1", "eval.interval=0", "run.gpus=4", model="upernet_tiny")[1:]
    result = run_cli(*["train", str(DEMO_RECIPE), *as_sets(sets)])
    assert result.exit_code == 0, result.output
    assert "written for 4 GPUs (total batch 16)" in " ".join(result.output.split())
    quiet = run_cli(*["train", str(DEMO_RECIPE), *as_sets([*sets[:-1], f'run.out="{tmp_path / "b"}"',
                                                                    "run.gpus=1"])])  # fmt: skip
    assert quiet.exit_code == 0 and "written for" not in quiet.output
