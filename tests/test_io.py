"""Checkpoint writing: atomic, deterministic, never overwrites, refuses to equalize twice."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from eqsurgeon import io as ckpt
from eqsurgeon.errors import CheckpointError, ModelLoadError, OutputExistsError
from eqsurgeon.io import files as io_files
from eqsurgeon.io import (
    load,
    read_checkpoint,
    record_from_json,
    record_to_json,
    refuse_double_equalization,
    save_checkpoint,
)
from eqsurgeon.records import CalibrationRecord, InputRecord, SiteRecord


def _meta(mode: str = "fold") -> CalibrationRecord:
    site = SiteRecord(
        layer="0", op="conv2d", groups=1, channel_dim=1, status="ok",
        inputs=(InputRecord((0, 2), 0.5, 2.0, 0.5), InputRecord((2, 4), -0.1, 0.25, 4.0)),
    )  # fmt: skip
    return CalibrationRecord(
        model="fixture", mode=mode, bn_mode="batch", images=8, data_fingerprint="f00", sites=(site,)
    )


def test_round_trip_preserves_tensors_and_metadata(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2))
    path = save_checkpoint(tmp_path / "a.safetensors", net.state_dict(), _meta())
    tensors, meta = read_checkpoint(path)
    assert meta == record_from_json(record_to_json(_meta()))
    assert meta.sites[0].inputs[1].channels == (2, 4) and meta.tool_version
    fresh = nn.Sequential(nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2))
    fresh.load_state_dict(tensors, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_bytes_are_identical_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys, torch; from torch import nn; sys.path.insert(0, '.');"
        "from tests.test_io import _meta; from eqsurgeon.io import save_checkpoint;"
        "torch.manual_seed(0); net = nn.Sequential(nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2), nn.Linear(3, 3));"
        "save_checkpoint(sys.argv[1], net.state_dict(), _meta())"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "random"}
    for name in ("a", "b", "c"):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"{name}.safetensors")], check=True, cwd=root, env=env
        )
    blobs = {(tmp_path / f"{n}.safetensors").read_bytes() for n in "abc"}
    assert len(blobs) == 1


def test_never_overwrites_without_force(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=r"already exists.*force"):
        save_checkpoint(path, {"w": torch.ones(1)}, _meta())
    assert path.read_bytes() == b"precious"
    save_checkpoint(path, {"w": torch.ones(1)}, _meta(), force=True)
    assert read_checkpoint(path)[1] is not None
    with pytest.raises(OutputExistsError, match=r"\.safetensors"):
        save_checkpoint(tmp_path / "a.pt", {"w": torch.ones(1)}, _meta())


@pytest.mark.parametrize("where", ["write", "replace"])
def test_interrupt_during_write_leaves_no_partial_file(tmp_path: Path, monkeypatch, where: str) -> None:
    path = tmp_path / "a.safetensors"

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    if where == "write":
        monkeypatch.setattr(os, "fsync", interrupt)  # after bytes hit the temporary file
    else:
        monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.ones(1000)}, _meta())
    assert list(tmp_path.iterdir()) == []


def test_interrupt_keeps_the_old_file_when_forcing(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, _meta())
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.zeros(3)}, _meta(), force=True)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_refuses_already_equalized_unless_forced(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"second time.*allow_equalized=True"):
        refuse_double_equalization(_meta(), "x.safetensors", allow=False)
    refuse_double_equalization(_meta(), "x.safetensors", allow=True)
    refuse_double_equalization(None, "plain.safetensors", allow=False)


def test_reads_pt_weights_only_and_unwraps(tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "a.pth")
    tensors, meta = read_checkpoint(tmp_path / "a.pth")
    assert meta is None and set(tensors) == {"weight", "bias"}
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_load_rebuilds_insert_mode(tmp_path: Path) -> None:
    from eqsurgeon.equalize import InputStat, insert_equalizers

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU())
    insert_equalizers(net, "0", [InputStat((0, 2), 0.5, 2.0), InputStat((2, 4), -0.1, 0.25)])
    path = save_checkpoint(tmp_path / "i.safetensors", net.state_dict(), _meta("insert"))
    fresh = load(nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU()), path)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(fresh(x), net(x))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load(
            nn.Sequential(nn.Conv2d(4, 3, 1)),
            save_checkpoint(tmp_path / "f.safetensors", {"x": torch.ones(1)}, _meta()),
        )


def test_insert_mode_checkpoint_of_a_channels_last_linear_fusion_loads_back_exactly(tmp_path: Path) -> None:
    """The rebuilt equalizers slice the last dim, as the calibrated ones did (dim 1 is the image height)."""
    from eqsurgeon.calibration import CalibrationOptions, RecordSource, build_record, calibrate
    from eqsurgeon.equalize import EqualizedInput
    from fixtures.models import channels_last_linear

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 16, 16, generator=gen) * 2 + 1 for _ in range(4)]
    model = channels_last_linear()
    result = calibrate(model, batches, CalibrationOptions(mode="insert", min_batches=2))
    record = build_record(result, RecordSource("fixtures/models.py:channels_last_linear", "f"))
    assert [s.channel_dim for s in record.equalized_sites] == [-1]
    path = save_checkpoint(tmp_path / "i.safetensors", model.state_dict(), record)
    fresh = load(channels_last_linear(), path)
    assert isinstance(fresh.fuse, EqualizedInput) and fresh.fuse.channel_dim == -1
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


class _MakesAFolder:
    """A pickled object whose unpickling has a visible side effect: it creates a folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize("wrapper", ["state_dict", "plain"])
