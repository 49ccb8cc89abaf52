"""How an AdaMerging step's images fit the device (`--adapt-mode`, `--adapt-chunk`): fused, chunked
or one task at a time, the chunk measured on the first step where a GPU's free memory decides, and
the setting that lowers a step's memory when it runs out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adamerging.run.config import RunConfig
from adamerging.runtime.device import free_bytes


@dataclass
class Plan:
    """How a step's images pass through the encoder (`--adapt-mode`, resolved for this device).

    "fused": one forward and backward over all of this rank's images; "chunked": `chunk` images at a
    time (a task's images may span chunks), "per-task": one task's images at a time. chunk 0: not
    known yet, measured on the step's first chunk (auto on CUDA, chunked without --adapt-chunk).
    """

    mode: str
    chunk: int = 0
    auto: bool = False  # --adapt-mode auto: the measurement may choose fused

    def __str__(self) -> str:
        return f"chunked, {self.chunk} images per chunk" if self.mode == "chunked" else self.mode


def plan_for(config: RunConfig, device: torch.device) -> Plan:
    """The step plan of `config.adapt_mode` on `device`. auto: fused off CUDA (host memory is not
    planned for), else measured on the first step; chunked without --adapt-chunk: one batch
    (--batch-size-adapt images) per chunk off CUDA, else measured."""
    per_task = config.images_per_task
    cuda = free_bytes(device) is not None
    if config.adapt_mode == "auto":
        return Plan("auto", 0, auto=True) if cuda else Plan("fused")
    if config.adapt_mode == "per-task":
        return Plan("per-task", per_task)
    if config.adapt_mode == "chunked":
        return Plan("chunked", config.adapt_chunk or (0 if cuda else config.batch_size_adapt))
    return Plan("fused")


# Share of the free device memory a step's activations may plan to fill (the rest: allocator slack)
MEMORY_MARGIN = 0.85


def chunk_that_fits(
    images: int, bytes_per_image: float, free: int, margin: float = MEMORY_MARGIN
) -> int:
    """Images per chunk whose activations fit in `margin` x `free` bytes at `bytes_per_image` each:
    from 1 to `images` (all of them: the fused step fits)."""
    return max(1, min(images, int(margin * free // max(bytes_per_image, 1.0))))


def measured(plan: Plan, images: int, bytes_per_image: float, free: int | None) -> Plan:
    """The plan once a chunk's memory per image is known: the chunk that fits (auto: fused when all
    do)."""
    chunk = images if free is None else chunk_that_fits(images, bytes_per_image, free)
    return Plan("fused") if plan.auto and chunk == images else Plan("chunked", chunk, plan.auto)


def smaller_step(plan: Plan, images: int, config: RunConfig) -> str:
    """The setting that lowers a step's memory below `plan` (that ran out of it) for a step of
    `images` images on this rank."""
    fused = plan.mode == "fused"
    # the chunk that ran
    chunk = images if fused else plan.chunk or min(images, config.batch_size_adapt)
    if chunk <= 1:
        return "--checkpointing" if not config.checkpointing else "--precision bf16"
    return f"--adapt-mode chunked --adapt-chunk {max(1, images // 4 if fused else chunk // 2)}"
