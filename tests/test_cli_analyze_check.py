"""The analyze and check commands: outputs, exit codes, and one-line errors for bad input."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import FIXTURE_FILE, assert_input_error, run_cli

FX = str(FIXTURE_FILE)


run = run_cli


def test_analyze_writes_the_json_contract(tmp_path):
    out = tmp_path / "a.json"
    result = run("analyze", f"{FX}:dropout_between", "--input-size", "32x32", "--json", out)
    assert result.exit_code == 0, result.output
    assert "captured with fx" in result.output
    doc = json.loads(out.read_text())
    assert doc["model"] == f"{FX}:dropout_between"
    assert (doc["frontend"], doc["bn_mode"]) == ("fx", "batch")
    assert doc["input"] == {"source": "synthetic", "images": 8, "size": [32, 32]}  # one batch of 8
    (site,) = doc["sites"]
    assert (site["layer"], site["op"], site["groups"], site["status"], site["reason"]) == (
        "fuse",
        "conv2d",
        1,
        "ok",
        None,
    )
    assert [i["channels"] for i in site["inputs"]] == [[0, 4], [4, 8]]
    assert site["inputs"][0]["upsample"] is None
    assert site["inputs"][1]["upsample"] == {"mode": "bilinear", "factor": [2.0, 2.0], "align_corners": False}
    variances = [i["var"] for i in site["inputs"]]
    assert site["var_ratio"] == pytest.approx(max(variances) / min(variances))
    assert doc["add_sites"] == []


def test_analyze_reports_export_fallback_and_why(tmp_path):
    result = run("analyze", f"{FX}:shape_dependent_if", "--input-size", "32x32")
    assert result.exit_code == 0, result.output
    assert "captured with export" in result.output
    assert "torch.fx failed: TraceError" in result.output


def test_analyze_plot_writes_png(tmp_path):
    out = tmp_path / "v.png"
    result = run("analyze", f"{FX}:iid_pyramid", "--input-size", "64x64", "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_add_sites_are_listed(tmp_path):
    out = tmp_path / "a.json"
    assert run("analyze", f"{FX}:fpn_add", "--input-size", "32x32", "--json", out).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["sites"] == []
    assert doc["add_sites"][0]["inputs"][1]["upsample"]["mode"] == "nearest"


def test_model_without_sites_exits_zero_with_a_clear_statement():
    result = run("analyze", f"{FX}:no_sites", "--input-size", "32x32")
    assert result.exit_code == 0
    assert "no fusion site" in result.output
    result = run("check", f"{FX}:no_sites", "--input-size", "32x32")
    assert result.exit_code == 0
    assert "no fusion site" in result.output


def test_check_fails_on_disequilibrium_and_passes_when_equalized():
    bad = run("check", f"{FX}:iid_pyramid", "--input-size", "64x64")
    assert bad.exit_code == 1, bad.output
    assert "FAIL fuse" in bad.output
    good = run("check", f"{FX}:iid_pyramid_equalized", "--input-size", "64x64")
    assert good.exit_code == 0, good.output
    loose = run("check", f"{FX}:iid_pyramid", "--input-size", "64x64", "--max-ratio", "10")
    assert loose.exit_code == 0


def test_check_json_and_junit_formats():
    res = run("check", f"{FX}:iid_pyramid", "--input-size", "64x64", "--format", "json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["passed"] is False and doc["sites"][0]["layer"] == "fuse" and doc["sites"][0]["var_ratio"] > 2
    res = run("check", f"{FX}:iid_pyramid", "--input-size", "64x64", "--format", "junit")
    assert res.exit_code == 1
    assert '<testsuite name="eqsurgeon.check" tests="1" failures="1">' in res.stdout
    assert "<failure" in res.stdout


def test_skipped_sites_do_not_fail_check():
    res = run("check", f"{FX}:shared_fuse", "--input-size", "32x32", "--format", "json")
    assert res.exit_code == 0
    assert all(s["var_ratio"] is None for s in json.loads(res.stdout)["sites"])


def test_bad_input_missing_model_file(tmp_path):
    assert_input_error(run("analyze", f"{tmp_path}/nope.py:make"), "does not exist")


def test_bad_input_missing_factory():
    assert_input_error(run("analyze", f"{FX}:no_such_factory"), "no factory 'no_such_factory'")


def test_bad_input_factory_raises():
    assert_input_error(run("analyze", f"{FX}:raises"), "raised RuntimeError", "this factory always fails")


def test_bad_input_model_neither_frontend_can_capture():
    assert_input_error(
        run("analyze", f"{FX}:untraceable", "--input-size", "32x32"), "cannot capture", "torch.export"
    )


def test_bad_input_unknown_spec_and_zoo_typo():
    assert_input_error(run("analyze", "upernet_tiny_typo"), "upernet_tiny")


def test_bad_input_non_image_file_in_data(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    assert_input_error(run("analyze", f"{FX}:dropout_between", "--data", tmp_path), str(tmp_path))


def test_bad_input_checkpoint_keys_do_not_fit(tmp_path):
    ckpt = tmp_path / "other.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(ckpt))
    assert_input_error(
        run("analyze", f"{FX}:dropout_between", "--checkpoint", ckpt), "does not fit", "missing", "unexpected"
    )
    assert_input_error(
        run("analyze", f"{FX}:dropout_between", "--checkpoint", tmp_path / "x.pt"), "does not exist"
    )


class Evil:
    """Any pickled class: weights_only loading must refuse to construct it."""


def test_bad_input_pickled_object_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, bad)
    assert_input_error(run("analyze", f"{FX}:dropout_between", "--checkpoint", bad), "weights_only=True")


def test_bad_input_size_and_batch():
    assert_input_error(run("analyze", f"{FX}:dropout_between", "--input-size", "big"), "--input-size")
    small = run("analyze", f"{FX}:dropout_between", "--batch-size", "1")
    assert_input_error(small, "--batch-size 1 is too small", "--bn-mode eval")


def test_debug_is_accepted_after_the_command_too():
    result = run("analyze", f"{FX}:raises", "--debug")
    assert result.exit_code != 0 and result.exception is not None  # re-raised for a traceback
    plain = run("analyze", f"{FX}:raises")
    assert plain.exit_code == 2 and isinstance(plain.exception, SystemExit)
    assert plain.stderr.startswith("error: factory") and "Traceback" not in plain.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "analyze", f"{FX}:raises")
    assert result.exit_code != 0
    assert result.exception is not None  # re-raised for a traceback


def test_analyze_on_an_image_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 100, 200 - i * 50)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "a.json"
    result = run(
        "analyze",
        f"{FX}:dropout_between",
        "--data",
        tmp_path,
        "--input-size",
        "32x32",
        "--batch-size",
        "3",
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file(s): broken.jpg" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["input"]["source"] == str(tmp_path) and doc["input"]["images"] == 3


def test_checkpoint_round_trip_through_cli(tmp_path):
    from fixtures.models import dropout_between

    model = dropout_between()
    ckpt = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(ckpt))
    pth = tmp_path / "m.pth"
    torch.save({"state_dict": model.state_dict()}, pth)
    for path in (ckpt, pth):
        assert (
            run("analyze", f"{FX}:dropout_between", "--checkpoint", path, "--input-size", "32x32").exit_code
            == 0
        )


def test_torchvision_and_arg_parsing(tmp_path):
    out = tmp_path / "a.json"
    result = run(
        "analyze",
        "torchvision:deeplabv3_mobilenet_v3_large",
        "--arg",
        "num_classes=3",
        "--input-size",
        "64x64",
        "--batch-size",
        "2",
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["sites"]) == 1 and len(doc["sites"][0]["inputs"]) == 5


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "a.json"
    out.write_text("keep me")
    assert_input_error(
        run("analyze", f"{FX}:dropout_between", "--input-size", "32x32", "--json", out), "--force"
    )
    assert out.read_text() == "keep me"
    assert (
        run("analyze", f"{FX}:dropout_between", "--input-size", "32x32", "--json", out, "--force").exit_code
        == 0
    )
    assert out.read_text().startswith("{")