def test_a_pickled_payload_is_refused_before_it_runs(tmp_path: Path, wrapper: str) -> None:
    marker = tmp_path / "payload-ran"
    payload = {"weight": torch.ones(2), "evil": _MakesAFolder(marker)}
    torch.save({"state_dict": payload} if wrapper == "state_dict" else payload, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"weights_only=True.*\.safetensors"):
        ckpt.read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()  # the payload was never unpickled
    torch.load(tmp_path / "evil.pth", weights_only=False)  # what an unsafe load does
    assert marker.is_dir()


@pytest.mark.parametrize(
    ("state", "label"),
    [
        ({"0.weight": torch.zeros(2, 3)}, "1 missing (e.g. 0.bias)"),
        (
            {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2), "extra": torch.zeros(1)},
            "1 unexpected (e.g. extra)",
        ),
        ({"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2)}, "1 wrong shape (e.g. 0.weight)"),
    ],
)
def test_a_state_dict_that_does_not_fit_names_its_keys_and_the_file(
    tmp_path: Path, state, label: str
) -> None:
    path = save_checkpoint(tmp_path / "w.safetensors", state)
    net = nn.Sequential(nn.Linear(3, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=rf"checkpoint {path} does not fit the model: {re.escape(label)};"
    ):
        load(net, path)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing was loaded


def test_the_key_list_of_a_misfit_is_cut_at_three(tmp_path: Path) -> None:
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(3)])
    with pytest.raises(CheckpointError, match=r"6 missing \(e\.g\. 0\.weight, 0\.bias, 1\.weight\);") as err:
        ckpt.fit_state_dict(net, {"x": torch.ones(1)}, "f.pt")
    assert "1 unexpected (e.g. x)" in str(err.value) and "wrong shape" not in str(err.value)


def test_atomic_write_flushes_before_fsync_and_leaves_only_the_file(tmp_path: Path, monkeypatch) -> None:
    sizes: list[int] = []
    real = os.fsync
    monkeypatch.setattr(io_files.os, "fsync", lambda fd: (sizes.append(os.fstat(fd).st_size), real(fd)))
    path = ckpt.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x" * 10))
    assert sizes == [10] and path == tmp_path / "a.bin" and path.read_bytes() == b"x" * 10
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(ValueError, match="boom"):
        ckpt.atomic_write(
            tmp_path / "b.bin", lambda f: (f.write(b"y"), (_ for _ in ()).throw(ValueError("boom")))
        )
    assert list(tmp_path.iterdir()) == [path]


def test_write_json_writes_null_for_nan_and_ends_with_a_newline(tmp_path: Path) -> None:
    import json

    path = ckpt.write_json(tmp_path / "r.json", {"a": [1.5, float("nan")], "b": float("inf")})
    text = path.read_text()
    assert text == json.dumps({"a": [1.5, None], "b": None}, indent=2) + "\n"


def test_check_output_names_each_problem(tmp_path: Path) -> None:
    with pytest.raises(OutputExistsError, match=f"output folder {tmp_path / 'no'} does not exist; create it"):
        ckpt.check_output(tmp_path / "no" / "x.safetensors", False)
    with pytest.raises(OutputExistsError, match=f"{tmp_path} is a folder; name a file inside it"):
        ckpt.check_output(tmp_path, True)
    (tmp_path / "x.json").write_text("{}")
    assert ckpt.check_output(tmp_path / "x.json", True) == tmp_path / "x.json"
    assert ckpt.check_output(tmp_path / "y.json", False, (".json",)) == tmp_path / "y.json"
    with pytest.raises(OutputExistsError, match=r"y\.pt must end in \.safetensors or \.json"):
        ckpt.check_output(tmp_path / "y.pt", False, (".safetensors", ".json"))


