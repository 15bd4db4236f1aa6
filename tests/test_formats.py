"""Weights as people have them: mmengine pickles, EMA entries, DDP prefixes, folders, and every bad input
answered with exit 2 and one clean line, nothing written."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from eqsurgeon.errors import CheckpointError, ModelLoadError, OptionError
from eqsurgeon.io import read, write
from eqsurgeon.io.formats import output_format
from fixtures import calibration
from tests._ecosystems import run, save_mmseg

FUSE = f"{Path(calibration.__file__)}:fuse_two"


def _one_clean_line(result: object, *words: str) -> str:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1 and "\x1b" not in err and "[1m" not in err, err
    assert not err.endswith("…"), err
    for word in words:
        assert word in err, err
    return err


def test_mmengine_checkpoint_reads_weights_only_with_numpy_meta(tmp_path: Path) -> None:
    model = calibration.fuse_two()
    path = save_mmseg(model, tmp_path / "iter_1.pth", ddp=True)
    with pytest.raises(Exception, match=r"numpy|mmengine"):
        torch.load(path, weights_only=True)  # torch's default allowlist alone refuses this file
    loaded = read(path)
    assert loaded.tensors.keys() == model.state_dict().keys()  # the DDP "module." prefix is gone
    assert loaded.source.format == "pth" and int(loaded.source.meta["seed"]) == 42 and loaded.record is None


def test_checkpoint_key_picks_an_ema_entry_and_names_the_keys_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "ema.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "state_dict_ema": {"module.w": torch.ones(2)}}, path)
    assert read(path).tensors["w"].sum() == 0
    assert read(path, key="state_dict_ema").tensors["w"].sum() == 2
    with pytest.raises(CheckpointError, match="its top-level keys are state_dict, state_dict_ema"):
        read(path, key="model_ema")
    safetensors = write(tmp_path / "w.safetensors", torch.nn.Linear(1, 1), None)
    with pytest.raises(OptionError, match="checkpoint_key"):
        read(safetensors, key="state_dict_ema")


def test_no_state_dict_names_the_top_level_keys(tmp_path: Path) -> None:
    torch.save({"meta": {"epoch": 1}, "optimizer": {"state": {}}}, tmp_path / "x.pth")
    res = run("analyze", FUSE, "--checkpoint", tmp_path / "x.pth")
    _one_clean_line(res, "top-level keys are meta, optimizer", "--checkpoint-key NAME")


class Custom:
    pass


def test_a_pickled_class_is_named_in_one_whole_sentence(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": Custom()}, tmp_path / "bad.pth")
    err = _one_clean_line(run("check", FUSE, "--checkpoint", tmp_path / "bad.pth"), "weights_only=True")
    assert "test_formats.Custom" in err and err.endswith(".safetensors")


def test_pth_out_keeps_the_input_meta_and_carries_the_record(tmp_path: Path) -> None:
    images = calibration.make_images(tmp_path / "imgs", 8, size=32)
    src = tmp_path / "in.pth"
    # numpy values in meta, as mmengine writes them
    meta = {"dataset_meta": {"classes": ["a"]}, "seed": np.int64(7), "dtype": np.dtype("float32")}
    torch.save({"meta": meta, "state_dict": calibration.fuse_two().state_dict()}, src)
    out = tmp_path / "out.pth"
    res = run("calibrate", FUSE, "--checkpoint", src, "--data", images, "--out", out, "--workers", 0)
    assert res.exit_code == 0, res.output
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["dataset_meta"] == meta["dataset_meta"]  # the input's meta, and the record in it
    assert saved["meta"]["seed"] == 7 and type(saved["meta"]["seed"]) is int  # numpy values as Python's,
    assert saved["meta"]["dtype"] == "float32"  # so torch.load's default weights_only=True reads the file
    assert saved["meta"]["eqsurgeon"]["mode"] == "fold"
    record = read(out).record
    assert record is not None and [s.layer for s in record.equalized_sites] == ["fuse", "fuse2"]


def test_output_format_from_the_path() -> None:
    assert [output_format(p) for p in ("a.safetensors", "a.pth", "a.pt", "calibrated")] == [
        "safetensors", "pth", "pth", "folder"
    ]  # fmt: skip
    with pytest.raises(OptionError, match=r"out='a\.bin' has a suffix"):
        output_format("a.bin")


def test_folder_outputs_need_a_library_model_and_fold_mode(tmp_path: Path) -> None:
    images = calibration.make_images(tmp_path / "imgs", 8, size=32)
    common = ("--data", images, "--batch-size", 4, "--workers", 0)
    _one_clean_line(run("calibrate", FUSE, "--out", tmp_path / "folder", *common), "--out", "save_pretrained")
    assert not (tmp_path / "folder").exists()
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    _one_clean_line(run("calibrate", FUSE, "--out", tmp_path / "taken.safetensors", *common), "--force")


@pytest.mark.parametrize(
    "config, words",
    [
        (None, ("has no config.json", "save_pretrained")),
        ({"model_type": "bert", "architectures": ["BertModel"]}, ("'bert'", "segformer", "upernet")),
        ({"model_type": "no-such-model"}, ("model_type 'no-such-model'",)),
        ({"_model_class": "NoSuchNet"}, ("_model_class 'NoSuchNet'", "FPN")),
        ({"hidden_size": 3}, ("names no architecture",)),
    ],
)
def test_bad_folders(tmp_path: Path, config: dict | None, words: tuple[str, ...]) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    images = calibration.make_images(tmp_path / "imgs", 4, size=32)
    _one_clean_line(run("analyze", folder), *words)
    res = run("calibrate", folder, "--data", images, "--out", tmp_path / "o.safetensors", "--workers", 0)
    _one_clean_line(res, *words)
    assert not (tmp_path / "o.safetensors").exists()


def _calibrated_pth(tmp_path: Path) -> Path:
    images = calibration.make_images(tmp_path / "imgs", 8, size=32)
    out = tmp_path / "cal.pth"
    res = run("calibrate", FUSE, "--data", images, "--out", out, "--batch-size", 4, "--workers", 0)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s.update(layer="head"), ("does not match the model", "of head, which takes 6")),
        (lambda s: s.update(layer="no.such.layer"), ("does not match the model", "which the model lacks")),
        (lambda s: s["inputs"][0].update(channels=[0, 2]), ("channels 0:2, 4:10, 10:15", "0:4, 4:10, 10:15")),
        (lambda s: s["inputs"][2].update(channels=[10, 40]), ("channels up to 40 of fuse",)),
    ],
)
def test_a_record_that_does_not_match_the_model(tmp_path: Path, edit: object, words: tuple[str, ...]) -> None:
    path = _calibrated_pth(tmp_path)
    saved = torch.load(path, weights_only=True)
    edit(next(s for s in saved["meta"]["eqsurgeon"]["sites"] if s["layer"] == "fuse"))  # type: ignore[operator]
    torch.save(saved, path)
    images = tmp_path / "imgs"
    _one_clean_line(run("check", FUSE, "--checkpoint", path, "--data", images, "--batch-size", 4), *words)
    out = tmp_path / "o.pth"
    _one_clean_line(run("calibrate", FUSE, "--checkpoint", path, "--data", images, "--out", out))
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["json", "junit"])
def test_check_documents_an_input_error(tmp_path: Path, fmt: str) -> None:
    res = run("check", FUSE, "--checkpoint", tmp_path / "missing.safetensors", "--format", fmt)
    _one_clean_line(res, "does not exist")
    if fmt == "json":
        doc = json.loads(res.stdout)
        assert doc["passed"] is False and doc["exit_code"] == 2 and "does not exist" in doc["error"]
    else:
        suite = ET.fromstring(res.stdout)
        assert suite.get("errors") == "1" and "does not exist" in suite.find("testcase/error").get("message")


def test_junit_failure_carries_the_measured_ratio_and_the_limit() -> None:
    from fixtures.models import __file__ as models

    res = run("check", f"{models}:iid_pyramid", "--input-size", "64x64", "--format", "junit")
    assert res.exit_code == 1
    message = ET.fromstring(res.stdout).find("testcase/failure").get("message")
    assert message.startswith("var_ratio 2.") and "> max_ratio 1.5" in message


def test_transformers_folder_declares_its_image_settings(tmp_path: Path) -> None:
    from eqsurgeon import DataOptions
    from eqsurgeon.inputs import model_input_size, normalization
    from eqsurgeon.loading import build
    from tests._ecosystems import save_hf

    folder = save_hf("segformer", tmp_path / "seg")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config.update(image_mean=[127.5] * 3, image_std=[63.75] * 3)  # some processors state 0–255 values
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    built = build(str(folder))
    assert built.source.format == "hf" and built.record is None
    assert normalization(built.model, DataOptions(), None) == ((0.5,) * 3, (0.25,) * 3)
    assert model_input_size(built.model) == (64, 64)


def test_smp_factories_download_nothing_by_default() -> None:
    from eqsurgeon.loading import build

    model = build("segmentation_models_pytorch:FPN", {"encoder_name": "resnet18", "classes": 2}).model
    assert model.config["encoder_weights"] is None
    with pytest.raises(ModelLoadError, match="FPN raised"):
        build("segmentation_models_pytorch:FPN", {"encoder_name": "no-such-encoder"})


def test_a_run_folder_named_like_a_zoo_model_does_not_hide_it(tmp_path: Path, monkeypatch) -> None:
    from eqsurgeon.loading import build

    monkeypatch.chdir(tmp_path)
    (tmp_path / "upernet_tiny").mkdir()  # e.g. `eqsurgeon train ... --out upernet_tiny`
    assert build("upernet_tiny", {"num_classes": 3}).source is None
    (tmp_path / "other").mkdir()
    with pytest.raises(ModelLoadError, match=r"folder other has no config\.json"):
        build("other")
