"""torch.distributed from torchrun's environment: RANK set means DDP, otherwise one process.

NCCL on GPU, gloo on CPU; each process drives ``cuda:LOCAL_RANK``. Helpers do nothing in a single
process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from eqsurgeon.errors import RecipeError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank, the world size and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs."""
        return self.rank == 0


_OWNED: set[str] = set()  # the process group setup() created (a second init after destroy can hang)


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (``RANK`` set) and pick the device.

    >>> setup("cpu").world if "RANK" not in os.environ else 1
    1
    """
    use_cuda = _uses_cuda(device)
    if use_cuda and not torch.cuda.is_available():
        raise RecipeError("run.device = 'cuda' but no GPU is visible; set run.device = 'cpu' or 'auto'")
    if "RANK" not in os.environ:
        return DistInfo(0, 1, 0, torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        _init_group(use_cuda)
        _OWNED.add("default")  # ours to destroy; a caller's group (e.g. train --compare's) is left alone
    elif use_cuda:
        torch.cuda.set_device(local_rank)
    return DistInfo(rank, world, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


@contextmanager
def process_group(device: str = "auto") -> Iterator[None]:
    """One process group for several trainer runs under torchrun (``train --compare``); nothing otherwise.

    Each run's :func:`setup` finds the group and keeps it, since creating a second group after destroying
    the first can hang on torchrun's store. The group is destroyed on leaving.

    >>> with process_group("cpu"):
    ...     dist.is_initialized() == ("RANK" in os.environ)
    True
    """
    if "RANK" not in os.environ or dist.is_initialized():
        yield
        return
    _init_group(_uses_cuda(device))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _uses_cuda(device: str) -> bool:
    return torch.cuda.is_available() if device == "auto" else device == "cuda"


def _init_group(use_cuda: bool) -> None:
    # NCCL drives this process's own GPU (cuda:LOCAL_RANK), so that GPU is made current first.
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else ``model`` itself.

    The gradients live in DDP's communication buckets (``gradient_as_bucket_view``), allocated here,
    before the first backward: autograd then accumulates into them in place, in the buckets' layout.
    Without this, a weight whose gradient comes out in another memory layout than the weight's own (a
    depthwise conv's [C, 1, k, k] weight fed channels-last activations, as in ConvNeXt blocks, or any conv
    under ``run.channels_last``) has its gradient copied into the bucket at every step, and DDP warns
    "Grad strides do not match bucket view strides". The optimizer must then zero the gradients rather
    than drop them (``zero_grad(set_to_none=False)``), which keeps them bucket views.

    >>> net = torch.nn.Linear(2, 2)
    >>> wrap(net, DistInfo(0, 1, 0, torch.device("cpu"))) is net
    True
    """
    if info.world == 1:
        return model
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # DDP turns these into bucket views
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[info.local_rank] if info.device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


def cleanup() -> None:
    """Destroy the process group if one was made."""
    if dist.is_initialized() and "default" in _OWNED:
        dist.destroy_process_group()
        _OWNED.discard("default")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in one process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank.

    On CPU there is no SyncBatchNorm, so each rank's BN tracks its own batches; DDP broadcasts rank 0's
    buffers before each forward. Doing it once more before evaluating and at the end leaves every rank
    holding exactly the weights rank 0 checkpoints.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_initialized():
        dist.barrier()