def test_save_checkpoint_copies_any_layout_and_stores_extra_metadata(tmp_path: Path) -> None:
    view = torch.arange(6.0).view(2, 3).t()  # not contiguous
    path = save_checkpoint(tmp_path / "a.safetensors", {"w": view}, None, extra={"iteration": "3"})
    tensors, header = ckpt.read_state_dict(path)
    assert torch.equal(tensors["w"], view) and header == {"iteration": "3"}
    assert read_checkpoint(path)[1] is None
    plain = save_checkpoint(tmp_path / "b.safetensors", {"w": view})
    assert ckpt.read_state_dict(plain)[1] == {}


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_reads_wrapped_pickled_state_dicts(tmp_path: Path, key: str) -> None:
    torch.save({key: {"w": torch.ones(2)}, "meta": {"epoch": 1}}, tmp_path / "a.pth")
    tensors, header = ckpt.read_state_dict(tmp_path / "a.pth")
    assert set(tensors) == {"w"} and header == {}


def test_unreadable_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(
        CheckpointError,
        match=r"mixed\.pt holds no state dict of tensors: its top-level keys are w, epoch; pass checkpoint",
    ):
        ckpt.read_state_dict(tmp_path / "mixed.pt")
    with pytest.raises(ModelLoadError, match=r"has no config\.json; name a folder written by save_pre"):
        ckpt.read_state_dict(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is not a readable safetensors file \("):
        ckpt.read_state_dict(tmp_path / "bad.safetensors")


def test_a_malformed_record_names_the_file(tmp_path: Path) -> None:
    assert ckpt.record_from_header({}) is None and ckpt.record_from_header({"eqsurgeon": ""}) is None
    with pytest.raises(
        CheckpointError, match=r"x\.safetensors has a malformed eqsurgeon record \(.*\); recal"
    ):
        ckpt.record_from_header({"eqsurgeon": '{"model": "m"}'}, "x.safetensors")
    with pytest.raises(CheckpointError, match=r"the checkpoint has a malformed eqsurgeon record"):
        ckpt.record_from_header({"eqsurgeon": "[1, 2]"})


def test_records_read_newer_keys_and_old_0_255_normalization() -> None:
    text = record_to_json(_meta()).replace('"bn_mode"', '"future": 1, "bn_mode"')
    text = text.replace('"bias_corrected"', '"future_site": 2, "bias_corrected"')
    text = text.replace('"channels"', '"future_input": 3, "channels"')
    assert record_from_json(text) == record_from_json(record_to_json(_meta()))
    old = record_from_json(
        '{"model": "m", "mode": "fold", "bn_mode": "eval", "images": 1, "data_fingerprint": "", '
        '"image_mean": [127.5, 127.5, 127.5], "image_std": [51.0, 51.0, 51.0], "input_size": [32, 48]}'
    )
    assert old.image_mean == pytest.approx((0.5, 0.5, 0.5)) and old.image_std == pytest.approx(
        (0.2, 0.2, 0.2)
    )
    assert old.input_size == (32, 48) and old.sites == () and old.model_kwargs == {}
    kept = record_from_json(record_to_json(CalibrationRecord("m", "fold", "eval", 1, "", image_mean=(1.2,))))
    assert kept.image_mean == (1.2,) and kept.image_std is None  # below 1.5: already on the 0–1 scale
    edge = CalibrationRecord("m", "fold", "eval", 1, "", image_mean=(1.5,), image_std=(0.5,))
    assert record_from_json(record_to_json(edge)).image_mean == (1.5,)  # the 0–255 scale starts above 1.5


def test_record_json_fills_in_the_tool_version_only_when_missing() -> None:
    from eqsurgeon import __version__

    assert ckpt.record_to_dict(_meta())["tool_version"] == __version__
    stamped = CalibrationRecord("m", "fold", "eval", 1, "", tool_version="0.0.1")
    assert ckpt.record_to_dict(stamped)["tool_version"] == "0.0.1"


def test_rebuild_equalizers_only_for_insert_records_and_only_once(tmp_path: Path) -> None:
    from eqsurgeon.equalize import EqualizedInput

    net = nn.Sequential(nn.Conv2d(4, 2, 1))
    ckpt.rebuild_equalizers(net, _meta("fold"))
    assert isinstance(net[0], nn.Conv2d)
    ckpt.rebuild_equalizers(net, _meta("insert"))
    first = net[0]
    assert isinstance(first, EqualizedInput) and first.channels == ((0, 2), (2, 4)) and first.channel_dim == 1
    ckpt.rebuild_equalizers(net, _meta("insert"))  # applied again: left as it is
    assert net[0] is first
    with pytest.raises(CheckpointError, match="the record equalized 0, which this model lacks"):
        ckpt.rebuild_equalizers(nn.Module(), _meta("insert"))


def test_only_a_record_with_equalized_sites_is_refused() -> None:
    skipped = SiteRecord(layer="0", op="conv2d", groups=1, channel_dim=1, status="skipped")
    nothing = CalibrationRecord("m", "fold", "batch", 8, "f", sites=(skipped,))
    refuse_double_equalization(nothing, "x.safetensors", allow=False)
    with pytest.raises(
        CheckpointError, match=r"x\.safetensors is already scale-equalized \(insert mode, 1 site"
    ):
        refuse_double_equalization(_meta("insert"), "x.safetensors", allow=False)


def test_error_messages_name_the_problem_the_cause_and_the_fix(tmp_path: Path) -> None:
    """The whole line each io error gives, cause included (a message is the contract with the user)."""
    from eqsurgeon.errors import one_line

    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as err:
        ckpt.read_state_dict(tmp_path / "bad.pt")
    assert re.fullmatch(  # the unpickler's reason alone, without torch's paragraphs of advice
        rf"{re.escape(str(tmp_path / 'bad.pt'))} cannot be loaded with weights_only=True \([^\n;]+\); "
        r"check that it is a PyTorch checkpoint, or convert it to \.safetensors",
        str(err.value),
    ), str(err.value)
    from eqsurgeon.io.pth_file import _reason

    assert f"({_reason(err.value.__cause__)})" in str(err.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError) as err:
        ckpt.read_state_dict(bad)
    assert str(err.value) == f"{bad} is not a readable safetensors file ({one_line(err.value.__cause__)})"
    with pytest.raises(CheckpointError) as err:
        ckpt.fit_state_dict(nn.Linear(2, 2), {"weight": torch.ones(2, 2)}, "w.pt")
    assert str(err.value) == (
        "checkpoint w.pt does not fit the model: 1 missing (e.g. bias); "
        "pass the checkpoint that belongs to this model and its factory arguments"
    )
    with pytest.raises(CheckpointError) as err:
        refuse_double_equalization(_meta(), "x.safetensors", allow=False)
    assert str(err.value) == (
        "x.safetensors is already scale-equalized (fold mode, 1 site(s)); the fused features are unchanged "
        "by folding, so calibrating it again would divide the weights by σ a second time. Calibrate the "
        "original weights, or pass allow_equalized=True to equalize on top"
    )
    with pytest.raises(ValueError, match=r"^the record is not a JSON object$"):
        record_from_json("[]")


def test_a_malformed_record_read_from_a_file_names_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1)}, str(path), metadata={"eqsurgeon": "{not json"})
    with pytest.raises(
        CheckpointError, match=rf"^{re.escape(str(path))} has a malformed eqsurgeon record \(Expecting"
    ):
        read_checkpoint(path)


