"""The task registry: one record per built-in task with every fact about it (its folder, reader,
class names, test-split choices, the paper's test-set size, its Hugging Face copies, how to prepare
it from the official downloads), and `Split`, one split of one task as read from disk.

A new dataset is one `Task` record here plus its reader (`readers.py`, a function of the data root,
the split and the test-split candidate); the rest is optional: a recipe for `prepare` and the
names of its Hugging Face copies. Users' own tasks need no record (`user_tasks.py`, `--task`).

A dataset folder may carry two override files, used by miniature benchmarks with fewer classes:
`classnames.txt` (one class name per line, replaces the class names) and `templates.txt` (one
prompt template per line with a `{c}` placeholder, replaces the task's templates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.datasets import preparers as prep
from adamerging.datasets import readers as read
from adamerging.datasets.classnames import (
    ClassNames,
    FixedNames,
    FolderNames,
    MappedNames,
    MetaNames,
)
from adamerging.datasets.suite_readers import SuiteReader, Torchvision
from adamerging.runtime.errors import DatasetError

SPLITS: tuple[str, ...] = ("test", "train")
DATA_FORMATS: tuple[str, ...] = ("auto", "folders", "hf")


@dataclass(frozen=True)
class Task:
    """Every fact of one built-in task.

    `test_splits`: where the reader may take the test split from, default first (folders under the
    task's folder, or RESISC45's list files); empty: one source. `ambiguous_test_split`: the two
    codebases of SPEC.md read different candidates (task-vectors val/, the AdaMerging fork test/):
    the default is the first present, with a warning when both are. `paper_test_size`: (fewest,
    most) test images of the paper's setting read without a warning. `hf_dataset`: (hub repo,
    config folder or None) of FusionBench's copy; `hf_expert`: the suffix of FusionBench's expert
    repos (`tanganke/clip-vit-base-patch32_<suffix>`). `prepare`: the recipe from the official
    downloads (`preparers.py`), `downloads`: what to download for it. `classes_at`: where the reader
    finds the class list, relative to the task folder, when not in the split it reads (messages).
    `prompts`: which prompt templates of data/zeroshot_prompts.json it uses (default: its own).
    `hf_test_split`: the split of the Hugging Face copy that serves as the test split. `variants`:
    other versions of the task a head may have been trained on, by class count (messages).
    For the suite tasks (`suite_task`) `paper_test_size` is the test-set size TALL masks and
    FusionBench report on.
    """

    name: str
    folder: str
    reader: read.Reader
    names: ClassNames
    paper_test_size: tuple[int, int] | None = None
    test_splits: tuple[str, ...] = ()
    ambiguous_test_split: bool = False
    hf_dataset: tuple[str, str | None] | None = None
    hf_expert: str | None = None
    prepare: Callable[[prep.Inputs, Path], None] | None = None
    downloads: str = ""
    classes_at: str | None = None
    prompts: str | None = None
    hf_test_split: str = "test"
    variants: tuple[tuple[int, str], ...] = ()  # (class count, what another variant is): messages

    @property
    def templates_key(self) -> str:
        """The key of the task's prompt templates in data/zeroshot_prompts.json: `prompts`, else
        its name in lower case."""
        return self.prompts or self.name.lower()


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


def suite_task(
    name: str,
    folder: str,
    tv: Torchvision,
    size: int,
    hf: tuple[str | None, str],
    prompts: str | None = None,
    aliases: tuple[tuple[str, str], ...] = (),
    hf_test_split: str = "test",
    variants: tuple[tuple[int, str], ...] = (),
) -> Task:
    """A task of the 14- and 20-task suites (TALL masks; `suite_readers.py`): fixed class names
    (with `aliases`, other spellings its copies use), read as an ImageFolder tree or by
    torchvision's class `tv`; `size` test images; `hf`: (FusionBench's dataset repo, expert
    suffix)."""
    return Task(
        name,
        folder,
        SuiteReader(name, folder, tv, aliases),
        FixedNames(aliases),
        paper_test_size=(size, size),
        hf_dataset=(hf[0], None) if hf[0] else None,
        hf_expert=hf[1],
        prompts=prompts,
        hf_test_split=hf_test_split,
        variants=variants,
        downloads=tv.how(),
    )


def _splits(key: str, test: Any, train: Any) -> dict[str, Any]:
    return {"test": ((key, test),), "train": ((key, train),)}


_TRAIN = _splits("train", False, True)
_SPLIT = _splits("split", "test", "train")
# FER2013: torchvision's label ids follow the Kaggle csv; the registry's order is FusionBench's
_FER_CSV = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")
_FER_FOLDERS = (("disgust", "disgusted"), ("fear", "fearful"), ("surprise", "surprised"))
_KMNIST_HIRAGANA = tuple(
    zip("おきすつなはまやれを", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"))
)
_FLOWERS = (
    ("globe-flower", "globe flower"),
    ("pink-yellow dahlia?", "pink and yellow dahlia"),
    ("ball moss", "air plant"),
)

SUITE_TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        suite_task(
            "STL10",
            "stl10",
            Torchvision("STL10", "stl10", "stl10/stl10_binary", **_SPLIT),
            8000,
            ("tanganke/stl10", "stl10"),
        ),
        suite_task(
            "OxfordIIITPet",
            "OxfordIIITPet",
            Torchvision(
                "OxfordIIITPet",
                "OxfordIIITPet",
                "OxfordIIITPet/oxford-iiit-pet",
                **_splits("split", "test", "trainval"),
            ),
            3669,
            ("timm/oxford-iiit-pet", "oxford-iiit-pet"),
        ),
        suite_task(
            "Flowers102",
            "flowers102",
            Torchvision("Flowers102", "flowers102", "flowers102/flowers-102", **_SPLIT, ids=True),
            6149,
            ("dpdl-benchmark/oxford_flowers102", "oxford_flowers102"),
            aliases=_FLOWERS,
        ),
        suite_task(
            "CIFAR100",
            "cifar100",
            Torchvision("CIFAR100", "", "cifar-100-python", **_TRAIN),
            10000,
            ("tanganke/cifar100", "cifar100"),
            prompts="cifar",
            aliases=(("cra", "crab"),),
        ),
        suite_task(
            "PCAM",
            "PCAM",
            Torchvision("PCAM", "PCAM", "PCAM/pcam", **_SPLIT),
            32768,
            ("1aurent/PatchCamelyon", "pcam"),
        ),
        suite_task(
            "FER2013",
            "FER2013",
            Torchvision(
                "FER2013",
                "FER2013",
                "FER2013/fer2013",
                **_SPLIT,
                label_names=_FER_CSV,
                fetch=(
                    "torchvision cannot download FER2013: put Kaggle's fer2013.csv (or"
                    " icml_face_data.csv, 'Challenges in Representation Learning: Facial Expression"
                    " Recognition') in <data>/FER2013/fer2013/, or Kaggle's image folders as"
                    " <data>/FER2013/{test,train}/<emotion>/"
                ),
            ),
            7178,
            (None, "fer2013"),  # FusionBench's copy, clip-benchmark/wds_fer2013, is a webdataset
            aliases=_FER_FOLDERS,
        ),
        suite_task(
            "CIFAR10",
            "cifar10",
            Torchvision("CIFAR10", "", "cifar-10-batches-py", **_TRAIN),
            10000,
            ("tanganke/cifar10", "cifar10"),
            prompts="cifar",
        ),
        suite_task(
            "Food101",
            "food101",
            Torchvision("Food101", "food101", "food101/food-101", **_SPLIT),
            25250,
            ("ethz/food101", "food101"),
            hf_test_split="validation",
        ),
        suite_task(
            "FashionMNIST",
            "FashionMNIST",
            Torchvision("FashionMNIST", "FashionMNIST", "FashionMNIST/FashionMNIST/raw", **_TRAIN),
            10000,
            ("zalando-datasets/fashion_mnist", "fashion_mnist"),
            aliases=(("T - shirt / top", "T-shirt/top"),),
        ),
        suite_task(
            "RenderedSST2",
            "RenderedSST2",
            Torchvision("RenderedSST2", "RenderedSST2", "RenderedSST2/rendered-sst2", **_SPLIT),
            1821,
            ("nateraw/rendered-sst2", "rendered-sst2"),
        ),
        suite_task(
            "EMNIST",
            "EMNIST",
            Torchvision(
                "EMNIST",
                "EMNIST",
                "EMNIST/EMNIST/raw",
                test=(("split", "letters"), ("train", False)),
                train=(("split", "letters"), ("train", True)),
            ),
            20800,
            ("tanganke/emnist_letters", "emnist_letters"),
            variants=(
                (
                    10,
                    "TALL masks' EMNIST is the digits split, 10 classes; this suite's is the"
                    " letters split, 26, as FusionBench's",
                ),
            ),
        ),
        suite_task(
            "KMNIST",
            "KMNIST",
            Torchvision("KMNIST", "KMNIST", "KMNIST/KMNIST/raw", **_TRAIN),
            10000,
            ("tanganke/kmnist", "kmnist"),
            aliases=_KMNIST_HIRAGANA,
        ),
    ]
}
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
