"""A seeded sample of each merged task's train split, for the data-based baselines (Fisher merging,
RegMean).

Only the train split is read (through the same readers as the test split: task-vectors folders,
Hugging Face copies, users' ImageFolder trees); labels are never used. Which images: a seeded
uniform sample of `--train-images` per task, recorded by count, order and a hash of the indices.
FusionBench takes the first N of its data loader instead (unshuffled for Fisher merging); the folder
layouts here list images class by class, so the first N would cover one or two classes. Fisher
merging batches its sample in the seeded draw's order (its estimator depends on which images share
a batch); RegMean, whose statistics are sums, reads it in dataset order.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from adamerging.datasets.preprocessing import preprocess_images
from adamerging.datasets.tasks import Split
from adamerging.models.clip import image_size
from adamerging.models.heads import Head
from adamerging.run.config import RunConfig
from adamerging.run.problem import Problem
from adamerging.run.tasks import read_task


@dataclass
class TrainSample:
    """One task's sampled train images, uint8 [N, 3, S, S] (unnormalised), its frozen head, and what
    was read."""

    name: str
    images: torch.Tensor
    head: Head
    record: dict  # split, source, n_available, n_images, seed, indices_sha1


def sample_indices(
    available: int, wanted: int, seed: int, task: str, shuffled: bool = False
) -> np.ndarray:
    """Indices of `min(wanted, available)` images of `task`, uniform without replacement: sorted
    (dataset order), or `shuffled` (in the seeded draw's order: batches mix the classes of a
    class-sorted folder).

    Seeded by (seed, crc32 of the task name): the same images whatever the other tasks or their
    order.
    """
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    drawn = rng.permutation(available)[: min(wanted, available)]
    return drawn if shuffled else np.sort(drawn)


def subset(split: Split, indices: np.ndarray) -> Split:
    """The images and labels of `split` at `indices` (file paths, decoded arrays or encoded files
    alike)."""
    images = (
        split.images[indices]
        if isinstance(split.images, np.ndarray)
        else [split.images[int(i)] for i in indices]
    )
    return Split(
        task=split.task,
        split=split.split,
        classnames=split.classnames,
        labels=split.labels[indices],
        images=images,
        source=split.source,
    )


def train_samples(
    config: RunConfig, problem: Problem, shuffled: bool = False
) -> Iterator[TrainSample]:
    """`config.train_images` seeded train images of each merged task in turn, preprocessed like the
    test images (one task's images in memory at a time), in dataset order or `shuffled`
    (`sample_indices`).

    Errors: DatasetError (one line, naming the folder) when a task's train split is missing; the
    `prepare` and `download` commands write it.
    """
    chosen = []
    # every split is read (and checked) before any statistics are computed
    for data in problem.data:
        split = read_task(config, data.name, "train")
        indices = sample_indices(len(split), config.train_images, config.seed, data.name, shuffled)
        record = {
            **split.record(),
            "n_available": len(split),
            "n_images": len(indices),
            "seed": config.seed,
            "order": "seeded shuffle" if shuffled else "dataset order",
            "indices_sha1": hashlib.sha1(indices.astype(np.int64).tobytes()).hexdigest(),
        }
        chosen.append((data, subset(split, indices), record))
        del split  # only the sampled images' paths or pixels are kept
    size = image_size(problem.clip)
    for data, sample, record in chosen:
        yield TrainSample(
            data.name,
            preprocess_images(sample, size, None, progress=config.progress),
            data.head,
            record,
        )
