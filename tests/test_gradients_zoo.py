"""analyze --gradients end to end: CLI and JSON, segmentation folders, fresh/fold/insert on the zoo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eqsurgeon.api import DataOptions, MeasureOptions, ModelRef, analyze, calibrate
from eqsurgeon.calibration import CalibrationOptions
from eqsurgeon.cli import app
from eqsurgeon.gradients import original_layer
from eqsurgeon.registry import list_models, model_entry
from eqsurgeon.training.demo_data import make_demo_data
from tests._train_helpers import TINY

runner = CliRunner()
TOY_MODELS = [n for n in list_models() if n.endswith("_tiny") and "tiny" in model_entry(n).tags]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("grad") / "demo", images=8, size=64)


def test_cli_gradients_json_table_and_reading(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    args = ["analyze", "fixtures/calibration.py:fuse_two", "--input-size", "16x16", "--batch-size", "2"]
    plain = runner.invoke(app, [*args, "--json", str(tmp_path / "plain.json")])
    assert plain.exit_code == 0, plain.output
    doc = json.loads((tmp_path / "plain.json").read_text())
    assert "grad_ratio" not in doc["sites"][0] and "grad_loss" not in doc  # only with --gradients
    assert "inferred from the variances" in plain.output or "balanced" in plain.output

    result = runner.invoke(app, [*args, "--gradients", "--json", str(out), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["grad_loss"] == "random_projection"
    site = doc["sites"][0]
    rms = [i["grad_rms"] for i in site["inputs"]]
    assert all(r > 0 for r in rms) and site["grad_ratio"] == pytest.approx(max(rms) / min(rms))
    assert all(i["grad_rms_rel"] > 0 for i in site["inputs"])
    assert "grad_ratio=" in result.output and "measured (random_projection)" in result.output
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_segmentation_folder_gives_masks_and_no_mask_is_read_as_an_image(demo: Path) -> None:
    opts = DataOptions(input_size=(32, 32), batch_size=4, batches=5, workers=0, device="cpu")
    done = analyze(ModelRef(TINY), demo, opts, MeasureOptions(gradients=True))  # 5 classes, as the masks
    assert done.analysis.input.images == 8  # the 8 images of images/, not their 8 masks too
    assert done.analysis.grad_loss == "cross_entropy"


@pytest.mark.slow
@pytest.mark.parametrize("name", TOY_MODELS)
def test_fresh_fold_insert_grad_ratio_on_the_tiny_zoo(name: str, demo: Path) -> None:
    """Measured on one batch of 8 demo images with masks (64², seed 0), the sites' grad_ratio fresh,
    after fold and after insert. Insert removes the part of the imbalance that comes from unequal input
    scales: where a site's fresh var_ratio is 2 or more, and at both UPerNet sites (the issue's hand
    probe), insert's grad_ratio is below fresh's. Where the variances are already close (FCN's concat,
    SegFormer's MLP inputs) the imbalance has other causes and insert's value can come out above
    fresh's: those figures, and fold's everywhere, are reported, not judged (docs/gradients.md)."""
    ref = ModelRef(name, {"num_classes": 5})
    opts = DataOptions(input_size=(64, 64), batch_size=8, workers=0, device="cpu")
    how = MeasureOptions(gradients=True)
    states = {"fresh": analyze(ref, demo, opts, how).analysis}
    for mode in ("fold", "insert"):
        model = calibrate(ref, demo, options=CalibrationOptions(mode=mode), data_options=opts).model
        states[mode] = analyze(model, demo, opts, how).analysis
        named = {original_layer(model, s.layer): s for s in states[mode].sites}
        states[mode] = (states[mode], named)
    fresh = states["fresh"]
    assert [s for s in fresh.sites if s.ok], f"{name} has no fusion site"
    for site in (s for s in fresh.sites if s.ok):
        ratios = {"fresh": fresh.grad_ratio(site)}
        for mode in ("fold", "insert"):
            analysis, named = states[mode]
            ratios[mode] = analysis.grad_ratio(named[site.layer])
        var_ratio = fresh.var_ratio(site)
        print(f"{name} {site.layer}: var_ratio {var_ratio:.2f}, grad_ratio " +
              ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))  # fmt: skip
        assert all(math.isfinite(v) and v >= 1 for v in ratios.values())
        if name == "upernet_tiny" or var_ratio >= 2:
            assert ratios["insert"] < ratios["fresh"], (site.layer, ratios)



def test_a_checkpoint_in_insert_state_is_measured_behind_its_equalizers(tmp_path: Path) -> None:
    spec = "fixtures/calibration.py:fuse_two"
    opts = DataOptions(input_size=(16, 16), batch_size=4, device="cpu")
    out = tmp_path / "insert.safetensors"
    cal = CalibrationOptions(mode="insert", min_batches=2)
    done = calibrate(ModelRef(spec), _batches(), out=out, options=cal, data_options=opts)
    how = MeasureOptions(gradients=True)
    from_file = analyze(ModelRef(spec, checkpoint=out), _batches()[:1], opts, how)  # rebuilt from its record
    in_memory = analyze(done.model, _batches()[:1], opts, how).analysis
    assert from_file.record is not None and from_file.record.mode == "insert"
    sites = [s for s in from_file.analysis.sites if s.ok]
    assert [original_layer(done.model, s.layer) for s in sites] == ["fuse", "fuse2"]
    for site in sites:
        assert site.layer.endswith(".layer")
        got = [g.rms for g in from_file.analysis.gradients[site.layer]]
        assert got == pytest.approx([g.rms for g in in_memory.gradients[site.layer]], rel=1e-6)


def _batches() -> list:
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 16, 16, generator=gen) for _ in range(2)]
