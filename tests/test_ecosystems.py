"""Acceptance, one ecosystem at a time: analyze → calibrate → the library's own load and save → check
passes → calibrate refuses → the record is intact. Tiny random configs, 64×64 images, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eqsurgeon.io import read
from fixtures.calibration import make_images
from tests._ecosystems import HF_MODELS, SMP_MODELS, run, save_hf, save_mmseg, save_smp

BATCH = ("--batch-size", 4)
COMMON = (*BATCH, "--workers", 0)  # calibrate and verify read folders with workers
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("imgs"), 16, size=64)


def _analyze_and_calibrate(model: Path | str, images: Path, out: Path, *extra: object) -> dict:
    analyzed = run("analyze", model, "--data", images, "--input-size", 64, "--format", "json", *BATCH, *extra)
    assert analyzed.exit_code == 0, analyzed.output
    sites = [s for s in json.loads(analyzed.stdout)["sites"] if s["status"] == "ok"]
    assert sites and max(s["var_ratio"] for s in sites) > 1.5  # fresh: something to repair
    done = run("calibrate", model, "--data", images, "--out", out, "--input-size", "64x64", *COMMON, *extra)
    assert done.exit_code == 0, done.output
    return {s["layer"]: s for s in sites}


def _check_passes_and_refuses(model: Path | str, images: Path, tmp_path: Path, *extra: object) -> None:
    checked = run("check", model, "--data", images, "--input-size", "64x64", "--batches", 2, *BATCH, *extra)
    assert checked.exit_code == 0, checked.output
    again = tmp_path / "again.safetensors"
    refused = run("calibrate", model, "--data", images, "--out", again, *COMMON, *extra)
    assert refused.exit_code == 2 and "already scale-equalized" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not again.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_transformers_folder(name: str, images: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSemanticSegmentation

    fresh = save_hf(name, tmp_path / "fresh")
    sites = _analyze_and_calibrate(fresh, images, tmp_path / "cal")
    record = json.loads((tmp_path / "cal" / "config.json").read_text())["eqsurgeon"]
    assert {s["layer"] for s in record["sites"]} == set(sites)
    assert (tmp_path / "cal" / "preprocessor_config.json").is_file()  # the user's image settings travel
    loaded = AutoModelForSemanticSegmentation.from_pretrained(str(tmp_path / "cal"), output_loading_info=True)
    model, info = loaded
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.save_pretrained(str(tmp_path / "resaved"))  # the user's own round trip
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["eqsurgeon"] == record
    _check_passes_and_refuses(tmp_path / "resaved", images, tmp_path)
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["eqsurgeon"] == record
    # the calibrated folder as --checkpoint of the original one: same verdict
    as_checkpoint = run("check", fresh, "--checkpoint", tmp_path / "resaved", "--data", images, *BATCH)
    assert as_checkpoint.exit_code == 0, as_checkpoint.output


@pytest.mark.parametrize("arch", [a if a == "FPN" else pytest.param(a, marks=SLOW) for a in SMP_MODELS])
def test_smp_folder(arch: str, images: Path, tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp

    fresh = save_smp(arch, tmp_path / "fresh")
    sites = _analyze_and_calibrate(fresh, images, tmp_path / "cal")
    record = json.loads((tmp_path / "cal" / "config.json").read_text())["eqsurgeon"]
    assert {s["layer"] for s in record["sites"]} == set(sites)
    model = smp.from_pretrained(str(tmp_path / "cal"))  # strict: no missing or unexpected keys
    model.save_pretrained(str(tmp_path / "resaved"))
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["eqsurgeon"] == record
    _check_passes_and_refuses(tmp_path / "resaved", images, tmp_path)


def test_mmsegmentation_pth(images: Path, tmp_path: Path) -> None:
    from eqsurgeon.registry import create_model

    torch.manual_seed(0)
    src = save_mmseg(create_model("upernet_tiny", num_classes=3), tmp_path / "iter_160000.pth")
    spec = ("upernet_tiny", "--arg", "num_classes=3")
    sites = _analyze_and_calibrate(spec[0], images, tmp_path / "cal.pth", *spec[1:], "--checkpoint", src)
    out = torch.load(tmp_path / "cal.pth")  # torch's default weights_only=True, as mmengine loads it
    assert set(out) == {"state_dict", "meta"} and out["meta"]["seed"] == 42  # the input's meta kept,
    assert type(out["meta"]["seed"]) is int and out["meta"]["hist"] == [0, 1, 2]  # numpy values as Python's
    assert out["meta"]["dtype"] == "float32"
    assert out["meta"]["dataset_meta"]["classes"] == ("a", "b", "c")
    record = out["meta"]["eqsurgeon"]
    assert {s["layer"] for s in record["sites"]} == set(sites)
    # MMSegmentation's own load and save: mmengine reads the state dict strictly and writes its layout
    model = create_model("upernet_tiny", num_classes=3)
    model.load_state_dict(out["state_dict"], strict=True)
    torch.save({"meta": out["meta"], "state_dict": model.state_dict()}, tmp_path / "resaved.pth")
    _check_passes_and_refuses(spec[0], images, tmp_path, *spec[1:], "--checkpoint", tmp_path / "resaved.pth")
    assert read(tmp_path / "resaved.pth").record == read(tmp_path / "cal.pth").record


def test_a_calibrated_folder_verifies_with_its_own_record(images: Path, tmp_path: Path) -> None:
    save_smp("FPN", tmp_path / "fresh")
    out = tmp_path / "cal"
    done = run("calibrate", tmp_path / "fresh", "--data", images, "--out", out, "--input-size", 64, *COMMON)
    assert done.exit_code == 0, done.output
    verified = run("verify", out, "--data", images, "--format", "json", *COMMON)  # the folder's own record
    assert verified.exit_code == 0, verified.output
    assert all(abs(s["var_ratio"] - 1) < 0.2 for s in json.loads(verified.stdout)["sites"])
