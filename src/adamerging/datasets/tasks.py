"""The task registry: one record per built-in task with every fact about it (its folder, reader,
class names, test-split choices, the paper's test-set size, its Hugging Face copies, how to prepare
it from the official downloads), and `Split`, one split of one task as read from disk.

A new dataset is one `Task` record (`task_record.py`) here plus its reader (`readers.py`, a
function of the data root, the split and the test-split candidate); the rest is optional: a recipe
for `prepare` and the names of its Hugging Face copies. The 14- and 20-task suites' 12 records are
in `suite_tasks.py`. Users' own tasks need no record (`user_tasks.py`, `--task`).

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

from adamerging.datasets import preparers as prep
from adamerging.datasets import readers as read
from adamerging.datasets.classnames import (
    FixedNames,
    FolderNames,
    MappedNames,
    MetaNames,
)
from adamerging.datasets.suite_tasks import SUITE_TASKS
from adamerging.datasets.task_record import Task
from adamerging.runtime.errors import DatasetError

SPLITS: tuple[str, ...] = ("test", "train")
DATA_FORMATS: tuple[str, ...] = ("auto", "folders", "hf")


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "SUN397",
            "sun397",
            read.read_sun397,
            FolderNames(strip=2, copy_prefix=r"^/[a-z]/"),  # `a_abbey` -> `abbey`
            paper_test_size=(19_700, 20_100),  # "about 19.9k" (SPEC.md): 1 % either way
            test_splits=("val", "test"),
            ambiguous_test_split=True,
            hf_dataset=("tanganke/sun397", None),
            hf_expert="sun397",
            prepare=prep.prepare_sun397,
            downloads="SUN397.tar.gz and Partitions.zip (vision.princeton.edu/projects/2010/SUN/)",
        ),
        Task(
            "Cars",
            "stanford_cars",
            read.read_cars,
            MetaNames("devkit/cars_meta.mat", "class_names"),
            paper_test_size=(8041, 8041),
            hf_dataset=("tanganke/stanford_cars", None),
            hf_expert="stanford-cars",
            prepare=prep.prepare_cars,
            classes_at="devkit/cars_meta.mat",
            downloads=(
                "car_devkit.tgz, cars_train.tgz, cars_test.tgz, cars_test_annos_withlabels.mat (or"
                " the Kaggle copy)"
            ),
        ),
        Task(
            "RESISC45",
            "resisc45",
            read.read_resisc45,
            FixedNames(),
            paper_test_size=(6300, 6300),
            test_splits=("test", "val"),  # a validation split beside the test one: never guessed
            hf_dataset=("tanganke/resisc45", None),
            hf_expert="resisc45",
            prepare=prep.prepare_resisc45,
            classes_at="NWPU-RESISC45",
            downloads=(
                "NWPU-RESISC45 (extracted folder, .zip or .tar) and resisc45-{train,val,test}.txt"
            ),
        ),
        Task(
            "EuroSAT",
            "EuroSAT_splits",
            read.read_eurosat,
            MappedNames("EuroSAT_folder_to_openai"),
            paper_test_size=(2700, 2700),
            test_splits=("test", "val"),  # a validation split beside the test one: never guessed
            hf_dataset=("tanganke/eurosat", None),
            hf_expert="eurosat",
            prepare=prep.prepare_eurosat,
            downloads="EuroSAT.zip / EuroSAT_RGB.zip (the RGB version, github.com/phelber/EuroSAT)",
        ),
        Task(
            "SVHN",
            "svhn",
            read.read_svhn,
            FixedNames(),
            paper_test_size=(26032, 26032),
            hf_dataset=("ufldl-stanford/svhn", "cropped_digits"),
            hf_expert="svhn",
            prepare=prep.prepare_svhn,
            downloads="test_32x32.mat (and train_32x32.mat) from ufldl.stanford.edu/housenumbers",
        ),
        Task(
            "GTSRB",
            "gtsrb",
            read.read_gtsrb,
            FixedNames(),
            paper_test_size=(12630, 12630),
            hf_dataset=("tanganke/gtsrb", None),
            hf_expert="gtsrb",
            prepare=prep.prepare_gtsrb,
            downloads=(
                "GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip (optional:"
                " GTSRB_Final_Training_Images.zip)"
            ),
        ),
        Task(
            "MNIST",
            "MNIST",
            read.read_mnist,
            FixedNames(),
            paper_test_size=(10000, 10000),
            hf_dataset=("ylecun/mnist", None),
            hf_expert="mnist",
            prepare=prep.prepare_mnist,
            downloads="t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (optional: train-*)",
        ),
        Task(
            "DTD",
            "dtd",
            read.read_dtd,
            FolderNames(),
            paper_test_size=(1880, 1880),
            test_splits=("val", "test"),
            ambiguous_test_split=True,
            hf_dataset=("tanganke/dtd", None),
            hf_expert="dtd",
            prepare=prep.prepare_dtd,
            downloads="dtd-r1.0.1.tar.gz (robots.ox.ac.uk/~vgg/data/dtd/)",
        ),
    ]
}

# The paper's 8 tasks, in its column order (the published coefficient tables' order too): the
# default task list of every command.
PAPER_TASKS: tuple[str, ...] = (
    "SUN397",
    "Cars",
    "RESISC45",
    "EuroSAT",
    "SVHN",
    "GTSRB",
    "MNIST",
    "DTD",
)


TASKS.update(SUITE_TASKS)

# The suites, in coefficient-column order: the paper's 8, then TALL masks' order
# (nik-dim/tall_masks src/utils/variables_and_paths.py ALL_DATASETS; FusionBench's TALL14/TALL20
# hold the same tasks). Named by their size or FusionBench's names.
SUITES: dict[str, tuple[str, ...]] = {
    "8": PAPER_TASKS,
    "14": PAPER_TASKS + tuple(SUITE_TASKS)[:6],
    "20": PAPER_TASKS + tuple(SUITE_TASKS),
}
SUITE_NAMES: dict[str, str] = {"ta8": "8", "tall14": "14", "tall20": "20"}


def suite(text: str) -> tuple[str, ...] | None:
    """The tasks of the suite `text` names ("8", "14", "20", "TA8", "TALL14", "TALL20", any case);
    None if it names none."""
    key = text.strip().lower()
    return SUITES.get(SUITE_NAMES.get(key, key))


def canonical_task(task: str) -> str:
    """The canonical spelling of a task name ("mnist" -> "MNIST"); DatasetError if unknown."""
    lookup = {t.lower(): t for t in TASKS}
    key = str(task).strip().lower()
    if key not in lookup:
        raise DatasetError(
            f"unknown task {task!r}; known tasks: {', '.join(TASKS)}; or one suite: 8, 14, 20,"
            " TA8, TALL14, TALL20"
        )
    return lookup[key]


def task_folder(task: str, data_root: str | Path) -> Path:
    """The task's dataset folder under `data_root` (where classnames.txt / templates.txt may
    lie)."""
    return Path(data_root).expanduser() / TASKS[canonical_task(task)].folder


def paper_size_text(task: str) -> str:
    """The paper's test-set size of `task` as text: "8041", or a range "19700-20100" (KeyError if
    unknown)."""
    low, high = TASKS[task].paper_test_size or ()
    return str(low) if low == high else f"{low}-{high}"


def paper_size_mismatch(task: str, n: int) -> str | None:
    """`paper_size_text(task)` when `n` test images differ from the paper's count; None when they
    agree or it is unknown."""
    if task not in TASKS or TASKS[task].paper_test_size is None:
        return None
    low, high = TASKS[task].paper_test_size
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
        size = TASKS[self.task].paper_test_size if self.task in TASKS else None
        if self.split == "test" and size is not None:
            low, high = size
            out["paper_n_images"] = low if low == high else [low, high]
        return out
