"""The run folder: resolved config, metrics.jsonl, checkpoints; and the checks that guard ``--resume``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eqsurgeon.errors import CheckpointError, OutputExistsError, RecipeError
from eqsurgeon.io import atomic_write
from eqsurgeon.training.checkpoint import CheckpointFiles, list_checkpoints
from eqsurgeon.training.config import TrainConfig, config_from_dict
from eqsurgeon.training.recipe_toml import config_to_dict, dump_toml
from eqsurgeon.training.toml_read import read_toml

CONFIG_NAME = "config.toml"
METRICS_NAME = "metrics.jsonl"
# Keys that may change between a run and its resumption without changing what it computes.
RESUME_MAY_DIFFER = frozenset(
    {
        "data.root",
        "data.workers",
        "model.init",
        "run.out",
        "run.log_interval",
        "run.tensorboard",
        "run.compile",
        "eval.max_images",
        "data.max_pixels",
        "data.max_aspect",
    }
)


def check(run_dir: Path, cfg: TrainConfig, resume: bool) -> CheckpointFiles | None:
    """Check ``run_dir`` without writing anything: returns the checkpoint to resume from, if any.

    Raises:
        OutputExistsError: the folder holds a run and ``resume`` is False.
        CheckpointError: ``resume`` but the folder holds no run.
        RecipeError: ``resume`` with a recipe that differs from the run's.

    >>> import tempfile
    >>> from eqsurgeon.training.config import TrainConfig
    >>> d = Path(tempfile.mkdtemp()) / "run"
    >>> check(d, TrainConfig(), resume=False) is None
    True
    """
    config_path = run_dir / CONFIG_NAME
    _check_writable(run_dir)
    if not resume:
        if run_dir.is_dir() and (config_path.exists() or list_checkpoints(run_dir)):
            raise OutputExistsError(
                f"run folder {run_dir} already holds a run; "
                "pass --resume to continue it or choose another --out"
            )
        return None
    if not config_path.is_file():
        raise CheckpointError(
            f"nothing to resume in {run_dir}: it has no {CONFIG_NAME}; drop --resume to start"
        )
    try:
        saved = config_from_dict(read_toml(config_path, "run config"), source=str(config_path))
    except RecipeError as exc:
        raise CheckpointError(
            f"cannot resume from {run_dir}: {exc}; restore the file, or start anew with another --out"
        ) from None
    differences = config_differences(saved, cfg)
    if differences:
        raise RecipeError(
            f"{run_dir} was made by a different recipe ({'; '.join(differences[:3])}); "
            "resume with the same recipe and --set options, or choose another --out"
        )
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def _check_writable(run_dir: Path) -> None:
    # The run folder, or the nearest folder above it that exists, must be a writable folder.
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputExistsError(f"{existing} is a file, not a folder; choose another --out (run.out)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputExistsError(f"folder {existing} is not writable; choose another --out (run.out)")


@contextmanager
def removed_on_failure(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Undo a start that fails before its first checkpoint: remove what it wrote in ``run_dir``.

    So the corrected command can simply be run again: the folder then holds no run, and neither "already
    holds a run" nor "made by a different recipe" stands in the way. Files that were there before are
    kept, and so is everything once a checkpoint exists (``--resume`` continues from it).
    """
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    made = [run_dir, *run_dir.parents]  # the folders this start may create: up to the first that exists
    made = made[: next((i for i, p in enumerate(made) if p.exists()), len(made))]
    try:
        yield
    except BaseException:
        if enabled and run_dir.is_dir() and not list_checkpoints(run_dir):
            for path in set(run_dir.iterdir()) - (before or set()):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for folder in made:  # innermost first; only the ones this start created, and only if empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise


def create(run_dir: Path, cfg: TrainConfig) -> None:
    """Make ``run_dir`` with the resolved config, once the run is about to start (rank 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = dump_toml(cfg)
    atomic_write(run_dir / CONFIG_NAME, lambda f: f.write(text.encode()))
    (run_dir / METRICS_NAME).unlink(missing_ok=True)


def config_differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """``key: old -> new`` for each key that differs, except those allowed to change on resume.

    >>> from eqsurgeon.training.config import load_config
    >>> config_differences(load_config(None), load_config(None, ["optim.lr=0.1"]))
    ['optim.lr: 6e-05 -> 0.1']
    """
    flat_old, flat_new = _flatten(config_to_dict(old)), _flatten(config_to_dict(new))
    return [
        f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}".replace("'", "")
        for k in sorted(set(flat_old) | set(flat_new))
        if k not in RESUME_MAY_DIFFER and flat_old.get(k) != flat_new.get(k)
    ]


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to metrics.jsonl."""
    with open(run_dir / METRICS_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def log_record(run_dir: Path, writer: Any, record: dict[str, Any]) -> None:
    """Append ``record`` to metrics.jsonl and, with a TensorBoard writer, add its float scalars.

    A dict of floats (``grad_ratio``: one per fusion site) becomes one tag per entry, ``grad_ratio/<layer>``,
    which TensorBoard groups under ``grad_ratio``.
    """
    append_metrics(run_dir, record)
    if writer is None:
        return
    for key, value in record.items():
        entries = value.items() if isinstance(value, dict) else [("", value)]
        for name, number in entries:
            if key != "iter" and isinstance(number, float):
                writer.add_scalar(f"{key}/{name}" if name else key, number, record["iter"])


def open_tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter on ``run_dir/tb`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: pip install eqsurgeon[tensorboard]
        return None
    return SummaryWriter(str(run_dir / "tb"))


def truncate_metrics(run_dir: Path, iteration: int) -> None:
    """Drop metric lines past ``iteration``: a resumed run logs those iterations again."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("iter", 0) <= iteration]
    text = "".join(line + "\n" for line in kept)
    atomic_write(path, lambda f: f.write(text.encode()))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not prefix:
            out.update(_flatten(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
