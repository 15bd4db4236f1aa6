"""Training checkpoints: weights as safetensors, everything else in a ``weights_only``-loadable file.

A checkpoint at iteration N is two files in the run folder::

    ckpt_000N.safetensors   model state dict (+ metadata: iteration, eqsurgeon record)
    ckpt_000N.state.pt      optimizer, scheduler, grad scaler, iteration, RNG and data-order state

Both are written to a temp file and renamed into place; the state file goes last, so it marks a
complete checkpoint and a kill at any moment leaves the previous one usable. The last ``keep`` are kept,
and ``best.safetensors`` holds the weights with the best mIoU so far.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eqsurgeon.errors import CheckpointError, one_line
from eqsurgeon.io import atomic_write
from eqsurgeon.io import save_checkpoint as save_weights
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training.config import ModelConfig


@dataclass(frozen=True)
class CheckpointFiles:
    """The two files of one checkpoint."""

    iteration: int
    weights: Path
    state: Path


def checkpoint_files(run_dir: Path, iteration: int) -> CheckpointFiles:
    """Paths of the checkpoint at ``iteration`` (whether or not it exists).

    >>> checkpoint_files(Path("run"), 20).weights.name
    'ckpt_0000020.safetensors'
    """
    stem = f"ckpt_{iteration:07d}"
    return CheckpointFiles(iteration, run_dir / f"{stem}.safetensors", run_dir / f"{stem}.state.pt")


def list_checkpoints(run_dir: Path) -> list[CheckpointFiles]:
    """Complete checkpoints in ``run_dir`` (both files present), oldest first."""
    found = []
    for state in sorted(run_dir.glob("ckpt_*.state.pt")):
        files = checkpoint_files(run_dir, int(state.name[5:12]))
        if files.weights.is_file():
            found.append(files)
    return found


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    record: CalibrationRecord | None,
    model: ModelConfig,
    keep: int,
) -> CheckpointFiles:
    """Write a checkpoint atomically, then delete the iteration checkpoints older than the last ``keep``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> state = {"iter": 1, "rng": [rng_state()]}
    >>> f = save_checkpoint(d, 1, {"w": torch.ones(2)}, state, None, ModelConfig(name="m"), keep=1)
    >>> from eqsurgeon.io import read_state_dict
    >>> load_state(f)["iter"], read_state_dict(f.weights)[0]["w"].tolist()
    (1, [1.0, 1.0])
    """
    files = checkpoint_files(run_dir, iteration)
    write_weights(files.weights, weights, record, model, iteration)
    atomic_write(files.state, lambda f: torch.save(state, f))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.state.unlink(missing_ok=True)  # state first: a half-deleted checkpoint is never "complete"
        old.weights.unlink(missing_ok=True)
    return files


def write_weights(
    path: Path,
    weights: dict[str, torch.Tensor],
    record: CalibrationRecord | None,
    model: ModelConfig,
    iteration: int,
) -> Path:
    """Weights as safetensors with the calibration record (so ``load_model`` rebuilds insert mode) and
    the model spec and iteration as extra metadata."""
    extra = {"model": model.name, "model_kwargs": json.dumps(model.kwargs), "iteration": str(iteration)}
    return save_weights(path, weights, record, force=True, extra=extra)


def load_state(files: CheckpointFiles) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True``."""
    try:
        state = torch.load(files.state, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is not ours or is damaged
        raise CheckpointError(
            f"cannot read {files.state} ({one_line(exc)}); delete it to resume from an older one"
        ) from None
    if not isinstance(state, dict):
        state = {}
    wrong = [k for k, kind in _STATE_KEYS.items() if not isinstance(state.get(k), kind)]
    wrong += [k for k in ("optimizer", "scheduler", "scaler") if not isinstance(state.get(k, {}), dict)]
    if wrong or state["iter"] != files.iteration:
        what = (
            f"{', '.join(wrong)} missing or malformed"
            if wrong
            else f"it says iteration {state['iter']}, its name {files.iteration}"
        )
        raise CheckpointError(
            f"{files.state} is not a sound training state ({what}); delete it to resume from an older one"
        )
    return state


_STATE_KEYS = {"iter": int, "rng": list}  # read first; the rest is checked as it is loaded (restore)


def restore(files: CheckpointFiles, state: dict[str, Any], objects: dict[str, Any], rank: int) -> None:
    """Load a training state into the run's optimizer, scheduler and scaler (``objects`` by state key) and
    set this rank's RNG; a state that does not fit them is a :class:`CheckpointError`, not a traceback."""
    try:
        for key, obj in objects.items():
            obj.load_state_dict(state[key])
        set_rng_state(state["rng"][rank])
    except Exception as exc:
        raise CheckpointError(
            f"{files.state} does not fit this run ({type(exc).__name__}: {one_line(exc)}); "
            "resume with the recipe that wrote it, or delete it to resume from an older checkpoint"
        ) from exc


def rng_state() -> dict[str, Any]:
    """This process's RNG state (torch CPU, Python, CUDA when in use): part of every checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
