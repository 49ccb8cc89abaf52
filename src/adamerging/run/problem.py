"""Loading a merging problem: checkpoints -> theta_0 and task vectors, test sets -> uint8 images,
heads.

Loading only: `load_problem(config, vectors)` returns a `Problem` that every method (and the
diagnostics) runs on; nothing here merges, trains or evaluates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adamerging.checkpoints.hashing import FileHashes, cache_file
from adamerging.datasets.corruptions import corrupt
from adamerging.datasets.labels import task_templates
from adamerging.datasets.preprocessing import preprocess_images, preprocessing_record
from adamerging.datasets.splits import parse_test_split
from adamerging.datasets.tasks import Split
from adamerging.datasets.user_tasks import user_task_templates
from adamerging.merging.task_vectors import TaskVectors
from adamerging.models.clip import (
    image_size,
    normalization,
)
from adamerging.models.evaluation import Normalizer
from adamerging.models.heads import Head
from adamerging.run.config import RunConfig
from adamerging.run.experts import load_task_vectors, unseen_tasks
from adamerging.run.heads import load_heads
from adamerging.run.tasks import _named, cache_dir, read_task


@dataclass
class TaskData:
    """One task's test split in memory: images uint8 [N, 3, S, S], its frozen head, labels [N]
    (long)."""

    name: str
    images: torch.Tensor
    head: Head
    labels: torch.Tensor | None = None  # only read by the supervised oracle and by evaluation


@dataclass
class Problem:
    """Everything a merging method needs, loaded once."""

    model: str
    tasks: list[str]
    clip: torch.nn.Module
    # state-dict entries in canonical order (rows of a layer-wise table)
    entries: list[str]
    theta0: dict[str, torch.Tensor]
    tau: TaskVectors
    data: list[TaskData]  # the merged tasks (adapted on, evaluated)
    normalize: Normalizer
    eval_data: list[TaskData]  # unseen tasks: evaluated only
    # per task: Split.record() (source, n_images, ...)
    test_data: dict[str, dict] = field(default_factory=dict)
    # per checkpoint file path, size, format, sha256; task-vector norms, cosines
    provenance: dict = field(default_factory=dict)
    # how the test images were decoded, resized, cropped and normalised
    preprocessing: dict = field(default_factory=dict)

    @property
    def all_data(self) -> list[TaskData]:
        """Merged tasks, then unseen ones."""
        return self.data + self.eval_data


def load_problem(
    config: RunConfig, vectors: str = "plain", timings: dict[str, float] | None = None
) -> Problem:
    """Checkpoints, test images (uint8, preprocessed once and cached), heads and labels of a run.

    `vectors`: a task-vector transform ("plain", "ties", "none"; see `load_task_vectors`).
    `timings` (seconds) gets load_checkpoints / load_data / load_heads when given.
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    loaded = load_task_vectors(config, vectors)
    timings["load_checkpoints"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    unseen = [t for t in unseen_tasks(config) if t not in loaded.tasks]
    everything = loaded.tasks + unseen
    splits, templates = test_splits(config, everything)
    timings["load_data"] = time.perf_counter() - t0
    # heads before the images are decoded: a head that does not fit costs seconds
    t0 = time.perf_counter()
    head_files: dict = {}
    heads = problem_heads(config, loaded.clip, everything, splits, templates, head_files)
    timings["load_heads"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = test_images(config, loaded.clip, splits)
    timings["load_data"] += time.perf_counter() - t0
    data = {
        task: TaskData(
            task,
            images[task],
            heads[task].to(config.device),
            torch.as_tensor(splits[task].labels, dtype=torch.long),
        )
        for task in everything
    }
    mean, std = normalization(loaded.clip)
    files = {**loaded.provenance["files"], "heads": head_files}
    return Problem(
        config.model,
        loaded.tasks,
        loaded.clip,
        loaded.entries,
        loaded.theta0,
        loaded.tau,
        [data[t] for t in loaded.tasks],
        Normalizer(mean, std, config.device),
        [data[t] for t in unseen],
        {task: splits[task].record() for task in everything},
        {**loaded.provenance, "files": files},
        preprocessing_record(image_size(loaded.clip), mean, std),
    )


def test_splits(config: RunConfig, tasks: list[str]) -> tuple[dict[str, Split], dict[str, list]]:
    """Each task's test split (not yet decoded) and prompt templates: users' tasks from their
    folders, the built-in ones from the data root."""
    user_tasks = {name: Path(folder) for name, folder in _named(config.task, "--task").items()}
    choice = parse_test_split(config.test_split)
    splits = {task: read_task(config, task, "test", choice.get(task)) for task in tasks}
    templates = {
        task: (
            user_task_templates(user_tasks[task])
            if task in user_tasks
            else task_templates(task, config.data_root)
        )
        for task in tasks
    }
    return splits, templates


def problem_heads(
    config: RunConfig,
    clip: torch.nn.Module,
    tasks: list[str],
    splits: dict[str, Split],
    templates: dict[str, list],
    files: dict,
) -> dict[str, Head]:
    """The tasks' heads (`heads.load_heads`), their files' hashes cached in the run's cache."""
    cache = cache_dir(config)
    hashes = FileHashes(cache_file(cache))
    model_dir = Path(config.checkpoints) / config.model
    width = clip.visual.output_dim
    heads = load_heads(config, model_dir, tasks, splits, templates, cache, width, hashes, files)
    hashes.save()
    return heads


def test_images(
    config: RunConfig, clip: torch.nn.Module, splits: dict[str, Split]
) -> dict[str, torch.Tensor]:
    """Each split's images preprocessed (cached under the run's cache) and, with --corruption,
    corrupted."""
    cache = cache_dir(config) / "images"
    size = image_size(clip)
    progress = not config.no_progress
    images = {t: preprocess_images(s, size, cache, progress=progress) for t, s in splits.items()}
    if config.corruption:
        images = {t: corrupt(x, config.corruption, seed=config.seed) for t, x in images.items()}
    return images
