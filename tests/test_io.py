"""Checkpoint writing: atomic, deterministic, never overwrites, refuses to equalize twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, OutputExistsError
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