def test_records_without_optional_lists_parse() -> None:
    bare = '{"model": "m", "mode": "fold", "bn_mode": "eval", "images": 1, "data_fingerprint": "", '
    site = '{"layer": "a", "op": "conv2d", "groups": 1, "channel_dim": 1, "status": "skipped"}'
    record = record_from_json(bare + f'"sites": [{site}], "image_mean": [120.0, 110.0, 100.0]}}')
    assert record.sites[0].inputs == () and record.image_std == ()
    assert record.image_mean == pytest.approx((120 / 255, 110 / 255, 100 / 255))
    assert record_from_json(bare + '"image_mean": [2.0, 2.0, 2.0]}').image_mean == pytest.approx(
        (2 / 255,) * 3
    )


def test_rebuild_goes_on_past_a_site_already_rebuilt() -> None:
    from eqsurgeon.equalize import EqualizedInput, InputStat, insert_equalizers

    two = _meta("insert")
    two = CalibrationRecord(
        **{**two.__dict__, "sites": (two.sites[0], SiteRecord(**{**two.sites[0].__dict__, "layer": "1"}))}
    )
    net = nn.Sequential(nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1))
    insert_equalizers(net, "0", [InputStat((0, 4), 0.0, 1.0)])
    ckpt.rebuild_equalizers(net, two)
    assert isinstance(net[1], EqualizedInput) and net[1].channels == ((0, 2), (2, 4))


def test_record_json_is_canonical_and_keeps_nan() -> None:
    import json

    nan_input = InputRecord((0, 2), float("nan"), 1.0, 1.0)
    site = SiteRecord(layer="0", op="conv2d", groups=1, channel_dim=1, status="ok", inputs=(nan_input,))
    text = record_to_json(CalibrationRecord("m", "fold", "batch", 8, "f", sites=(site,)))
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))  # sorted, no spaces
    assert '"mean":NaN' in text


def test_a_failed_open_is_reported_as_itself(tmp_path: Path, monkeypatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_files, "open", full_disk, raising=False)  # before the temporary file exists
    with pytest.raises(OSError, match="No space left on device") as err:
        ckpt.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    assert err.value.filename == str(tmp_path / "a.bin")  # the output named, not its temporary file
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_folder_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(io_files.os, "access", lambda path, mode: False)  # tests run as root: chmod is no use
    with pytest.raises(
        OutputExistsError, match=f"^output folder {tmp_path} is not writable; choose another$"
    ):
        ckpt.check_output(tmp_path / "x.safetensors", False)


