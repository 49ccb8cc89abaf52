"""The tasks and their facts: names, folders, test-split choices, the paper's test-set sizes, and
`Split`, one split of one task as read from disk.

A dataset folder may carry two override files, used by miniature benchmarks with fewer classes:
`classnames.txt` (one class name per line, replaces the class names) and `templates.txt` (one
prompt template per line with a `{c}` placeholder, replaces the task's templates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.runtime.errors import DatasetError

TASKS: tuple[str, ...] = ("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD")


# The folder under the data root that holds each task (and its optional override files).
TASK_DIRS: dict[str, str] = {
    "SUN397": "sun397",
    "Cars": "stanford_cars",
    "RESISC45": "resisc45",
    "EuroSAT": "EuroSAT_splits",
    "SVHN": "svhn",
    "GTSRB": "gtsrb",
    "MNIST": "MNIST",
    "DTD": "dtd",
}


SPLITS: tuple[str, ...] = ("test", "train")


# Where a reader can take the test split from, default first: a folder under the task's folder, or
# for RESISC45 a list file `resisc45-<name>.txt`. SUN397 and DTD are ambiguous: task-vectors reads
# val/, the AdaMerging fork test/ (SPEC.md, Data). EuroSAT and RESISC45 ship a validation split
# beside the test one: it can be chosen by name but is never guessed. The other tasks have one test
# source.
TEST_SPLIT_CHOICES: dict[str, tuple[str, ...]] = {
    "SUN397": ("val", "test"),
    "DTD": ("val", "test"),
    "EuroSAT": ("test", "val"),
    "RESISC45": ("test", "val"),
}


AMBIGUOUS_TEST_SPLIT: tuple[str, ...] = ("SUN397", "DTD")


# Test-set sizes of the paper's setting (SPEC.md, Data; SUN397 "about 19.9k": 1 % either way), as
# (fewest, most) images read without a warning.
PAPER_TEST_SIZES: dict[str, tuple[int, int]] = {
    "SUN397": (19_700, 20_100),
    "Cars": (8041, 8041),
    "RESISC45": (6300, 6300),
    "EuroSAT": (2700, 2700),
    "SVHN": (26032, 26032),
    "GTSRB": (12630, 12630),
    "MNIST": (10000, 10000),
    "DTD": (1880, 1880),
}


def paper_size_text(task: str) -> str:
    """The paper's test-set size of `task` as text: "8041", or a range "19700-20100" (KeyError if
    unknown)."""
    low, high = PAPER_TEST_SIZES[task]
    return str(low) if low == high else f"{low}-{high}"


def paper_size_mismatch(task: str, n: int) -> str | None:
    """`paper_size_text(task)` when `n` test images differ from the paper's count; None when they
    agree or it is unknown."""
    if task not in PAPER_TEST_SIZES:
        return None
    low, high = PAPER_TEST_SIZES[task]
    return None if low <= n <= high else paper_size_text(task)


@dataclass
class Split:
    """One split of one task as read from disk: class names, int64 labels [N] and the images (file
    paths, decoded uint8 [N, H, W, 3], or still-encoded files), with where they were read from and,
    for the datasets with several candidate test folders, which one was used and why."""

    task: str
    split: str  # "test" or "train"
    classnames: list[str]
    labels: np.ndarray  # int64 [N]
    # file paths, uint8 [N, H, W, 3], or encoded files
    # file paths, decoded uint8 [N, H, W, 3], or a Hugging Face copy's encoded files
    # (hf_copies.EncodedImages)
    images: list[str] | np.ndarray | Sequence[bytes]
    # What it was read from: a folder / file, or "Hugging Face parquet <folder>/test-*.parquet
    # (...)". Recorded with results as the split's source.
    source: str
    # SUN397, DTD, EuroSAT, RESISC45: which candidate ("val", "test") was read
    test_split: str | None = None
    chosen_by: str | None = None  # "--test-split" or "default"

    def __len__(self) -> int:
        return int(len(self.labels))

    def record(self) -> dict[str, Any]:
        """What a results JSON keeps about the data a task was scored on: source, choice, image
        count."""
        out: dict[str, Any] = {
            "split": self.split,
            "source": str(self.source),
            "n_images": len(self),
        }
        if self.test_split is not None:
            out.update(test_split=self.test_split, chosen_by=self.chosen_by)
        if self.split == "test" and self.task in PAPER_TEST_SIZES:
            low, high = PAPER_TEST_SIZES[self.task]
            out["paper_n_images"] = low if low == high else [low, high]
        return out


def canonical_task(task: str) -> str:
    """The canonical spelling of a task name ("mnist" -> "MNIST"); DatasetError if unknown."""
    lookup = {t.lower(): t for t in TASKS}
    key = str(task).strip().lower()
    if key not in lookup:
        raise DatasetError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return lookup[key]


def task_folder(task: str, data_root: str | Path) -> Path:
    """The task's dataset folder under `data_root` (where classnames.txt / templates.txt may
    lie)."""
    return Path(data_root).expanduser() / TASK_DIRS[canonical_task(task)]


DATA_FORMATS: tuple[str, ...] = ("auto", "folders", "hf")
