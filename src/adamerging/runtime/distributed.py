"""Multi-process AdaMerging under torchrun: tasks are split across ranks, gradients all-reduced.

Each rank computes the loss of its own tasks (task i belongs to rank i % world), backpropagates, and
the coefficient gradients (a few thousand numbers) are summed over ranks, so every rank applies the
same Adam update and holds the same table. Batch sampling draws for all tasks on every rank, so the
batches are exactly those of a single-process run with the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from adamerging.runtime.device import check_device, check_local_ranks, set_precision


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the world size (0 and 1 without torchrun); `active` when more than
    one process takes part, `is_main` on rank 0 (the one that logs and writes results)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, task_index: int) -> bool:
        return task_index % self.world == self.rank

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (a no-op in a single process)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def merge_dicts(self, part: dict[str, Any]) -> dict[str, Any]:
        """Union of every rank's dict (e.g. per-task accuracies evaluated where they live)."""
        if not self.active:
            return part
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, part)
        return {k: v for p in parts for k, v in p.items()}


def init_from_env(device: str) -> tuple[Ranks, str]:
    """Check `device` (`device.check_device`), join the process group torchrun describes (WORLD_SIZE
    > 1); returns the ranks and this rank's device (its own GPU, cuda:LOCAL_RANK). ValueError (one
    line) for a bad device, or more processes on this node than it has GPUs. Every entry point calls
    it first."""
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.device(device).type == "cuda"
    if use_cuda:
        check_local_ranks(local, int(os.environ.get("LOCAL_WORLD_SIZE", local + 1)))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Ranks(rank, world), device


def setup(device: str, precision: str) -> tuple[Ranks, str, dict]:
    """Every entry point's first step: `init_from_env(device)`, then the float32 flags of
    `precision` (`device.set_precision`). Returns (ranks, this rank's device, the numerics
    record)."""
    ranks, device = init_from_env(device)
    return ranks, device, set_precision(precision, device)


def shutdown() -> None:
    """Leave torchrun's process group, if this process joined one (every entry point, at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