def test_atomic_folder_replaces_the_old_folder_only_once_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert ckpt.atomic_folder(out, lambda d: (d / "a.txt").write_text("one")) == out
    assert [p.name for p in out.iterdir()] == ["a.txt"]

    def half_then_fail(folder: Path) -> None:
        (folder / "b.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_folder(out, half_then_fail)
    assert [p.name for p in out.iterdir()] == ["a.txt"] and (out / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left
    ckpt.atomic_folder(out, lambda d: (d / "c.txt").write_text("two"))
    assert [p.name for p in out.iterdir()] == ["c.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    stale = tmp_path / f".new.{os.getpid()}.tmp"
    stale.mkdir()
    (stale / "junk").write_text("x")  # left by an earlier failed run of this process
    ckpt.atomic_folder(tmp_path / "new", lambda d: (d / "d.txt").write_text("three"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["d.txt"]


def test_stale_temporary_files_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path: Path) -> None:
    live = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / f".x.bin.{live.pid}.tmp").write_bytes(b"in progress")
        (tmp_path / ".x.bin.999999999.tmp").write_bytes(b"half")  # no such process
        (tmp_path / ".x.bin.notapid.tmp").write_bytes(b"?")
        removed = ckpt.remove_stale_temps(tmp_path / "x.bin")
        assert [p.name for p in removed] == [".x.bin.999999999.tmp"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".x.bin.{live.pid}.tmp", ".x.bin.notapid.tmp"]
        with pytest.raises(subprocess.TimeoutExpired):
            live.wait(timeout=0.2)  # asking whether it lives sent it no signal
    finally:
        live.kill()
        live.wait()


def test_check_output_folder_names_each_problem(tmp_path: Path, monkeypatch) -> None:
    where = re.escape(str(tmp_path))
    with pytest.raises(OutputExistsError, match=rf"^output folder {where}/no does not exist; create it"):
        ckpt.check_output_folder(tmp_path / "no" / "out", False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        OutputExistsError,
        match=rf"^{where}/file is a file; a save_pretrained output is a folder, name a new one$",
    ):
        ckpt.check_output_folder(tmp_path / "file", True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    with pytest.raises(
        OutputExistsError,
        match=rf"^{where}/full already exists; choose another path or pass force=True to replace$",
    ):
        ckpt.check_output_folder(tmp_path / "full", False)
    assert ckpt.check_output_folder(tmp_path / "full", True) == tmp_path / "full"
    (tmp_path / "empty").mkdir()
    assert ckpt.check_output_folder(tmp_path / "empty", False) == tmp_path / "empty"  # empty: nothing lost
    modes: list[int] = []
    monkeypatch.setattr(io_files.os, "access", lambda path, mode: modes.append(mode) or False)
    with pytest.raises(OutputExistsError, match=rf"^output folder {where} is not writable; choose another$"):
        ckpt.check_output_folder(tmp_path / "new", False)
    assert modes == [os.W_OK | os.X_OK]


def test_integer_buffers_load_across_integer_widths_but_never_from_bool() -> None:
    bn = nn.BatchNorm2d(2)
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    state["num_batches_tracked"] = torch.tensor(7, dtype=torch.int32)  # written by another framework
    ckpt.fit_state_dict(bn, state, "w.pt")
    assert bn.num_batches_tracked.item() == 7 and bn.num_batches_tracked.dtype == torch.int64
    state["num_batches_tracked"] = torch.tensor(True)
    with pytest.raises(CheckpointError, match=r"stores num_batches_tracked as torch\.bool where the model"):
        ckpt.fit_state_dict(bn, state, "w.pt")


def test_the_unpicklers_reason_is_kept_without_torchs_advice() -> None:
    from eqsurgeon.io.pth_file import _reason

    advice = "Weights only load failed. Re-running `torch.load` with `weights_only` set to False ... "
    assert _reason(RuntimeError(advice + "WeightsUnpickler error: Unsupported operand 103")) == (
        "Unsupported operand 103"
    )
    assert _reason(RuntimeError("WeightsUnpickler error: a; error: b")) == "a; error: b"  # the first marker
    twice = "WeightsUnpickler error: a WeightsUnpickler error: b"
    assert _reason(RuntimeError(twice)) == "a WeightsUnpickler error: b"  # split at the first one only
    advice = "Weights only load failed (an error: see below). WeightsUnpickler error: Unsupported global"
    assert _reason(RuntimeError(advice)) == "Unsupported global"  # the unpickler's marker before "error:"
    assert _reason(RuntimeError("load failed with error: bad magic number")) == "bad magic number"


class _AsksTheFolder:
    """A second pickled call, harmless: ``os.getcwd()``."""

    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def test_a_refused_pickle_names_only_the_globals_outside_the_allowlist(tmp_path: Path) -> None:
    import numpy as np

    marker = tmp_path / "payload-ran"
    payload = {"w": torch.ones(2), "arr": np.zeros(2), "evil": _MakesAFolder(marker), "cwd": _AsksTheFolder()}
    torch.save(payload, tmp_path / "evil.pth")  # numpy arrays are allowed
    with pytest.raises(CheckpointError) as err:
        ckpt.read_state_dict(tmp_path / "evil.pth")
    head = f"{tmp_path / 'evil.pth'} cannot be loaded with weights_only=True: it pickles "
    tail = (
        ", and eqsurgeon never runs code from a checkpoint. Save the weights with "
        "torch.save(model.state_dict(), path), or convert them to .safetensors"
    )
    message = str(err.value)
    assert message.startswith(head) and message.endswith(tail)
    assert sorted(message[len(head) : -len(tail)].split(", ")) == ["posix.getcwd", "posix.mkdir"]
    assert not marker.exists()


def test_state_dict_lookup_names_what_the_file_holds(tmp_path: Path) -> None:
    from eqsurgeon.io.pth_file import find_state_dict, meta_of

    path = Path("x.pth")
    with pytest.raises(CheckpointError) as err:
        find_state_dict([torch.ones(1)], None, path)
    assert str(err.value) == (
        "x.pth holds no state dict of tensors: its top-level keys are list; "
        "pass checkpoint_key=NAME to name the entry that holds the weights"
    )
    with pytest.raises(CheckpointError) as err:
        find_state_dict({}, None, path)
    assert "its top-level keys are none; pass" in str(err.value)  # not an empty list
    with pytest.raises(CheckpointError) as err:
        find_state_dict({"meta": {}, "model": {"w": torch.ones(1)}}, "ema", path)
    assert str(err.value) == (
        "x.pth has no entry 'ema'; its top-level keys are meta, model; "
        "pass checkpoint_key=NAME with one of them"
    )
    with pytest.raises(CheckpointError) as err:
        find_state_dict({"meta": {"epoch": 1}, "model": {"w": torch.ones(1)}}, "meta", path)
    assert str(err.value) == (
        "x.pth's entry 'meta' is not a state dict of tensors; its top-level keys are meta, model"
    )
    plain = {"w": torch.ones(1)}
    assert find_state_dict(plain, None, path) == plain
    assert meta_of([1]) is None and meta_of({"meta": {"a": 1}}) == {"a": 1} and meta_of({"meta": 3}) is None


def test_write_pth_checks_its_output_first(tmp_path: Path) -> None:
    from eqsurgeon.io.pth_file import write_pth

    path = write_pth(tmp_path / "a.pth", {"w": torch.ones(2)}, None, {"epoch": 1})
    with pytest.raises(OutputExistsError, match=r"a\.pth already exists"):
        write_pth(path, {"w": torch.zeros(2)}, None)
    assert torch.equal(ckpt.read_state_dict(path)[0]["w"], torch.ones(2))
    write_pth(path, {"w": torch.zeros(2)}, None, force=True)
    assert torch.equal(ckpt.read_state_dict(path)[0]["w"], torch.zeros(2))
    with pytest.raises(OutputExistsError, match=r"b\.bin must end in \.pth or \.pt$"):
        write_pth(tmp_path / "b.bin", {"w": torch.ones(2)}, None)


def test_a_record_for_other_sites_names_the_file_and_the_layer() -> None:
    from eqsurgeon.io import check_record_fits
    from eqsurgeon.records import FusionSite, Subject

    site = FusionSite("1", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))
    with pytest.raises(CheckpointError) as err:
        check_record_fits(_meta(), [site], "w.safetensors")
    assert str(err.value) == (
        "the calibration record in w.safetensors does not match the model: it equalized 0, which is no "
        "fusion site of the model; pass the model the weights were calibrated for"
    )
    other = FusionSite("0", "conv2d", 1, (Subject((0, 1), "a"), Subject((1, 4), "b")))
    with pytest.raises(CheckpointError, match=r"^the calibration record in w\.safetensors does not match"):
        check_record_fits(_meta(), [other], "w.safetensors")


class _Harmless:
    """A pickled call of a harmless function, ``fn()``."""

    def __init__(self, fn: object) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple:
        return (self.fn, ())


def test_a_refused_pickle_lists_at_most_four_globals(tmp_path: Path) -> None:
    import time

    payload = {"w": torch.ones(1)}
    payload.update({f"g{i}": _Harmless(fn) for i, fn in enumerate([os.getcwd, os.getpid, os.cpu_count,
                                                                    os.getuid, time.time])})  # fmt: skip
    torch.save(payload, tmp_path / "five.pth")
    with pytest.raises(CheckpointError) as err:
        ckpt.read_state_dict(tmp_path / "five.pth")
    listed = str(err.value).split("it pickles ")[1].split(", and eqsurgeon")[0].split(", ")
    assert len(listed) == 4 and set(listed) < {"posix.getcwd", "posix.getpid", "posix.cpu_count",
                                               "posix.getuid", "time.time"}  # fmt: skip


def test_a_temporary_file_of_another_users_process_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    def not_yours(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")  # tests run as root, where os.kill never says it

    monkeypatch.setattr(io_files.os, "kill", not_yours)
    (tmp_path / ".x.bin.4242.tmp").write_bytes(b"theirs")
    assert ckpt.remove_stale_temps(tmp_path / "x.bin") == []
    assert (tmp_path / ".x.bin.4242.tmp").exists()


def test_atomic_folder_puts_the_old_folder_back_when_the_last_rename_fails(tmp_path: Path, monkeypatch):
    import shutil

    out = tmp_path / "out"
    ckpt.atomic_folder(out, lambda d: (d / "a.txt").write_text("one"))
    real = os.replace
    calls: list[tuple[str, str]] = []

    def second_fails(src: object, dst: object) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(io_files.os, "replace", second_fails)
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.atomic_folder(out, lambda d: (d / "b.txt").write_text("two"))
    monkeypatch.undo()
    assert [p.name for p in out.iterdir()] == ["a.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    pid = os.getpid()
    assert calls == [("out", f".out.{pid}.old"), (f".out.{pid}.tmp", "out"), (f".out.{pid}.old", "out")]

    def removes_its_folder_then_fails(folder: Path) -> None:
        shutil.rmtree(folder)
        raise ValueError("fill failed")

    with pytest.raises(ValueError, match="fill failed"):  # not a FileNotFoundError from the clean-up
        ckpt.atomic_folder(out, removes_its_folder_then_fails)


def test_tensors_that_loading_would_damage_are_refused_with_the_whole_line() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    half = {**good, "0.weight": good["0.weight"].half()}
    ckpt.fit_state_dict(net, half, "w.pt")  # float16 into float32: exact, allowed
    with pytest.raises(CheckpointError) as err:
        ckpt.fit_state_dict(net, {**good, "0.weight": torch.ones(2, 2, dtype=torch.int64)}, "w.pt")
    assert str(err.value) == (
        "checkpoint w.pt stores 0.weight as torch.int64 where the model holds torch.float32; "
        "loading would cast it silently: save the weights as floating point"
    )
    nan = {k: (v.fill_(math.nan) if v.is_floating_point() else v) for k, v in
           ((k, v.clone()) for k, v in good.items())}  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        ckpt.fit_state_dict(net, nan, "w.pt")
    assert str(err.value) == (
        "checkpoint w.pt holds NaN or infinite values in 6 tensor(s) (e.g. 0.weight, 0.bias, 1.weight); "
        "it comes from a diverged or damaged run: use an earlier checkpoint"
    )
    inf_buffer = {**good, "1.running_var": torch.full((2,), math.inf)}
    ckpt.fit_state_dict(net, inf_buffer, "w.pt")  # a buffer may hold inf on purpose
    with pytest.raises(CheckpointError, match=r"in 1 tensor\(s\) \(e\.g\. 0\.bias\)"):
        ckpt.fit_state_dict(net, {**good, "0.bias": torch.tensor([math.inf, 0.0])}, "w.pt")
    as_int = {"w": torch.ones(1, dtype=torch.int64)}
    complex_model = {"w": torch.zeros(1, dtype=torch.complex64)}
    with pytest.raises(CheckpointError, match=r"stores w as torch\.int64 where the model holds torch\.comp"):
        ckpt.check_tensors(as_int, complex_model, "c")
    complex_nan = {"w": torch.tensor([complex(math.nan, 0.0)])}
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        ckpt.check_tensors(complex_nan, {"w": torch.zeros(1, dtype=torch.complex64)}, "c.pt")


def test_load_reads_the_named_entry_of_a_pickled_checkpoint(tmp_path: Path) -> None:
    net = nn.Linear(2, 1)
    ema = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    torch.save({"state_dict": net.state_dict(), "state_dict_ema": ema}, tmp_path / "c.pth")
    loaded = load(nn.Linear(2, 1), tmp_path / "c.pth", checkpoint_key="state_dict_ema")
    assert torch.equal(loaded.weight, torch.full((1, 2), 0.5))


def test_a_record_for_other_layers_is_refused_before_loading_with_the_file_named(tmp_path: Path) -> None:
    from eqsurgeon.equalize import EqualizedInput, InputStat
    from eqsurgeon.io import check_record_layers

    def record(layer: str, op: str, top: int, groups: int = 1, inputs: bool = True) -> CalibrationRecord:
        ins = (InputRecord((0, 2), 0.0, 1.0, 1.0), InputRecord((2, top), 0.0, 1.0, 1.0)) if inputs else ()
        return CalibrationRecord("m", "fold", "eval", 1, "", sites=(SiteRecord(layer, op, groups, 1, "ok",
                                                                               inputs=ins),))  # fmt: skip

    def refused(model: nn.Module, rec: CalibrationRecord) -> str:
        with pytest.raises(CheckpointError) as err:
            check_record_layers(model, rec, "w.pth")
        head = "the calibration record in w.pth does not match the model: "
        tail = "; pass the model the weights were calibrated for"
        assert str(err.value).startswith(head) and str(err.value).endswith(tail)
        return str(err.value)[len(head) : -len(tail)]

    net = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Linear(6, 2), nn.ConvTranspose2d(5, 2, 2))
    assert refused(net, record("9", "conv2d", 4)) == "it equalized layer 9, which the model lacks"
    assert refused(net, record("1", "conv2d", 4)) == "it equalized 1, which has no weight in this model"
    assert refused(net, record("0", "conv2d", 5)) == "it equalized channels up to 5 of 0, which takes 4"
    assert refused(net, record("2", "linear", 7)) == "it equalized channels up to 7 of 2, which takes 6"
    assert refused(net, record("3", "conv_transpose2d", 6)) == (
        "it equalized channels up to 6 of 3, which takes 5"
    )
    for ok in (record("0", "conv2d", 4), record("2", "linear", 6), record("3", "conv_transpose2d", 5),
               record("0", "conv2d", 4, inputs=False)):  # fmt: skip
        check_record_layers(net, ok, "w.pth")
    grouped = nn.Sequential(nn.Conv2d(8, 4, 1, groups=2))  # weight [4, 4, 1, 1]: 4 per group, 8 in all
    check_record_layers(grouped, record("0", "conv2d", 8, groups=2), "w.pth")
    wrapped = nn.Sequential(EqualizedInput(nn.Conv2d(4, 2, 1), [InputStat((0, 4), 0.0, 1.0)]))
    check_record_layers(wrapped, record("0", "conv2d", 4), "w.pth")  # the wrapped layer's weight counts
    path = save_checkpoint(tmp_path / "w.safetensors", net.state_dict(), record("9", "conv2d", 4))
    with pytest.raises(CheckpointError, match=rf"^the calibration record in {re.escape(str(path))} does not"):
        load(net, path)


def test_a_record_value_that_is_no_object_is_a_malformed_record_of_the_checkpoint() -> None:
    from eqsurgeon.io import record_from_value

    with pytest.raises(CheckpointError) as err:
        record_from_value(5)
    assert str(err.value) == (
        "the checkpoint has a malformed eqsurgeon record (it is a int, not a JSON object); "
        "recalibrate from the original weights"
    )
    assert record_from_value(None) is None


def test_atomic_write_names_the_output_in_the_os_errors_of_its_temporary_file(tmp_path: Path, monkeypatch):
    out = tmp_path / "a.bin"

    def cross_device(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link", str(src), str(dst))

    monkeypatch.setattr(io_files.os, "replace", cross_device)
    with pytest.raises(OSError) as err:
        ckpt.atomic_write(out, lambda f: f.write(b"x"))
    assert (err.value.errno, err.value.filename) == (18, str(out))
    assert err.value.strerror == "Invalid cross-device link"
    monkeypatch.undo()
    monkeypatch.setattr(io_files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError) as err:
        ckpt.atomic_write(out, lambda f: f.write(b"x"))
    assert (err.value.strerror, err.value.filename) == ("disk gone", str(out))
    monkeypatch.undo()
    elsewhere = OSError(13, "Permission denied", "/elsewhere/log")
    with pytest.raises(OSError) as err:  # an error about another file is passed on as it is
        ckpt.atomic_write(out, lambda f: (_ for _ in ()).throw(elsewhere))
    assert err.value is elsewhere and list(tmp_path.iterdir()) == []


def test_an_interrupt_before_the_temporary_file_exists_stays_an_interrupt(tmp_path: Path, monkeypatch):
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(io_files, "open", interrupted, raising=False)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="fill failed"):  # a first folder: nothing to put back
        ckpt.atomic_folder(tmp_path / "new", lambda d: (_ for _ in ()).throw(ValueError("fill failed")))
    assert list(tmp_path.iterdir()) == []


def test_a_stale_temporary_file_removed_meanwhile_is_no_error(tmp_path: Path, monkeypatch) -> None:
    stale = tmp_path / ".x.bin.999999999.tmp"
    stale.write_bytes(b"half")
    monkeypatch.setattr(io_files, "_alive", lambda pid: stale.unlink() or False)  # another run was first
    assert ckpt.remove_stale_temps(tmp_path / "x.bin") == [stale]


def test_check_output_refuses_a_file_as_its_folder_and_asks_for_write_and_search(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError) as err:
        ckpt.check_output(tmp_path / "f" / "x.safetensors", False)
    assert str(err.value) == f"{tmp_path / 'f'} is a file, not a folder; choose another path"
    modes: list[int] = []
    monkeypatch.setattr(io_files.os, "access", lambda path, mode: modes.append(mode) or True)
    ckpt.check_output(tmp_path / "x.safetensors", False)
    assert modes == [os.W_OK | os.X_OK]
