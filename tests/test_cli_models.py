"""``eqsurgeon models``: the table, the JSON with exact parameter counts, and a bad pattern."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from eqsurgeon.zoo import create_model
from tests.conftest import run_cli


def test_models_json_has_exact_counts_sites_and_tables() -> None:
    result = run_cli(*["models", "upernet_tiny", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["flops_input"] == [512, 512]
    (row,) = data["models"]
    real = create_model("upernet_tiny")
    assert row["name"] == "upernet_tiny"
    assert row["params"] == sum(p.numel() for p in real.parameters())
    assert row["sites"] == 2
    assert row["gflops"] > 0 and row["tags"] == ["tiny"]


def test_models_glob_selects_several() -> None:
    result = run_cli(*["models", "*_tiny", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert {"upernet_tiny", "pspnet_tiny", "deeplabv3plus_tiny", "fcn_tiny", "deeplabv3_tiny"} <= set(rows)
    assert all(r["name"].endswith("_tiny") and r["sites"] >= 1 and r["gflops"] > 0 for r in rows.values())


def test_models_table_lists_paper_table_and_config() -> None:
    result = run_cli(*["models", "pspnet_r101_d8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if "pspnet_r101_d8" in ln)
    assert "Table 3" in line and "pspnet_r101-d8_4xb4-160k_ade20k-512x512.py" in line
    with torch.device("meta"):
        params = sum(p.numel() for p in create_model("pspnet_r101_d8").parameters())
    assert f"{params / 1e6:.2f}" in line


def test_models_unknown_pattern_exits_2() -> None:
    result = run_cli(*["models", "no_such_model*"])
    assert result.exit_code == 2
    assert "eqsurgeon models" in result.output


def _static_rows() -> dict[str, dict]:
    from eqsurgeon.cli.models import TABLE

    return {r["name"]: r for r in json.loads(TABLE.read_text())["models"]}


def test_static_table_matches_the_tiny_models() -> None:
    from eqsurgeon.zoo.summary import table_document

    names = sorted(n for n in _static_rows() if n.endswith("_tiny"))
    assert len(names) >= 5
    built = {r["name"]: r for r in table_document(names)["models"]}
    assert {n: _static_rows()[n] for n in names} == built


@pytest.mark.slow
def test_static_table_matches_every_zoo_model() -> None:
    # Regenerate with `python -m eqsurgeon.zoo.summary` when a model changes.
    from eqsurgeon.registry import list_models
    from eqsurgeon.zoo.summary import table_document

    assert sorted(_static_rows()) == list_models()
    assert _static_rows() == {r["name"]: r for r in table_document()["models"]}


COMMANDS = (
    "analyze", "check", "calibrate", "verify", "models", "train", "eval", "demo-data", "convert-mmseg",
)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["models", "--format", "json"]] + [[c, "--help"] for c in COMMANDS],
)
def test_help_version_and_models_import_no_torch(args: list[str]) -> None:
    probe = (
        "import contextlib, io, sys\n"
        "from eqsurgeon.cli import app\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        app({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
