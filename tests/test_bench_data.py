"""benchmarks/bench_data.py: the CPU cost per image against JPEG decoding, measured in one run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_data_prints_the_ratio_to_jpeg_decoding() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    ms = result["cpu_ms_per_image"]
    assert result["bench"] == "data" and result["target_ratio"] == 2.0
    assert set(ms) == {"jpeg decode", "workers", "device", "device, nvjpeg"} and min(ms.values()) > 0
    # the ratios are the printed costs over the decoding cost of the same run; the costs are printed
    # to 0.001 ms, so the ratio recomputed from them is off by at most that rounding, carried through
    decode = ms["jpeg decode"]
    for key, name in (("ratio_vs_decode", "device"), ("ratio_vs_decode_workers_pipeline", "workers")):
        rounding = 0.0005 * (1 + ms[name] / decode) / (decode - 0.0005) + 0.0005
        assert result[key] == pytest.approx(ms[name] / decode, abs=rounding), key
    line = next(x for x in lines if x.startswith("  device pipeline:"))
    assert re.match(r"  device pipeline: \d+\.\d\dx decoding, (meets|misses) the target <= 2\.0$", line), line
    assert f"{result['ratio_vs_decode']:.2f}x" in line
