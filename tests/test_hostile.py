"""Hostile input and faults on every command: one ``error:`` line, the documented exit code, no traceback,
and the disk as it was (or as the case says) afterwards.

The table below is the contract of docs/errors.md: each case names a command line built from hostile files,
the exit code, and words the one line must contain. A case's disk check defaults to "nothing below the
workspace was created, changed or removed": no output, no temp file, no run folder.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from eqsurgeon.cli import app
from tests._hostile import FX, FX_MODEL, Workspace, png_header, record_json, snapshot
from tests._train_helpers import DEMO_RECIPE, ROOT, quick

runner = CliRunner()
TINY_FILE = ROOT / "fixtures" / "tiny_seg.py"


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def assert_error(result: Any, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one stderr line that starts with ``error:``, no traceback anywhere."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class Shared:
    """Module-wide inputs: demo data, and (built on first use) a finished 6-iteration run of it."""

    def __init__(self, root: Path) -> None:
        from eqsurgeon.training.demo_data import make_demo_data

        self.root = root
        self.demo = make_demo_data(root / "demo", images=6, size=32)
        self._run: Path | None = None

    def run(self) -> Path:
        if self._run is None:
            out = self.root / "run"
            assert_ok(invoke("train", DEMO_RECIPE, *sets(quick(self.demo, out))))
            self._run = out
        return self._run


def assert_ok(result: Any) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return Shared(tmp_path_factory.mktemp("hostile_shared"))


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def analyze(*extra: object) -> list[object]:
    return ["analyze", FX_MODEL, "--input-size", "32x32", *extra]


def train(ws: Workspace, *extra: str, data: Path | None = None, out: Path | None = None) -> list[object]:
    return ["train", DEMO_RECIPE, *sets(quick(data or ws.shared.demo, out or ws / "run", *extra))]


def evaluate(ws: Workspace, checkpoint: Path, *extra: str) -> list[object]:
    return ["eval", DEMO_RECIPE, "--checkpoint", checkpoint, *sets(quick(ws.shared.demo, ws / "x", *extra))]


def calibrate(ws: Workspace, *extra: object, data: Path | None = None, model: str = FX_MODEL) -> list[object]:
    images = data if data is not None else ws.images()
    return [
        "calibrate", model, "--data", images, "--out", ws / "eq.safetensors", "--input-size", "32x32",
        "--batch-size", 2, "--workers", 0, *extra,
    ]  # fmt: skip


def verify(ws: Workspace, checkpoint: Path, *extra: object) -> list[object]:
    return ["verify", FX_MODEL, "--checkpoint", checkpoint, "--data", ws.images(), "--workers", 0, *extra]


def nan_weights(state: dict[str, torch.Tensor]) -> None:
    state[next(k for k in state if k.endswith("weight"))][0] = math.nan


def tiny_nan(ws: Workspace) -> Path:
    from fixtures.tiny_seg import tiny_seg

    return ws.checkpoint("nan.safetensors", nan_weights, factory=lambda: tiny_seg(5))


def cast(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(state: dict[str, torch.Tensor]) -> None:
        state["fuse.weight"] = state["fuse.weight"].to(dtype)

    return change


def corrupt_masks(demo: Path) -> Path:
    for mask in (demo / "masks").iterdir():
        mask.write_bytes(mask.read_bytes()[:60])  # header intact, pixel data cut off
    return demo


def bomb_images(demo: Path, width: int, height: int) -> Path:
    for folder in ("images", "masks"):
        for path in (demo / folder).iterdir():
            png_header(path, width, height)
    return demo


def resave_state(run: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = sorted(run.glob("ckpt_*.state.pt"))[-1]
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return run


def model_file(ws: Workspace, name: str, body: str) -> str:
    header = "import sys\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
    return str(ws.file(name, header + body)) + ":build"


def no_run_folder(ws: Workspace) -> None:
    assert not (ws / "run").exists()


@dataclass(frozen=True)
class Case:
    command: str
    name: str
    args: Callable[[Workspace], list[object]]
    needles: tuple[str, ...] = ()
    code: int = 2
    disk: Callable[[Workspace], None] | None = None  # None: the workspace is exactly as before


def case(
    command: str, name: str, args: Callable[[Workspace], list[object]], *needles: str, **kw: Any
) -> Case:
    return Case(command, name, args, needles, **kw)


CASES = [
    # -- model specs and factory arguments
    case("analyze", "spec-colon-only", lambda ws: ["analyze", ":"], "needs a module or file before ':'"),
    case("analyze", "spec-empty-factory", lambda ws: ["analyze", f"{FX}:"], "and a factory after it"),
    case("analyze", "spec-relative-module", lambda ws: ["analyze", ".models:build"], "is not a module name"),
    case("analyze", "spec-missing-file", lambda ws: ["analyze", ws / "nope.py:build"], "does not exist"),
    case(
        "analyze",
        "spec-folder-as-file",
        lambda ws: ["analyze", f"{ws.folder('net.py')}:build"],
        "is a folder",
    ),
    case(
        "analyze", "spec-unknown-zoo-name", lambda ws: ["analyze", "upernet_nonexistent"], "Model specs are"
    ),
    case(
        "analyze",
        "spec-script-exits",
        lambda ws: ["analyze", model_file(ws, "m.py", "sys.exit(3)\n")],
        "importing",
        "SystemExit",
    ),
    case(
        "analyze",
        "spec-factory-raises",
        lambda ws: ["analyze", model_file(ws, "m.py", "def build():\n    1 / 0\n")],
        "raised ZeroDivisionError",
    ),
    case("analyze", "arg-not-key-value", lambda ws: analyze("--arg", "=3"), "is not key=value"),
    case(
        "analyze",
        "arg-unknown-keyword",
        lambda ws: analyze("--arg", "width=3"),
        "unexpected keyword argument 'width'",
        "check its keyword arguments",
    ),
    # -- numbers on the command line
    case("analyze", "batch-size-zero", lambda ws: analyze("--batch-size", 0), "--batch-size"),
    case("analyze", "unknown-option", lambda ws: analyze("--frobnicate"), "No such option", "--help"),
    case(
        "analyze", "input-size-text", lambda ws: ["analyze", FX_MODEL, "--input-size", "axb"], "--input-size"
    ),
    case(
        "analyze", "input-size-zero", lambda ws: ["analyze", FX_MODEL, "--input-size", "0x0"], "--input-size"
    ),
    case(
        "analyze",
        "input-size-huge-side",
        lambda ws: ["analyze", FX_MODEL, "--input-size", "100000x100000"],
        "--input-size",
        "16384",
    ),
    case(
        "analyze",
        "input-size-huge-area",
        lambda ws: ["analyze", FX_MODEL, "--input-size", "16000x16000"],
        "MP per image",
    ),
    case("analyze", "seed-huge", lambda ws: analyze("--seed", 2**70), "--seed"),
    case("check", "max-ratio-below-one", lambda ws: ["check", FX_MODEL, "--max-ratio", "0.5"], "--max-ratio"),
    case("check", "check-format-unknown", lambda ws: ["check", FX_MODEL, "--format", "xml"], "--format"),
    case("analyze", "bn-mode-unknown", lambda ws: analyze("--bn-mode", "train"), "--bn-mode"),
    case("calibrate", "megapixels-zero", lambda ws: calibrate(ws, "--max-megapixels", 0), "--max-megapixels"),
    case("calibrate", "aspect-below-one", lambda ws: calibrate(ws, "--max-aspect", 0.5), "--max-aspect"),
    case("calibrate", "tolerance-zero", lambda ws: calibrate(ws, "--tolerance", 0), "--tolerance"),
    case("frobnicate", "no-such-command", lambda ws: ["frobnicate"], "No such command"),
    case("calibrate", "missing-option", lambda ws: ["calibrate", FX_MODEL], "Missing option"),
    # -- checkpoints
    case(
        "analyze",
        "checkpoint-is-folder",
        lambda ws: analyze("--checkpoint", ws.folder("w.safetensors")),
        "has no config.json",
    ),
    case(
        "analyze",
        "checkpoint-garbage",
        lambda ws: analyze("--checkpoint", ws.file("w.safetensors", b"\0garbage")),
        "not a readable safetensors",
    ),
    case(
        "analyze",
        "checkpoint-empty-file",
        lambda ws: analyze("--checkpoint", ws.file("w.pt", b"")),
        "weights_only",
    ),
    case(
        "analyze",
        "checkpoint-pickled-object",
        lambda ws: analyze("--checkpoint", _pickled(ws)),
        "weights_only=True",
    ),
    case(
        "analyze",
        "checkpoint-int-weights",
        lambda ws: analyze("--checkpoint", ws.checkpoint("w.safetensors", cast(torch.int64))),
        "stores fuse.weight as torch.int64",
        "floating point",
    ),
    case(
        "analyze",
        "checkpoint-bool-weights",
        lambda ws: analyze("--checkpoint", ws.checkpoint("w.safetensors", cast(torch.bool))),
        "as torch.bool",
    ),
    case(
        "analyze",
        "checkpoint-wrong-shape",
        lambda ws: analyze(
            "--checkpoint",
            ws.checkpoint("w.safetensors", lambda s: s.update({"fuse.weight": torch.zeros(1)})),
        ),
        "wrong shape",
    ),
    case(
        "analyze",
        "record-not-json",
        lambda ws: analyze("--checkpoint", ws.record("w.safetensors", "{not json")),
        "malformed eqsurgeon record",
    ),
    case(
        "analyze",
        "record-sites-not-objects",
        lambda ws: analyze("--checkpoint", ws.record("w.safetensors", record_json(sites=[1, 2]))),
        "malformed eqsurgeon record",
    ),
    case(
        "analyze",
        "record-images-text",
        lambda ws: analyze("--checkpoint", ws.record("w.safetensors", record_json(images="8"))),
        "images must be a count",
    ),
    case(
        "analyze",
        "record-bad-channels",
        lambda ws: analyze(
            "--checkpoint",
            ws.record(
                "w.safetensors",
                record_json(
                    sites=[
                        {
                            "layer": "fuse",
                            "op": "conv2d",
                            "groups": 1,
                            "channel_dim": 1,
                            "status": "ok",
                            "inputs": [{"channels": [4, 2], "mean": 0.0, "std": 1.0, "scale": 1.0}],
                        }
                    ]
                ),
            ),
        ),
        "channels must be [start, stop)",
    ),
    case(
        "analyze",
        "inf-weights",
        lambda ws: analyze(
            "--checkpoint", ws.checkpoint("w.safetensors", lambda s: s["fuse.bias"].fill_(math.inf))
        ),
        "NaN or infinite values in 1 tensor(s) (e.g. fuse.bias)",
    ),
    case(
        "analyze",
        "nan-running-var",
        lambda ws: analyze(
            "--checkpoint", ws.checkpoint("w.safetensors", lambda s: s["a.1.running_var"].fill_(math.nan))
        ),
        "e.g. a.1.running_var",
    ),
    case(
        "check",
        "nan-weights-check",
        lambda ws: [
            "check",
            FX_MODEL,
            "--input-size",
            "32x32",
            "--checkpoint",
            ws.checkpoint("w.safetensors", nan_weights),
        ],
        "NaN or infinite",
    ),
    case(
        "calibrate",
        "nan-weights-calibrate",
        lambda ws: calibrate(ws, "--checkpoint", ws.checkpoint("w.safetensors", nan_weights)),
        "NaN or infinite",
    ),
    case("eval", "nan-weights-eval", lambda ws: evaluate(ws, tiny_nan(ws)), "NaN or infinite"),
    # -- data folders
    case("analyze", "data-is-a-file", lambda ws: analyze("--data", ws.file("x.png", b"")), "is a file"),
    case("analyze", "data-empty-folder", lambda ws: analyze("--data", ws.folder("empty")), "no usable image"),
    case("analyze", "data-markup-name", lambda ws: analyze("--data", ws / "[v2]"), "[v2] not found"),
    case(
        "analyze",
        "data-aspect-bomb",
        lambda ws: analyze("--data", _folder_of(ws, png_header, 1, 100_000)),
        "aspect 1:100000",
        "max_aspect",
    ),
    case(
        "analyze",
        "data-pixel-bomb",
        lambda ws: analyze("--data", _folder_of(ws, png_header, 8000, 6000)),
        "48.0 MP",
        "40 MP cap (max_pixels)",
    ),
    case(
        "calibrate",
        "data-one-image-bn-batch",
        lambda ws: calibrate(ws, data=ws.images(n=1)),
        "1 usable image",
        "--bn-mode eval",
    ),
    case(
        "calibrate",
        "calibrate-batch-size-one",
        lambda ws: calibrate(ws, "--batch-size", 1),
        "--batch-size",
        "2 or more",
    ),
    # -- outputs
    case("analyze", "json-is-folder", lambda ws: analyze("--json", ws.folder("a.json")), "is a folder"),
    case(
        "analyze",
        "json-exists",
        lambda ws: analyze("--json", ws.file("a.json", "{}")),
        "already exists",
        "--force",
    ),
    case(
        "analyze", "json-folder-missing", lambda ws: analyze("--json", ws / "no" / "a.json"), "does not exist"
    ),
    case(
        "analyze",
        "json-parent-is-file",
        lambda ws: analyze("--json", ws.file("f", "x") / "a.json"),
        "is a file",
    ),
    case(
        "analyze",
        "json-and-plot-same",
        lambda ws: analyze("--json", ws / "a", "--plot", ws / "a"),
        "named twice",
    ),
    case("analyze", "json-markup-path", lambda ws: analyze("--json", ws / "a[/v2]b" / "x.json"), "a[/v2]b"),
    case(
        "calibrate",
        "calibrate-out-exists",
        lambda ws: calibrate(ws, data=ws.images()) if ws.file("eq.safetensors", "x") else [],
        "eq.safetensors already exists",
    ),
    case(
        "calibrate",
        "calibrate-all-black-images",
        lambda ws: calibrate(ws, data=ws.images(black=True), model=f"{TINY_FILE}:tiny_seg"),
        "no site could be equalized",
        "of the largest std of the site",
        "calibrate on varied images",
    ),
    case(
        "calibrate",
        "calibrate-json-exists",
        lambda ws: calibrate(ws, "--json", ws.file("c.json", "{}")),
        "c.json already exists",
    ),
    case(
        "calibrate",
        "calibrate-out-suffix",
        lambda ws: ["calibrate", FX_MODEL, "--data", ws.images(), "--out", ws / "eq.txt"],
        "eq.txt",
    ),
    case(
        "calibrate",
        "calibrate-out-is-folder",
        lambda ws: ["calibrate", FX_MODEL, "--data", ws.images(), "--out", ws.folder("eq.safetensors")],
        "is a folder",
    ),
    case(
        "verify",
        "verify-json-exists",
        lambda ws: verify(ws, ws.checkpoint("w.safetensors"), "--json", ws.file("v.json", "{}")),
        "already exists",
    ),
    case(
        "verify",
        "verify-no-record",
        lambda ws: verify(ws, ws.checkpoint("w.safetensors")),
        "has no calibration record",
    ),
    case(
        "verify",
        "verify-checkpoint-folder",
        lambda ws: verify(ws, ws.folder("w.safetensors")),
        "has no config.json",
    ),
    # -- demo-data and models
    case(
        "demo-data",
        "demo-size-not-multiple",
        lambda ws: ["demo-data", ws / "d", "--size", 33],
        "--size 33",
        "multiple of 8",
    ),
    case("demo-data", "demo-out-is-file", lambda ws: ["demo-data", ws.file("d", "x")], "is a file"),
    case("demo-data", "demo-images-zero", lambda ws: ["demo-data", ws / "d", "--images", 0], "--images"),
    case(
        "demo-data",
        "demo-not-empty",
        lambda ws: ["demo-data", ws.file("d/x", "x").parent],
        "not empty",
        "--force",
    ),
    case("demo-data", "demo-seed-negative", lambda ws: ["demo-data", ws / "d", "--seed", -1], "--seed"),
    case("models", "models-no-match", lambda ws: ["models", "nothing_*"], "no zoo model matches"),
    case("models", "models-format-unknown", lambda ws: ["models", "--format", "xml"], "--format"),
    # -- recipes
    case("train", "recipe-missing", lambda ws: ["train", ws / "r.toml"], "does not exist"),
    case("train", "recipe-is-folder", lambda ws: ["train", ws.folder("r.toml")], "is a folder"),
    case(
        "train",
        "recipe-not-utf8",
        lambda ws: ["train", ws.file("r.toml", b"[run]\nout = '\xff'\n")],
        "not UTF-8",
    ),
    case("train", "recipe-bad-toml", lambda ws: ["train", ws.file("r.toml", "[run\n")], "not valid TOML"),
    case(
        "train",
        "recipe-unknown-key",
        lambda ws: train(ws, "optim.lrr=1"),
        "unknown key optim.lrr",
        "optim.lr",
    ),
    case("train", "set-malformed", lambda ws: train(ws, "iters"), "must look like section.key=value"),
    case("train", "set-into-a-string", lambda ws: train(ws, "model.name.x=1"), "model.name is not a table"),
    case(
        "train",
        "iters-zero",
        lambda ws: train(ws, "schedule.iters=0"),
        "schedule.iters = 0",
        "at least 1",
        disk=no_run_folder,
    ),
    case("train", "iters-negative", lambda ws: train(ws, "schedule.iters=-5"), "schedule.iters = -5"),
    case("train", "log-interval-zero", lambda ws: train(ws, "run.log_interval=0"), "run.log_interval = 0"),
    case(
        "train",
        "checkpoint-interval-zero",
        lambda ws: train(ws, "checkpoint.interval=0"),
        "checkpoint.interval = 0",
    ),
    case("train", "batch-size-recipe-zero", lambda ws: train(ws, "data.batch_size=0"), "data.batch_size = 0"),
    case(
        "train", "crop-size-zero", lambda ws: train(ws, "data.crop_size=[0, 32]"), "data.crop_size = [0, 32]"
    ),
    case("train", "crop-size-huge", lambda ws: train(ws, "data.crop_size=[16384, 16384]"), "MP"),
    case("train", "workers-negative", lambda ws: train(ws, "data.workers=-1"), "data.workers = -1"),
    case("train", "lr-negative", lambda ws: train(ws, "optim.lr=-0.1"), "optim.lr = -0.1", "above 0"),
    case("train", "lr-nan", lambda ws: train(ws, "optim.lr=nan"), "optim.lr = nan"),
    case(
        "train",
        "slide-stride-zero",
        lambda ws: train(ws, 'eval.mode="slide"', "eval.stride=[0, 0]"),
        "eval.stride",
    ),
    case(
        "train",
        "slide-stride-over-crop",
        lambda ws: train(ws, 'eval.mode="slide"', "eval.crop_size=[32, 32]", "eval.stride=[64, 64]"),
        "would leave gaps",
    ),
    case(
        "eval",
        "eval-stride-zero",
        lambda ws: evaluate(ws, ws.checkpoint("w.safetensors"), 'eval.mode="slide"', "eval.stride=[0, 0]"),
        "eval.stride",
    ),
    # -- training: the run folder, --init, --resume, bad files in loader workers
    case(
        "train",
        "train-data-is-a-file",
        lambda ws: train(ws, data=ws.file("d.zip", "x")),
        "is a file",
        "--data",
    ),
    case("train", "out-is-a-file", lambda ws: train(ws, out=ws.file("run", "x")), "is a file", "run.out"),
    case(
        "train",
        "init-is-folder",
        lambda ws: train(ws, f'model.init="{ws.folder("w.safetensors")}"'),
        "has no config.json",
        disk=no_run_folder,
    ),
    case(
        "train",
        "init-int-weights",
        lambda ws: train(ws, f'model.init="{_tiny_int(ws)}"'),
        "as torch.int64",
        disk=no_run_folder,
    ),
    case(
        "train",
        "worker-corrupt-mask",
        lambda ws: train(ws, "data.workers=1", data=corrupt_masks(ws.demo())),
        "cannot decode mask",
        ".png",
        disk=lambda ws: no_run_folder(ws),
    ),
    case(
        "train",
        "worker-aspect-bomb",
        lambda ws: train(ws, "data.workers=1", data=bomb_images(ws.demo(), 1, 100_000)),
        "aspect 1:100000",
        disk=no_run_folder,
    ),
    case(
        "train",
        "worker-decompression-bomb",
        lambda ws: train(
            ws, "data.workers=1", "data.max_pixels=2000000000", data=bomb_images(ws.demo(), 20_000, 20_000)
        ),
        "DecompressionBombError",
        disk=no_run_folder,
    ),
    case("train", "resume-nothing", lambda ws: [*train(ws), "--resume"], "nothing to resume"),
    case(
        "train",
        "resume-corrupt-config",
        lambda ws: [*train(ws, out=_damaged(ws, "config.toml", b"[model\n")), "--resume"],
        "cannot resume",
        "not valid TOML",
    ),
    case(
        "train",
        "resume-config-not-utf8",
        lambda ws: [*train(ws, out=_damaged(ws, "config.toml", b"\xff\xfe")), "--resume"],
        "not UTF-8",
    ),
    case(
        "train",
        "resume-corrupt-weights",
        lambda ws: [*train(ws, out=_damaged(ws, "ckpt_0000006.safetensors", b"{}")), "--resume"],
        "ckpt_0000006.safetensors",
    ),
    case(
        "train",
        "resume-corrupt-state",
        lambda ws: [*train(ws, out=_damaged(ws, "ckpt_0000006.state.pt", b"PK\x03")), "--resume"],
        "cannot read",
        "state.pt",
    ),
    case(
        "train",
        "resume-state-of-another-iteration",
        lambda ws: [*train(ws, out=resave_state(ws.run(), lambda s: s.update(iter=99))), "--resume"],
        "it says iteration 99, its name 6",
    ),
    case(
        "train",
        "resume-state-without-optimizer",
        lambda ws: [*train(ws, out=resave_state(ws.run(), lambda s: s.pop("optimizer"))), "--resume"],
        "does not fit this run",
        "KeyError",
    ),
    case(
        "train",
        "resume-malformed-eq-record",
        lambda ws: [
            *train(ws, out=resave_state(ws.run(), lambda s: s.update(eq='{"sites": [1]}'))),
            "--resume",
        ],
        "malformed eqsurgeon record",
    ),
    case(
        "train",
        "resume-foreign-optimizer",
        lambda ws: [
            *train(
                ws,
                out=resave_state(ws.run(), lambda s: s.update(optimizer={"state": {}, "param_groups": []})),
            ),
            "--resume",
        ],
        "does not fit this run",
    ),
    case(
        "eval",
        "eval-checkpoint-folder",
        lambda ws: evaluate(ws, ws.folder("w.safetensors")),
        "has no config.json",
    ),
    case(
        "eval",
        "eval-checkpoint-garbage",
        lambda ws: evaluate(ws, ws.file("w.safetensors", "{}")),
        "not a readable safetensors",
    ),
]


def _pickled(ws: Workspace) -> Path:
    path = ws / "w.pt"
    torch.save({"weight": datetime.date(2020, 1, 1)}, path)
    return path


def _folder_of(ws: Workspace, make: Callable[[Path, int, int], Path], width: int, height: int) -> Path:
    return make(ws.folder("imgs") / "bomb.png", width, height).parent


def _tiny_int(ws: Workspace) -> Path:
    from fixtures.tiny_seg import tiny_seg

    return ws.checkpoint(
        "int.safetensors",
        lambda s: s.update({"cls.weight": s["cls.weight"].long()}),
        factory=lambda: tiny_seg(5),
    )


def _damaged(ws: Workspace, name: str, data: bytes) -> Path:
    run = ws.run()
    (run / name).write_bytes(data)
    return run


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.command}:{c.name}")
def test_hostile_input_gives_one_line(case: Case, shared: Shared, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, shared)
    args = case.args(ws)
    assert args[0] == case.command
    before = snapshot(tmp_path)
    assert_error(invoke(*args), case.code, *case.needles)
    if case.disk is None:
        assert snapshot(tmp_path) == before, "a failed command changed the disk"
    else:
        case.disk(ws)
        assert not [p for p in tmp_path.rglob(".*.tmp")], "a temp file was left behind"


def test_the_table_covers_every_command() -> None:
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    every = {"analyze", "check", "calibrate", "verify", "train", "eval", "models", "demo-data"}
    assert every <= {c.command for c in CASES}


# -- the boundary itself


def test_an_unexpected_exception_is_a_bug_with_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    import eqsurgeon.api

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(eqsurgeon.api, "analyze", broken)
    line = assert_error(invoke(*analyze()), 3, "internal error (a bug)", "ZeroDivisionError", "--debug")
    assert "second line" not in line
    result = invoke("--debug", *analyze())  # --debug: the traceback, for the bug report
    assert isinstance(result.exception, ZeroDivisionError)


def test_messages_are_printed_verbatim_never_as_markup(tmp_path: Path) -> None:
    # an error with [/v2] in a path would crash rich's markup parser; a normal output would lose "[v2]"
    line = assert_error(invoke("analyze", FX_MODEL, "--data", tmp_path / "x[/v2]y[bold]"), 2)
    assert "x[/v2]y[bold]" in line
    result = invoke("demo-data", tmp_path / "[v2]", "--images", 1, "--size", 32)
    assert result.exit_code == 0 and f"{tmp_path / '[v2]'}" in result.stdout.replace("\n", "")
    escaped = assert_error(invoke("analyze", FX_MODEL, "--data", tmp_path / "a\rb"), 2)
    assert "\r" not in escaped and "a\\rb" in escaped  # control characters are shown, not obeyed


def test_nan_statistics_print_as_nan_not_inf(tmp_path: Path) -> None:
    model = tmp_path / "nan_branch.py"
    model.write_text(
        "import torch, torch.nn.functional as F\nfrom torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.a = nn.Conv2d(3, 4, 1); self.b = nn.Conv2d(3, 4, 1)\n"
        "        self.fuse = nn.Conv2d(8, 2, 1)\n"
        "    def forward(self, x):\n"
        "        a = self.a(x) * float('nan')\n"
        "        b = F.interpolate(self.b(F.avg_pool2d(x, 2)), scale_factor=2.0, mode='bilinear')\n"
        "        return self.fuse(torch.cat([a, b], 1))\n"
        "def build():\n    return M()\n"
    )
    result = invoke("analyze", f"{model}:build", "--input-size", "16x16")
    assert result.exit_code == 0, result.output
    assert "var_ratio=nan" in result.stdout and "inf" not in result.stdout
    assert invoke("check", f"{model}:build", "--input-size", "16x16").exit_code == 1  # not measurable: fails


def test_a_worker_error_is_the_same_line_as_in_the_main_process(shared: Shared, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, shared)
    data = corrupt_masks(ws.demo())
    lines = [assert_error(invoke(*train(ws, f"data.workers={n}", data=data)), 2) for n in (0, 2)]
    assert lines[0] == lines[1] and "cannot decode mask" in lines[0] and str(data / "masks") in lines[0]
    assert not (ws / "run").exists()


def test_a_late_failure_leaves_no_run_folder_and_the_fixed_run_starts(shared: Shared, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, shared)
    # the model predicts 3 classes, the data has 5: found at the first iteration, after the folder was made
    nested = ws / "runs" / "a" / "run"
    assert_error(invoke(*train(ws, "model.kwargs.num_classes=3", out=nested)), 2, "predicts 3 classes")
    assert not (ws / "runs").exists()  # the folders it made on the way are gone too
    assert_ok(invoke(*train(ws, "schedule.iters=2", "checkpoint.interval=2", "eval.interval=0")))
    assert (ws / "run" / "ckpt_0000002.safetensors").is_file()


@pytest.mark.parametrize("after", [1, 3])
def test_ctrl_c_in_train_says_how_to_resume(after: int, shared: Shared, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, shared)
    model = ws.file(
        "stop.py",
        "from fixtures.tiny_seg import TinySeg\n"
        "class Stop(TinySeg):\n"
        "    calls = 0\n"
        "    def forward(self, x):\n"
        "        if self.training:\n"
        "            Stop.calls += 1\n"
        f"            if Stop.calls > {after}:\n"
        "                raise KeyboardInterrupt\n"
        "        return super().forward(x)\n"
        "def build(num_classes=5):\n    return Stop(num_classes)\n",
    )
    args = train(ws, f'model.name="{model}:build"', "eval.interval=0")
    line = assert_error(invoke(*args), 130, "interrupted")
    if after < 2:  # before the first checkpoint (iteration 2): nothing to resume, nothing left behind
        assert "nothing was kept" in line and not (ws / "run").exists()
    else:
        assert "checkpoint of iteration 2" in line and f"eqsurgeon train {DEMO_RECIPE} --resume" in line
        assert (ws / "run" / "ckpt_0000002.state.pt").is_file()


def test_non_utf8_file_names_calibrate(tmp_path: Path) -> None:
    import os

    folder = Workspace(tmp_path, None).images(n=3)
    (folder / "0.png").rename(folder / os.fsdecode(b"caf\xe9.png"))  # Latin-1 bytes: not UTF-8
    (folder / os.fsdecode(b"\xff.png")).write_bytes(b"not a png")  # skipped, and its name printed
    result = invoke(*calibrate(Workspace(tmp_path, None), data=folder))
    assert result.exit_code == 0, result.output
    assert "\\xff.png" in result.stderr and (tmp_path / "eq.safetensors").is_file()


def test_file_modes_follow_the_umask(tmp_path: Path) -> None:
    import os

    from eqsurgeon.io import atomic_write, save_checkpoint, write_json

    old = os.umask(0o027)
    try:
        paths = [
            atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x")),
            write_json(tmp_path / "a.json", {"a": 1}),
            save_checkpoint(tmp_path / "a.safetensors", {"w": torch.ones(1)}),
        ]
        os.umask(0o002)
        paths.append(atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x")))
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [0o640, 0o640, 0o640, 0o664]


def test_a_stale_temp_file_of_a_dead_writer_is_removed_on_the_next_write(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from eqsurgeon.io import atomic_write

    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    stale = tmp_path / f".out.bin.{int(dead.stdout)}.tmp"
    live = tmp_path / f".out.bin.{os.getppid()}.tmp"  # a running process's temp file is left alone
    for path in (stale, live):
        path.write_bytes(b"half")
    atomic_write(tmp_path / "out.bin", lambda f: f.write(b"whole"))
    assert not stale.exists() and live.exists() and (tmp_path / "out.bin").read_bytes() == b"whole"


# -- faults of the environment: real small file systems (root only), a killed writer, a hostile PNG


@pytest.fixture
def tmpfs(tmp_path: Path) -> Any:
    """``mount(name, size, read_only)``: a fresh tmpfs below tmp_path; unmounted afterwards."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the disk-full and read-only cases run as root (CI)")
    mounted: list[Path] = []

    def mount(name: str, size: str = "64k", read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
        done = subprocess.run(command, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_read_only_disk_is_refused_before_any_work(tmpfs: Any, shared: Shared, tmp_path: Path) -> None:
    ro = tmpfs("ro", read_only=True)
    ws = Workspace(tmp_path / "ws", shared)
    ws.root.mkdir()
    assert_error(invoke(*calibrate(ws)[:4], "--out", ro / "eq.safetensors"), 2, "is not writable")
    assert_error(invoke(*analyze("--json", ro / "a.json")), 2, "is not writable")
    assert_error(invoke(*train(ws, out=ro / "run")), 2, "is not writable", "run.out")
    assert_error(invoke("demo-data", ro / "d", "--images", 1), 2, "read-only", "write elsewhere")
    assert list(ro.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmpfs: Any, shared: Shared, tmp_path: Path) -> None:
    full = tmpfs("full", size="64k")
    ws = Workspace(tmp_path / "ws", shared)
    ws.root.mkdir()
    model = f"{TINY_FILE}:tiny_seg"  # 180 kB of weights: more than the disk holds
    line = assert_error(invoke(*calibrate(ws, model=model)[:4], "--out", full / "eq.safetensors",
                               "--input-size", "32x32", "--batch-size", 2, "--workers", 0), 2)  # fmt: skip
    assert f"{full / 'eq.safetensors'}: no space left on the device; free some space" in line
    assert list(full.iterdir()) == []
    # training: the first checkpoint does not fit; the start is undone, so the folder is gone too
    assert_error(invoke(*train(ws, out=full / "run")), 2, "no space left on the device")
    assert list(full.iterdir()) == []
    # a JSON report on a disk that is full to the last block
    with open(full / "filler", "wb", buffering=0) as f, pytest.raises(OSError, match="No space"):
        while True:
            f.write(b"\0" * 4096)
    assert_error(invoke(*analyze("--json", full / "a.json")), 2, "a.json: no space left")
    assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_a_killed_write_leaves_the_old_file_and_its_temp_is_cleaned_next_time(tmpfs: Any) -> None:
    import os
    import subprocess
    import sys

    from eqsurgeon.io import atomic_write

    disk = tmpfs("kill", size="1m")
    target = disk / "out.bin"
    target.write_bytes(b"old")
    writer = (
        "import sys, time\nfrom pathlib import Path\nfrom eqsurgeon.io import atomic_write\n"
        "def write(f):\n    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(120)\n"
        "atomic_write(Path(sys.argv[1]), write)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
    finally:
        proc.kill()  # SIGKILL: no handler runs, the temp file stays
        proc.wait()
    stale = disk / f".out.bin.{proc.pid}.tmp"
    assert stale.stat().st_size == 1000 and target.read_bytes() == b"old"
    atomic_write(target, lambda f: f.write(b"new"))
    assert sorted(p.name for p in disk.iterdir()) == ["out.bin"] and target.read_bytes() == b"new"


def test_hostile_pngs_are_refused_before_decoding(tmp_path: Path) -> None:
    """A 1×100000 PNG (a few hundred bytes) and a 13000² one just under PIL's own limit cost no memory."""
    import subprocess
    import sys

    from tests._hostile import png_zeros

    folder = tmp_path / "hostile"
    folder.mkdir()
    tall = png_zeros(folder / "tall.png", 1, 100_000)
    big = png_zeros(folder / "big.png", 13_000, 13_000)
    assert tall.stat().st_size < 1000 and big.stat().st_size < 500_000
    probe = (
        "import resource, sys\nfrom pathlib import Path\n"
        "from eqsurgeon.errors import DataError\n"
        "from eqsurgeon.images import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, scan_images\n"
        "from eqsurgeon.training.segmentation import SampleList, SegmentationDataset\n"
        "paths = sorted(Path(sys.argv[1]).iterdir())\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    scan_images(sys.argv[1])\nexcept DataError as e:\n    print('scan:', e)\n"
        "ds = ImageDataset(paths, (512, 512), IMAGENET_MEAN, IMAGENET_STD)\n"
        "assert all(ds[i][0] is None for i in range(len(ds)))\n"
        "for p in paths:\n"
        "    try:\n        SegmentationDataset(SampleList('folder', 'train', (p,), (p,)), 5).read(0)\n"
        "    except DataError as e:\n        print('train:', e)\n"
        "print('grew', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe, str(folder)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2 unreadable file(s)" in lines[0] and "over the 40 MP cap" in lines[0]
    assert "big.png" in lines[1] and "169.0 MP" in lines[1] and "aspect 1:100000" in lines[2]
    grew_kib = int(lines[-1].split()[1])
    assert grew_kib < 40_000, f"peak memory grew by {grew_kib} KiB; decoding 13000² alone takes 165,000"
