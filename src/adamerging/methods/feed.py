"""Which images an AdaMerging step draws and where they live: `sample` (a fresh shuffle per task
and step, what the authors' per-step DataLoader re-creation draws), `Feed` (the images on the
device, resident or prefetched), `parts_of` (a chunk's ranges of tasks' images), and
`adaptation_subset` (`--adapt-fraction`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adamerging.run.problem import TaskData
from adamerging.runtime.device import free_bytes

# (task index, first, last + 1): a range of the task's images drawn this step
Part = tuple[int, int, int]


def parts_of(whole: Sequence[Part], per_task: int, start: int, stop: int) -> list[Part]:
    """The parts of images [start, stop) of this rank's images laid end to end (`whole`, per_task
    each)."""
    out = []
    for k, (i, _, _) in enumerate(whole):
        a, b = max(start - k * per_task, 0), min(stop - k * per_task, per_task)
        if a < b:
            out.append((i, a, b))
    return out


class Feed:
    """This rank's step images (uint8) on the device, for the sampler's draws.

    Resident: when this rank's adaptation images take at most a third of the free device memory,
    they are copied there once (off CUDA they stay where they are), and each step indexes them
    there. Otherwise each step's images are gathered on the host into pinned memory and copied
    asynchronously, and `prefetch` gathers the next step's while the device computes: drawn from a
    copy of the sampler's state, so the sampler's own draws are unchanged (and a prefetch that does
    not match them, e.g. after a resume, is not used).
    """

    def __init__(
        self,
        tasks: Sequence[TaskData],
        mine: Sequence[int],
        device: torch.device,
        per_task: int,
        generator: torch.Generator,
        resident: bool | None = None,
    ):
        self.tasks, self.mine, self.device, self.per_task, self.generator = (
            tasks,
            list(mine),
            device,
            per_task,
            generator,
        )
        free = free_bytes(device)
        if resident is None:
            resident = (
                free is None
                or sum(tasks[i].images.numel() * tasks[i].images.element_size() for i in mine)
                <= free / 3
            )
        self.resident = {i: tasks[i].images.to(device) for i in mine} if resident else None
        self.pin = device.type == "cuda"
        self.next: tuple[list[torch.Tensor], dict[int, torch.Tensor]] | None = None

    def images(self, batches: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        """{task index: its images `batches[i]` on the device} for this rank's tasks."""
        if self.resident is not None:
            # no stream sync
            return {
                i: self.resident[i][batches[i].to(self.device, non_blocking=True)]
                for i in self.mine
            }
        ready, self.next = self.next, None
        if ready is not None and all(torch.equal(ready[0][i], batches[i]) for i in self.mine):
            return ready[1]
        return {i: self._stage(i, batches[i]) for i in self.mine}

    def prefetch(self) -> None:
        """Gather (and start copying) the images the sampler will draw next; nothing when
        resident."""
        if self.resident is not None:
            return
        peek = torch.Generator()
        peek.set_state(self.generator.get_state())
        batches = [sample(t, self.per_task, peek) for t in self.tasks]
        self.next = (batches, {i: self._stage(i, batches[i]) for i in self.mine})

    def _stage(self, i: int, index: torch.Tensor) -> torch.Tensor:
        source = self.tasks[i].images
        host = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=self.pin)
        torch.index_select(source, 0, index, out=host)
        return host.to(self.device, non_blocking=True)


def sample(task: TaskData, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` image indices of `task`: the first of a fresh shuffle.

    What re-creating a shuffled DataLoader every step (the authors' code) draws, without re-creating
    anything. With fewer images than `count` (a small --adapt-fraction), shuffles are chained so
    every batch stays full.
    """
    n = len(task.images)
    rounds = -(-count // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:count]


def adaptation_subset(data: Sequence[TaskData], fraction: float, seed: int) -> list[TaskData]:
    """Each task restricted to a seeded `fraction` of its test images (at least one) for
    adaptation."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--adapt-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(data)
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in data:
        keep = (
            torch.randperm(len(t.images), generator=g)[: max(1, round(fraction * len(t.images)))]
            .sort()
            .values
        )
        out.append(
            TaskData(
                t.name, t.images[keep], t.head, t.labels[keep] if t.labels is not None else None
            )
        )
    return out
