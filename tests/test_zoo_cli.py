"""``eqsurgeon models``: the table, the JSON with exact parameter counts, and a bad pattern."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from eqsurgeon.cli import app
from eqsurgeon.zoo import create_model

runner = CliRunner()


def test_models_json_has_exact_counts_sites_and_tables() -> None:
    result = runner.invoke(app, ["models", "upernet_tiny", "--format", "json"])
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
    result = runner.invoke(app, ["models", "*_tiny", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert {"upernet_tiny", "pspnet_tiny", "deeplabv3plus_tiny", "fcn_tiny", "deeplabv3_tiny"} <= set(rows)
    assert all(r["name"].endswith("_tiny") and r["sites"] >= 1 and r["gflops"] > 0 for r in rows.values())


def test_models_table_lists_paper_table_and_config() -> None:
    result = runner.invoke(app, ["models", "pspnet_r101_d8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if "pspnet_r101_d8" in ln)
    assert "Table 3" in line and "pspnet_r101-d8_4xb4-160k_ade20k-512x512.py" in line
    with torch.device("meta"):
        params = sum(p.numel() for p in create_model("pspnet_r101_d8").parameters())
    assert f"{params / 1e6:.2f}" in line


def test_models_unknown_pattern_exits_2() -> None:
    result = runner.invoke(app, ["models", "no_such_model*"])
    assert result.exit_code == 2
    assert "eqsurgeon models" in result.output
