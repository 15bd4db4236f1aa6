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
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from eqsurgeon.errors import CheckpointError
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
    metadata: dict[str, str],
    keep: int,
) -> CheckpointFiles:
    """Write a checkpoint atomically, then delete the iteration checkpoints older than the last ``keep``.

    >>> d = Path(tempfile.mkdtemp())
    >>> f = save_checkpoint(d, 1, {"w": torch.ones(2)}, {"iter": 1}, {}, keep=1)
    >>> load_state(f)["iter"], load_weights(f.weights)[0]["w"].tolist()
    (1, [1.0, 1.0])
    """
    files = checkpoint_files(run_dir, iteration)
    write_weights(files.weights, weights, {**metadata, "iteration": str(iteration)})
    atomic_write(files.state, lambda f: torch.save(state, f))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.state.unlink(missing_ok=True)  # state first: a half-deleted checkpoint is never "complete"
        old.weights.unlink(missing_ok=True)
    return files


def write_weights(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write a state dict as safetensors (contiguous CPU copies; tied tensors duplicated)."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def load_state(files: CheckpointFiles) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True``."""
    try:
        return torch.load(files.state, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is not ours or is damaged
        raise CheckpointError(
            f"cannot read {files.state} ({exc}); delete it to resume from an older one"
        ) from None


def weights_metadata(model: ModelConfig, iteration: int, eq_record: dict[str, Any] | None) -> dict[str, str]:
    """Safetensors metadata of a training checkpoint: model spec, iteration, calibration record."""
    meta = {"model": model.name, "model_kwargs": json.dumps(model.kwargs), "iteration": str(iteration)}
    if eq_record is not None:  # the calibrated-checkpoint format, so load_model rebuilds insert mode
        meta["eqsurgeon"] = json.dumps(eq_record, sort_keys=True, separators=(",", ":"))
    return meta


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


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(binary file)`` on a temp file next to ``path``, fsync, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
