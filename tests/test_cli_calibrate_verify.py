"""`eqsurgeon calibrate` / `verify` end to end: round trip, effective statistics, determinism, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from eqsurgeon.io import load, read_checkpoint, save_checkpoint
from fixtures.calibration import fuse_two, fuse_two_plain, make_images
from tests.conftest import run_cli

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "calibration.py"


def spec(name: str) -> str:
    return f"{MODELS}:{name}"


def run(*args: object) -> object:
    return run_cli(*args, catch_exceptions=False)


def calib(model: str, data: Path, out: Path, *extra: object) -> object:
    return run(
        "calibrate", spec(model), "--data", data, "--out", out, "--batch-size", 4, "--workers", 0, *extra
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("imgs"), 24)


def test_round_trip_only_fusing_weights_differ(images: Path, tmp_path: Path) -> None:
    src = fuse_two_plain()
    torch.nn.init.normal_(src.fuse.bias)
    save_checkpoint(tmp_path / "in.safetensors", src.state_dict(), _plain_meta(), force=False)
    # a plain (not calibrated) input checkpoint: the metadata above records no equalized site
    res = calib(
        "fuse_two_plain", images, tmp_path / "out.safetensors", "--checkpoint", tmp_path / "in.safetensors"
    )
    assert res.exit_code == 0, res.output
    assert "var_ratio" in res.output and "wrote" in res.output
    tensors, meta = read_checkpoint(tmp_path / "out.safetensors")
    fresh = fuse_two_plain()
    fresh.load_state_dict(tensors, strict=True)
    changed = {k for k, v in tensors.items() if not torch.equal(v, src.state_dict()[k])}
    # nothing follows fuse: auto folds its means into the bias; BN follows fuse2: its bias is kept
    assert changed == {"fuse.weight", "fuse.bias", "fuse2.weight"}
    assert meta.mode == "fold" and [s.layer for s in meta.sites] == ["fuse", "fuse2"]
    assert [s.bias_corrected for s in meta.sites] == [True, False]
    first = meta.sites[0].inputs
    assert [i.channels for i in first] == [(0, 4), (4, 10), (10, 15)]
    assert all(i.scale == pytest.approx(1 / i.std) for i in first)
    assert meta.data_fingerprint and meta.images > 0 and meta.tool_version


def test_verify_effective_statistics_and_check_passes(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    # every image, in one order: the calibration images are exactly the ones verify sees
    assert calib("fuse_two", images, out, "--tolerance", 1e-9).exit_code == 0
    res = run("verify", spec("fuse_two"), "--checkpoint", out, "--data", images, "--batch-size", 4,
              "--workers", 0, "--json", tmp_path / "v.json")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["images"] == 24 and len(report["sites"]) == 2
    for site in report["sites"]:
        for inp in site["inputs"]:
            assert abs(inp["mean"]) <= 0.01 and abs(inp["var"] - 1) <= 0.02, inp
    check = run("check", spec("fuse_two"), "--checkpoint", out, "--data", images, "--input-size", "32x32",
                "--batch-size", 4, "--batches", 6)  # fmt: skip
    assert check.exit_code == 0, check.output
    assert "folded scales applied" in check.output
    before = run("check", spec("fuse_two"), "--data", images, "--input-size", "32x32", "--batch-size", 4)
    assert before.exit_code == 1


def test_insert_mode_round_trip_and_load(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "i.safetensors"
    res = calib("fuse_two", images, out, "--mode", "insert")
    assert res.exit_code == 0, res.output
    tensors, _ = read_checkpoint(out)
    assert "fuse.layer.weight" in tensors and "fuse.equalizers.2.std" in tensors
    model = load(fuse_two(), out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert model.train()(x).shape == (4, 3, 32, 32)
    res = run(
        "verify", spec("fuse_two"), "--checkpoint", out, "--data", images, "--batch-size", 4, "--workers", 0
    )
    assert res.exit_code == 0, res.output
    check = run("check", spec("fuse_two"), "--checkpoint", out, "--data", images, "--input-size", "32x32",
                "--batch-size", 4, "--batches", 6)  # fmt: skip
    assert check.exit_code == 0, check.output


def test_two_runs_write_identical_bytes(images: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert calib("fuse_two", images, a, "--seed", 3).exit_code == 0
    res = run("calibrate", spec("fuse_two"), "--data", images, "--out", b, "--batch-size", 4, "--workers", 2,
              "--seed", 3)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.slow
def test_zoo_model_runs_are_identical_too(images: Path, tmp_path: Path) -> None:
    # a zoo model is randomly initialized: --seed must fix its weights as well as the image order
    outs = [tmp_path / f"{n}.safetensors" for n in "ab"]
    for out in outs:
        res = run("calibrate", "upernet_tiny", "--data", images, "--out", out, "--input-size", "64x64",
                  "--batch-size", 4, "--workers", 0, "--max-images", 8)  # fmt: skip
        assert res.exit_code == 0, res.output
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_json_report(images: Path, tmp_path: Path) -> None:
    res = calib(
        "fuse_two", images, tmp_path / "o.safetensors", "--json", tmp_path / "r.json", "--max-images", 8
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["images"] == 8 and data["converged"] is False
    site = data["sites"][0]
    assert site["var_ratio_before"] > 2 and site["var_ratio_after"] == pytest.approx(1.0)
    assert {"mean", "std", "scale", "channels"} <= set(site["inputs"][0])


def test_mix_of_good_and_corrupt_files_reports_skips(images: Path, tmp_path: Path) -> None:
    mixed = make_images(tmp_path / "mixed", 8)
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = (images / "img_000.png").read_bytes()
    (mixed / "cut.png").write_bytes(data[: len(data) // 2])
    res = calib("fuse_two", mixed, tmp_path / "o.safetensors")
    assert res.exit_code == 0, res.output
    assert "skipped 2 unreadable file(s)" in res.output
    assert "broken.png" in res.output and "cut.png" in res.output
    assert read_checkpoint(tmp_path / "o.safetensors")[1].skipped_files == 2


@pytest.mark.parametrize("case", ["empty", "corrupt", "missing"])
def test_bad_folders_exit_2_and_write_nothing(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case == "corrupt":
        (folder / "a.jpg").write_bytes(b"nope")
        (folder / "b.png").write_bytes(b"")
    out = tmp_path / "out" / "o.safetensors"
    out.parent.mkdir()
    res = calib("fuse_two", folder, out)
    assert res.exit_code == 2
    assert "error:" in res.stderr and str(folder) in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(out.parent.iterdir()) == []


def test_existing_out_is_kept_without_force(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    res = calib("fuse_two", images, out)
    assert res.exit_code == 2 and "--force" in res.output
    assert out.read_bytes() == b"precious"
    assert calib("fuse_two", images, out, "--force").exit_code == 0
    assert read_checkpoint(out)[1] is not None


def test_already_equalized_checkpoint_is_refused(images: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.safetensors"
    assert calib("fuse_two", images, first).exit_code == 0
    res = calib("fuse_two", images, tmp_path / "second.safetensors", "--checkpoint", first)
    assert res.exit_code == 2 and "already scale-equalized" in res.output and "second time" in res.output
    assert not (tmp_path / "second.safetensors").exists()
    assert "--allow-equalized" in res.stderr
    second = tmp_path / "second.safetensors"
    forced = calib("fuse_two", images, second, "--checkpoint", first, "--allow-equalized")
    assert forced.exit_code == 0
    # the features are unchanged by folding, so equalizing on top divides the fusing weights by σ again
    (a, ra), (b, rb) = read_checkpoint(first), read_checkpoint(second)
    layer = ra.equalized_sites[0].layer
    scale = torch.tensor([i.scale for i in rb.equalized_sites[0].inputs])
    assert not torch.equal(a[f"{layer}.weight"], b[f"{layer}.weight"])
    assert scale == pytest.approx(torch.tensor([i.scale for i in ra.equalized_sites[0].inputs]), rel=1e-3)


def test_zero_variance_input(images: Path, tmp_path: Path) -> None:
    only = calib("fuse_constant", images, tmp_path / "a.safetensors")
    assert only.exit_code == 2 and "zero variance" in only.output
    assert not (tmp_path / "a.safetensors").exists()
    # with a second, healthy site: the constant site is skipped with its reason, the other equalized
    res = calib("fuse_constant_two", images, tmp_path / "b.safetensors")
    assert res.exit_code == 0, res.output
    meta = read_checkpoint(tmp_path / "b.safetensors")[1]
    assert [(s.layer, s.status) for s in meta.sites] == [("fuse", "skipped"), ("fuse2", "ok")]
    assert "zero variance" in meta.sites[0].reason
    tensors = read_checkpoint(tmp_path / "b.safetensors")[0]
    assert torch.equal(tensors["fuse.weight"], fuse_two().state_dict()["fuse.weight"])


def test_model_without_sites(images: Path, tmp_path: Path) -> None:
    res = calib("no_sites", images, tmp_path / "o.safetensors")
    assert res.exit_code == 2 and "no equalizable fusion site" in res.output
    assert list(tmp_path.iterdir()) == []


def test_interrupt_while_writing_leaves_no_file(images: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)  # Ctrl-C after the bytes went to the temp file
    res = calib("fuse_two", images, tmp_path / "o.safetensors")
    assert res.exit_code == 130  # click turns KeyboardInterrupt into exit 130 (128 + SIGINT)
    assert list(tmp_path.iterdir()) == []


def test_bad_options_exit_2(images: Path, tmp_path: Path) -> None:
    for extra, word in [
        (("--mode", "fuse"), "--mode"),
        (("--bias-correction", "maybe"), "--bias-correction"),
        (("--mean", "0.5,0.5"), "--mean"),
        (("--input-size", "big"), "--input-size"),
        (("--bn-mode", "train"), "--bn-mode"),
    ]:
        res = calib("fuse_two", images, tmp_path / "o.safetensors", *extra)
        assert res.exit_code == 2 and word in res.output, (extra, res.output)
    assert list(tmp_path.iterdir()) == []


def _plain_meta():
    from eqsurgeon.records import CalibrationRecord

    return CalibrationRecord(model="x", mode="fold", bn_mode="batch", images=0, data_fingerprint="")
