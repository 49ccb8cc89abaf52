"""Readers for the 8 benchmark datasets, in the folder layouts the task-vectors project uses.

Each task is read straight from its files (image folders, split lists, .mat, idx, csv) into a
`Split`: class names, int64 labels and either image paths or a uint8 image array. We do not go
through the torchvision dataset classes on purpose: several of them insist on downloading or on
md5 sums of the original archives (SVHN), and the task-vectors project wraps the rest in its own
small readers whose behaviour (orders, label conventions, class names) we replicate here.

Both layouts of SPEC.md are accepted: the task-vectors one and the AdaMerging fork's (SUN397/DTD
test images in `test/` instead of `val/`, Cars' labelled test annotations inside `devkit/`).

A dataset folder may carry two override files, used by miniature benchmarks with fewer classes:
`classnames.txt` (one class name per line, replaces the class names) and `templates.txt` (one
prompt template per line with a `{c}` placeholder, replaces the task's templates).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .hf_datasets import EncodedImages, HFDatasetError, is_hf_dataset, read_hf_folder

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

# torchvision's ImageFolder extensions: the task-vectors loaders use ImageFolder, so the same files
# count.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

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

log = logging.getLogger(__name__)


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


# Bump when the preprocessing changes, so old caches are rebuilt rather than silently reused.
_CACHE_VERSION = "clip-val-uint8-v1"

_PROMPTS_FILE = Path(__file__).resolve().parent / "data" / "zeroshot_prompts.json"


class DatasetError(Exception):
    """A dataset is missing or does not have the expected layout (the message says what was expected
    and found)."""


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
    images: list[str] | np.ndarray | EncodedImages
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


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _prompts() -> dict[str, Any]:
    with open(_PROMPTS_FILE, encoding="utf-8") as f:
        return json.load(f)


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


def _found_instead(path: Path) -> str:
    """Describe the nearest existing ancestor of a missing path, so the user sees what is there."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        return "nothing on the way to it exists"
    if not parent.is_dir():
        return f"{parent} exists but is not a folder"
    try:
        entries = sorted(os.listdir(parent))
    except OSError as e:  # pragma: no cover - permissions
        return f"{parent} cannot be listed ({e})"
    if not entries:
        return f"{parent} exists but is empty"
    shown = ", ".join(entries[:12]) + (
        f", ... ({len(entries)} entries)" if len(entries) > 12 else ""
    )
    return f"{parent} holds: {shown}"


def _missing(task: str, expected: Path | list[Path], layout: str) -> DatasetError:
    paths = expected if isinstance(expected, list) else [expected]
    what = " or ".join(str(p) for p in paths)
    return DatasetError(
        f"{task}: expected {what} ({layout}); not found. Found instead: {_found_instead(paths[0])}"
    )


def _require_dir(task: str, path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise _missing(task, path, layout)
    return path


def _require_file(task: str, path: Path, layout: str) -> Path:
    if not path.is_file():
        raise _missing(task, path, layout)
    return path


def _check_files_exist(task: str, paths: list[str], listed_in: Path) -> None:
    """A split file listing images that are not on disk is an error (ImageFolder would drop them
    silently)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f", ... ({len(missing)} missing)" if len(missing) > 5 else ""
        )
        raise DatasetError(f"{task}: {listed_in} lists images that do not exist: {shown}")


def _read_lines(path: Path) -> list[str] | None:
    """Non-empty lines of an override file (None if there is no such file); blank lines inside are
    an error."""
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise DatasetError(f"{path} is empty")
    if any(not line for line in lines):
        raise DatasetError(f"{path} has blank lines between entries (one entry per line expected)")
    return lines


def _class_folders(task: str, folder: Path, layout: str) -> list[str]:
    # Same rule as ImageFolder.find_classes: the sorted names of the sub-folders.
    _require_dir(task, folder, layout)
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DatasetError(
            f"{task}: expected class folders in {folder} ({layout}); found none. Found instead:"
            f" {_found_instead(folder)}"
        )
    return classes


def _walk_images(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    # Same order as torchvision's make_dataset: sorted walk, sorted file names, recursive.
    out: list[str] = []
    for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True)):
        for fname in sorted(fnames):
            if fname.lower().endswith(extensions):
                out.append(os.path.join(dirpath, fname))
    return out


def _image_folder(
    task: str, folder: Path, layout: str, extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> tuple[list[str], np.ndarray, list[str]]:
    """An ImageFolder-style tree: (sorted class folder names, labels, image paths)."""
    classes = _class_folders(task, folder, layout)
    labels: list[int] = []
    paths: list[str] = []
    for idx, cls in enumerate(classes):
        files = _walk_images(folder / cls, extensions)
        if not files:
            raise DatasetError(
                f"{task}: class folder {folder / cls} holds no image files"
                f" ({', '.join(extensions)}); found instead: {_found_instead(folder / cls)}"
            )
        paths.extend(files)
        labels.extend([idx] * len(files))
    return classes, np.asarray(labels, dtype=np.int64), paths


def _check_same_classes(
    task: str, split_dir: Path, train_dir: Path, split_classes: list[str]
) -> None:
    """The original takes class names (and so label order) from the train folder: they must
    agree."""
    if not train_dir.is_dir():
        return
    train_classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if train_classes and train_classes != split_classes:
        only_split = sorted(set(split_classes) - set(train_classes))[:5]
        only_train = sorted(set(train_classes) - set(split_classes))[:5]
        raise DatasetError(
            f"{task}: class folders of {split_dir} ({len(split_classes)}) and {train_dir}"
            f" ({len(train_classes)}) differ (only in {split_dir.name}: {only_split}; only in"
            f" train: {only_train}); labels would not match"
        )


def _pick_test_dir(task: str, base: Path, test_dir: str | None) -> Path:
    """SUN397 / DTD: task-vectors reads the test split from `val/`, the AdaMerging fork from
    `test/`."""
    names = [test_dir] if test_dir else ["val", "test"]
    for name in names:
        if (base / name).is_dir():
            return base / name
    raise _missing(
        task,
        [base / n for n in names],
        "task-vectors layout reads the test split from val/, the AdaMerging fork from test/",
    )


# --------------------------------------------------------------------------------------------
# Per-task readers: each returns (raw class list or None, labels, images, source)
# The raw class list is what the class names derive from and fixes the class count; None means
# the classes are implicit in the labels (a fixed list of names applies).
# --------------------------------------------------------------------------------------------

_Raw = tuple[list[str] | None, np.ndarray, Any, str]


def _read_class_folders(
    task: str, base: Path, layout: str, split: str, test_dir: str | None
) -> _Raw:
    """SUN397 and DTD: class folders under train/ and val/ (task-vectors) or test/ (the fork)."""
    folder = _pick_test_dir(task, base, test_dir) if split == "test" else base / "train"
    classes, labels, paths = _image_folder(task, folder, layout)
    if split == "test":
        _check_same_classes(task, folder, base / "train", classes)
    return classes, labels, paths, str(folder)


def _read_sun397(root: Path, split: str, test_dir: str | None) -> _Raw:
    return _read_class_folders(
        "SUN397", root / "sun397", "sun397/{train,val|test}/<x>_<scene>/*.jpg", split, test_dir
    )


def _read_dtd(root: Path, split: str, test_dir: str | None) -> _Raw:
    return _read_class_folders(
        "DTD", root / "dtd", "dtd/{train,val|test}/<class>/*.jpg", split, test_dir
    )


def _read_eurosat(root: Path, split: str, test_dir: str | None) -> _Raw:
    base = root / "EuroSAT_splits"
    folder = base / (test_dir or "test") if split == "test" else base / "train"
    classes, labels, paths = _image_folder(
        "EuroSAT", folder, "EuroSAT_splits/{train,val,test}/<Class>/*.jpg"
    )
    if split == "test":
        _check_same_classes("EuroSAT", folder, base / "train", classes)
    return classes, labels, paths, str(folder)


def _load_mat(task: str, path: Path, **kwargs: Any) -> dict[str, Any]:
    import scipy.io  # local: only the .mat tasks need scipy

    try:
        return scipy.io.loadmat(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - any parse failure is a dataset problem
        raise DatasetError(f"{task}: cannot read {path} as a MATLAB file: {e}") from e


def _read_cars(root: Path, split: str, test_dir: str | None) -> _Raw:
    base = root / "stanford_cars"
    devkit = base / "devkit"
    layout = "stanford_cars/devkit/*.mat, stanford_cars/cars_{train,test}/"
    meta_path = _require_file("Cars", devkit / "cars_meta.mat", layout)
    if split == "train":
        annos_path = _require_file("Cars", devkit / "cars_train_annos.mat", layout)
        images_dir = base / "cars_train"
    else:
        # task-vectors: beside devkit/; AdaMerging fork: inside devkit/.
        candidates = [
            base / "cars_test_annos_withlabels.mat",
            devkit / "cars_test_annos_withlabels.mat",
        ]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise _missing(
                "Cars",
                candidates,
                "labelled test annotations: task-vectors layout / AdaMerging fork layout",
            )
        annos_path = found[0]
        if len(found) > 1 and found[0].read_bytes() != found[1].read_bytes():
            log.warning(
                "Cars: two different labelled test annotation files, %s and %s: using the first "
                "(task-vectors layout); remove the one you do not want",
                found[0],
                found[1],
            )
        images_dir = base / "cars_test"
    _require_dir("Cars", images_dir, layout)

    names = _load_mat("Cars", meta_path, squeeze_me=True).get("class_names")
    if names is None:
        raise DatasetError(f"Cars: {meta_path} has no 'class_names' variable")
    classes = [str(c) for c in np.atleast_1d(names).tolist()]

    annos = _load_mat("Cars", annos_path, squeeze_me=True).get("annotations")
    if (
        annos is None
        or annos.dtype.names is None
        or not {"fname", "class"} <= set(annos.dtype.names)
    ):
        fields = None if annos is None else annos.dtype.names
        raise DatasetError(
            f"Cars: {annos_path} must hold a struct array 'annotations' with fields 'fname' and"
            f" 'class'; found fields {fields} (cars_test_annos.mat has no labels: use"
            " cars_test_annos_withlabels.mat)"
        )
    annos = np.atleast_1d(annos)
    # Labels in the .mat are 1-based (the original subtracts 1); order = annotation order, as the
    # original.
    labels = np.asarray([int(a["class"]) for a in annos], dtype=np.int64) - 1
    paths = [str(images_dir / str(a["fname"])) for a in annos]
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"Cars: {annos_path} has a class id below 1 (ids are 1-based)")
    _check_files_exist("Cars", paths, annos_path)
    return classes, labels, paths, str(annos_path)


def _read_resisc45(root: Path, split: str, test_dir: str | None) -> _Raw:
    base = root / "resisc45"
    layout = "resisc45/NWPU-RESISC45/<class>/<class>_NNN.jpg + resisc45/resisc45-<split>.txt"
    list_name = (test_dir or "test") if split == "test" else split
    list_path = _require_file("RESISC45", base / f"resisc45-{list_name}.txt", layout)
    images_dir = base / "NWPU-RESISC45"
    classes = _class_folders("RESISC45", images_dir, layout)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    names = sorted(
        {
            line.strip()
            for line in list_path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        }
    )
    if not names:
        raise DatasetError(f"RESISC45: {list_path} lists no images")
    items: list[tuple[int, str]] = []
    for name in names:
        # The original filters an ImageFolder by base name; the class is the file name minus
        # `_NNN.jpg`.
        cls = name.rsplit("_", 1)[0]
        if cls not in class_to_idx:
            raise DatasetError(
                f"RESISC45: {list_path} lists {name!r}, whose class folder {images_dir / cls} does"
                " not exist"
            )
        items.append((class_to_idx[cls], name))
    items.sort()  # ImageFolder order: by class, then by file name
    paths = [str(images_dir / classes[c] / n) for c, n in items]
    _check_files_exist("RESISC45", paths, list_path)
    labels = np.asarray([c for c, _ in items], dtype=np.int64)
    return classes, labels, paths, str(list_path)


def _read_svhn(root: Path, split: str, test_dir: str | None) -> _Raw:
    path = _require_file(
        "SVHN", root / "svhn" / f"{split}_32x32.mat", "svhn/{train,test}_32x32.mat"
    )
    mat = _load_mat("SVHN", path)
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[2] != 3:
        raise DatasetError(
            f"SVHN: {path} must hold X uint8 [H, W, 3, N] and y [N, 1]; "
            f"found X {None if x is None else x.shape}, y {None if y is None else y.shape}"
        )
    images = np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)).astype(np.uint8, copy=False))
    labels = np.asarray(y, dtype=np.int64).reshape(-1).copy()
    if len(labels) != len(images):
        raise DatasetError(f"SVHN: {path} has {len(images)} images but {len(labels)} labels")
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    return None, labels, images, str(path)


def _read_gtsrb(root: Path, split: str, test_dir: str | None) -> _Raw:
    base = root / "gtsrb"
    if split == "train":
        folder = base / "GTSRB" / "Training"
        layout = "gtsrb/GTSRB/Training/000CC/*.ppm"
        classes = _class_folders("GTSRB", folder, layout)
        labels: list[int] = []
        paths: list[str] = []
        for cls in classes:
            if not cls.isdigit():
                raise DatasetError(
                    f"GTSRB: class folder {folder / cls} is not a class number ({layout})"
                )
            files = _walk_images(folder / cls, (".ppm",))
            if not files:
                raise DatasetError(f"GTSRB: class folder {folder / cls} holds no .ppm images")
            paths.extend(files)
            labels.extend([int(cls)] * len(files))  # the folder number is the class id
        return None, np.asarray(labels, dtype=np.int64), paths, str(folder)

    layout = "gtsrb/GTSRB/Final_Test/Images/*.ppm + gtsrb/GT-final_test.csv"
    images_dir = _require_dir("GTSRB", base / "GTSRB" / "Final_Test" / "Images", layout)
    csv_path = _require_file("GTSRB", base / "GT-final_test.csv", layout)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=";", skipinitialspace=True)
        if not reader.fieldnames or not {"Filename", "ClassId"} <= set(reader.fieldnames):
            raise DatasetError(
                f"GTSRB: {csv_path} must be ';'-separated with a header holding Filename and"
                f" ClassId; found header {reader.fieldnames}"
            )
        rows = [(row["Filename"].strip(), row["ClassId"]) for row in reader]
    if not rows:
        raise DatasetError(f"GTSRB: {csv_path} lists no images")
    try:
        labels_arr = np.asarray([int(c) for _, c in rows], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"GTSRB: {csv_path} has a non-integer ClassId ({e})") from e
    paths = [str(images_dir / name) for name, _ in rows]  # CSV order, as the original
    _check_files_exist("GTSRB", paths, csv_path)
    return None, labels_arr, paths, str(csv_path)


def _read_idx(task: str, path: Path, magic: int) -> np.ndarray:
    """An idx file (MNIST format): big-endian magic, dims, then uint8 data; `.gz` accepted."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        raise DatasetError(
            f"{task}: {path} is not an idx file with magic {magic} (uint8, {magic & 0xFF} dims)"
        )
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise DatasetError(
            f"{task}: {path} holds {len(data) - offset} bytes of data, header says {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _read_mnist(root: Path, split: str, test_dir: str | None) -> _Raw:
    raw = root / "MNIST" / "raw"
    prefix = "t10k" if split == "test" else "train"
    layout = "torchvision's MNIST layout"

    def find(name: str) -> Path:
        for p in (raw / name, raw / f"{name}.gz"):
            if p.is_file():
                return p
        raise _missing("MNIST", raw / name, layout)

    images_path = find(f"{prefix}-images-idx3-ubyte")
    labels_path = find(f"{prefix}-labels-idx1-ubyte")
    gray = _read_idx("MNIST", images_path, 0x803)
    labels = _read_idx("MNIST", labels_path, 0x801).astype(np.int64)
    if len(gray) != len(labels):
        raise DatasetError(
            f"MNIST: {images_path} has {len(gray)} images but {labels_path} {len(labels)} labels"
        )
    # Grayscale to 3 channels: the same pixels as torchvision's resize-in-L-then-convert-RGB
    # (bicubic resampling acts per channel).
    images = np.repeat(gray[..., None], 3, axis=-1)
    return None, labels, images, str(images_path)


_READERS: dict[str, Callable[[Path, str, str | None], _Raw]] = {
    "SUN397": _read_sun397,
    "Cars": _read_cars,
    "RESISC45": _read_resisc45,
    "EuroSAT": _read_eurosat,
    "SVHN": _read_svhn,
    "GTSRB": _read_gtsrb,
    "MNIST": _read_mnist,
    "DTD": _read_dtd,
}


def _default_classnames(task: str, raw: list[str] | None, task_dir: Path) -> list[str]:
    """Class names as the task-vectors project builds them."""
    if task == "SUN397":
        return [c[2:].replace("_", " ") for c in raw or []]  # `a_abbey` -> `abbey`
    if task in ("Cars", "DTD"):
        return [c.replace("_", " ") for c in raw or []]
    if task == "EuroSAT":
        mapping: dict[str, str] = _prompts()["classnames"]["EuroSAT_folder_to_openai"]
        unknown = [c for c in raw or [] if c not in mapping]
        if unknown:
            raise DatasetError(
                f"EuroSAT: class folders {unknown} have no known class name (known folders:"
                f" {sorted(mapping)}); name them as EuroSAT does or give"
                f" {task_dir / 'classnames.txt'}"
            )
        return [mapping[c] for c in raw or []]
    return list(_prompts()["classnames"][task])  # RESISC45, SVHN, GTSRB, MNIST: fixed lists


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def read_split(
    task: str, data_root: str | Path, split: str = "test", *, test_dir: str | None = None
) -> Split:
    """Read one split of a task from `data_root` in the task-vectors (or AdaMerging fork) layout.

    `test_dir` picks where the test split is read from, for the tasks of TEST_SPLIT_CHOICES ("val"
    or "test"). Default: SUN397 and DTD `val/` if present, else `test/`, with a warning naming the
    folder used when both exist; EuroSAT and RESISC45 "test". A test split whose image count differs
    from the paper's (PAPER_TEST_SIZES) gets a warning too, unless the folder carries a
    classnames.txt (a miniature benchmark by design). The returned Split records the choice
    (`Split.record()`). Raises DatasetError for a missing layout, an unknown task/split, or a choice
    the task does not have.
    """
    name = canonical_task(task)
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {SPLITS}")
    root = Path(data_root).expanduser()
    task_dir = root / TASK_DIRS[name]
    test_split, chosen_by = (
        _choose_test_split(name, task_dir, test_dir) if split == "test" else (None, None)
    )
    raw, labels, images, source = _READERS[name](root, split, test_split)
    if len(labels) == 0:
        raise DatasetError(f"{name}: {source} holds no images for the {split} split")

    override = _read_lines(task_dir / "classnames.txt")
    classnames = override if override is not None else _default_classnames(name, raw, task_dir)
    origin = f"{task_dir / 'classnames.txt'}" if override is not None else "the built-in class list"
    if raw is not None and len(classnames) != len(raw):
        where = {
            "Cars": task_dir / "devkit" / "cars_meta.mat",
            "RESISC45": task_dir / "NWPU-RESISC45",
        }.get(name, source)
        what = "classes" if name == "Cars" else "class folders"
        hint = (
            ""
            if override is not None
            else f"; give one name per class in {task_dir / 'classnames.txt'}"
        )
        raise DatasetError(
            f"{name}: found {len(raw)} {what} in {where} but {origin} has {len(classnames)}"
            f" names{hint}"
        )
    if labels.min() < 0 or labels.max() >= len(classnames):
        hint = (
            ""
            if override is not None
            else f"; give one name per class in {task_dir / 'classnames.txt'}"
        )
        raise DatasetError(
            f"{name}: labels in {source} range over [{labels.min()}, {labels.max()}] but {origin}"
            f" has {len(classnames)} names{hint}"
        )
    out = Split(
        task=name,
        split=split,
        classnames=classnames,
        labels=labels,
        images=images,
        source=source,
        test_split=test_split,
        chosen_by=chosen_by if test_split is not None else None,
    )
    expected = paper_size_mismatch(name, len(out)) if split == "test" and override is None else None
    if expected is not None:
        log.warning(
            "%s: read %d test images from %s; the paper's test set has %s: another copy or split of"
            " the dataset? Accuracies are not comparable to the paper's",
            name,
            len(out),
            source,
            expected,
        )
    return out


def _test_split_path(task: str, task_dir: Path, name: str) -> Path:
    return task_dir / f"resisc45-{name}.txt" if task == "RESISC45" else task_dir / name


def _choose_test_split(
    task: str, task_dir: Path, wanted: str | None
) -> tuple[str | None, str | None]:
    """(candidate to read the test split from, "--test-split" or "default"); (None, None) for
    one-source tasks."""
    choices = TEST_SPLIT_CHOICES.get(task)
    if choices is None:
        if wanted is not None:
            raise DatasetError(
                f"{task}: has a single test split; --test-split applies to"
                f" {', '.join(TEST_SPLIT_CHOICES)}"
            )
        return None, None
    if wanted is not None:
        if wanted not in choices:
            raise DatasetError(
                f"{task}: --test-split {wanted!r} is not a split of this task; expected one of"
                f" {', '.join(choices)}"
            )
        return wanted, "--test-split"
    if task not in AMBIGUOUS_TEST_SPLIT:
        return choices[0], "default"
    present = [c for c in choices if _test_split_path(task, task_dir, c).is_dir()]
    if len(present) > 1:
        log.warning(
            "%s: both %s hold a test split candidate; using %s (the task-vectors choice; the"
            " AdaMerging fork reads test/): pass --test-split %s=<%s> to choose",
            task,
            " and ".join(str(_test_split_path(task, task_dir, c)) for c in present),
            _test_split_path(task, task_dir, present[0]),
            task,
            "|".join(choices),
        )
    # Neither there: None lets the reader name every candidate in its error.
    return (present[0] if present else None), "default"


def parse_test_split(text: str | None) -> dict[str, str]:
    """The `--test-split` flag: "val" or "test" (for SUN397 and DTD, where the two codebases
    differ), and/or TASK=SPLIT items, comma-separated ("test,EuroSAT=val"). Returns {task: split}.
    Raises DatasetError for an unknown task, a task with a single test split, or an unknown split.
    """
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        task, sep, value = (part.strip() for part in item.partition("="))
        if not item.strip():
            continue
        if not sep:
            for name in AMBIGUOUS_TEST_SPLIT:
                out[name] = task
            continue
        out[canonical_task(task)] = value
    for task, value in out.items():
        _choose_test_split(task, Path(), value)  # validates, reads nothing
    return out


def task_templates(task: str, data_root: str | Path) -> list[str]:
    """The task's zero-shot prompt templates ("{c}" = class name): templates.txt override, else the
    built-in ones."""
    name = canonical_task(task)
    path = task_folder(name, data_root) / "templates.txt"
    lines = _read_lines(path)
    if lines is None:
        return list(_prompts()["templates"][name.lower()])
    bad = [t for t in lines if "{c}" not in t]
    if bad:
        raise DatasetError(
            f"{path}: every template needs a '{{c}}' placeholder; these lack it: {bad[:3]}"
        )
    return lines


# ----- Hugging Face datasets (FusionBench's copies) ----------------------------------------------

DATA_FORMATS: tuple[str, ...] = ("auto", "folders", "hf")


def _name_key(name: str) -> str:
    """How class names are compared: case, `_` versus space and repeated spaces do not matter."""
    return " ".join(str(name).replace("_", " ").split()).lower()


def head_classnames(
    task: str, task_dir: Path, dataset_names: list[str]
) -> tuple[list[str] | None, str]:
    """The class order of the task's zero-shot head, and where it comes from (for messages).

    The task-vectors heads (`head_<Task>.pt`) index classes in the order its folder readers give
    (read_split): `classnames.txt` if present; the fixed lists (RESISC45, SVHN, GTSRB, MNIST);
    EuroSAT's sorted class folders (ImageFolder) renamed as in zeroshot_prompts.json; SUN397 and DTD
    sorted class folders, i.e. sorted class names (SUN397's `x_` prefix is the scene's first
    letter); Cars the order of `devkit/cars_meta.mat`. Without that file Cars' order cannot be
    derived from names: None is returned and the dataset's ClassLabel order is kept (with a
    warning).
    """
    override = _read_lines(task_dir / "classnames.txt")
    if override is not None:
        return override, str(task_dir / "classnames.txt")
    if task in ("SUN397", "DTD"):
        return (
            sorted(" ".join(n.replace("_", " ").split()) for n in dataset_names),
            "sorted class names (ImageFolder order)",
        )
    if task == "EuroSAT":
        mapping: dict[str, str] = _prompts()["classnames"]["EuroSAT_folder_to_openai"]
        return [
            mapping[f] for f in sorted(mapping)
        ], "EuroSAT's sorted class folders (ImageFolder order)"
    if task == "Cars":
        meta = task_dir / "devkit" / "cars_meta.mat"
        if not meta.is_file():
            return None, "the dataset's ClassLabel order"
        names = _load_mat("Cars", meta, squeeze_me=True).get("class_names")
        if names is None:
            raise DatasetError(f"Cars: {meta} has no 'class_names' variable")
        return [str(c) for c in np.atleast_1d(names).tolist()], str(meta)
    return list(_prompts()["classnames"][task]), "the built-in class list"


def map_labels_to_head(
    task: str,
    dataset_names: list[str],
    labels: np.ndarray,
    head_names: list[str],
    origin: str,
    where: str,
) -> np.ndarray:
    """Labels re-indexed from the dataset's class order onto the head's (`head_names`), matched by
    name.

    Names match up to case, `_`/space and repeated spaces; EuroSAT's folder names (`AnnualCrop`)
    count as their prompt names. Class names that are the integers 0..C-1 are class ids (GTSRB's,
    MNIST's). Anything else that does not match one to one raises a one-line DatasetError naming the
    first mismatching names: evaluating with silently permuted labels is never an option.
    """
    aliases = (
        {
            _name_key(k): _name_key(v)
            for k, v in _prompts()["classnames"]["EuroSAT_folder_to_openai"].items()
        }
        if task == "EuroSAT"
        else {}
    )
    keys = [aliases.get(_name_key(n), _name_key(n)) for n in dataset_names]
    head_index = {_name_key(n): i for i, n in enumerate(head_names)}
    if len(head_index) != len(head_names) or len(set(keys)) != len(keys):
        raise DatasetError(
            f"{task}: duplicate class names in"
            f" {origin if len(head_index) != len(head_names) else where}"
        )
    if all(k in head_index for k in keys) and len(keys) == len(head_names):
        permutation = np.asarray([head_index[k] for k in keys], dtype=np.int64)
        return permutation[labels]
    if all(k.isdigit() for k in keys) and sorted(int(k) for k in keys) == list(
        range(len(head_names))
    ):
        permutation = np.asarray([int(k) for k in keys], dtype=np.int64)  # names are the class ids
        return permutation[labels]
    only_dataset = [n for n, k in zip(dataset_names, keys) if k not in head_index][:3]
    only_head = [n for n in head_names if _name_key(n) not in set(keys)][:3]
    raise DatasetError(
        f"{task}: the class names of {where} ({len(dataset_names)}) do not match the head's class"
        f" order from {origin} ({len(head_names)}): first only in the dataset: {only_dataset};"
        f" first only in the head: {only_head}; list the dataset's class names in the head's order"
        " in classnames.txt of the task folder"
    )


def read_hf_split(task: str, data_root: str | Path, split: str = "test") -> Split:
    """One split of a task from a local Hugging Face dataset copy in its task folder (e.g.
    `data/sun397/`).

    Reads either form described in hf_datasets.py; the labels are re-indexed onto the head's class
    order (head_classnames, map_labels_to_head) and the class names returned in that order.
    `Split.source` says "Hugging Face parquet ..." / "Hugging Face save_to_disk ...".
    """
    name = canonical_task(task)
    folder = task_folder(name, data_root)
    if not is_hf_dataset(folder):
        raise _missing(
            name,
            folder / "README.md",
            "a Hugging Face dataset: README.md + data/<split>-*.parquet, or a save_to_disk folder",
        )
    try:
        raw = read_hf_folder(folder, split)
    except HFDatasetError as e:
        raise DatasetError(f"{name}: {e}") from e
    if len(raw.labels) == 0:
        raise DatasetError(f"{name}: {raw.source} holds no images for the {split} split")
    # some copies name classes by their SUN path: "/a/apartment_building/outdoor"
    if name == "SUN397":
        raw.classnames = [re.sub(r"^/[a-z]/", "", n).replace("/", " ") for n in raw.classnames]
    head_names, origin = head_classnames(name, folder, raw.classnames)
    if head_names is None:
        warnings.warn(
            f"{name}: no {folder / 'devkit' / 'cars_meta.mat'} or classnames.txt to check the class"
            " order against; using the dataset's ClassLabel order (right for heads built from"
            " class names)",
            stacklevel=2,
        )
        head_names, labels = list(raw.classnames), raw.labels
    else:
        labels = map_labels_to_head(
            name, raw.classnames, raw.labels, head_names, origin, raw.source
        )
    return Split(
        task=name,
        split=split,
        classnames=list(head_names),
        labels=labels,
        images=raw.images,
        source=raw.source,
    )


def read_task_split(
    task: str,
    data_root: str | Path,
    split: str = "test",
    *,
    data_format: str = "auto",
    test_dir: str | None = None,
) -> Split:
    """A task's split in the given data format: "folders" (read_split), "hf" (read_hf_split) or
    "auto".

    "auto" reads a Hugging Face copy where the task folder holds one (README.md + parquet shards, or
    save_to_disk files), else the task-vectors folder layout.
    """
    if data_format not in DATA_FORMATS:
        raise DatasetError(f"unknown data format {data_format!r}; expected one of {DATA_FORMATS}")
    if data_format == "hf" or (
        data_format == "auto" and is_hf_dataset(task_folder(task, data_root))
    ):
        return read_hf_split(task, data_root, split)
    return read_split(task, data_root, split, test_dir=test_dir)


# ----- preprocessing --------------------------------------------------------------------------


def _load_image(item: str | np.ndarray) -> Image.Image:
    """Decode one image to RGB (the task-vectors loaders all `.convert("RGB")` on load)."""
    if isinstance(item, (str, os.PathLike)):
        with Image.open(item) as im:
            return im.convert("RGB")
    if isinstance(item, bytes):  # an encoded file from a Hugging Face dataset
        with Image.open(io.BytesIO(item)) as im:
            return im.convert("RGB")
    return Image.fromarray(np.asarray(item, dtype=np.uint8)).convert("RGB")


def _transform(img: Image.Image, size: int) -> np.ndarray:
    """CLIP's validation transform without normalisation: resize shorter side (bicubic), centre
    crop.

    Same arithmetic as torchvision's Resize(size, BICUBIC) + CenterCrop(size) on a PIL image.
    Returns uint8 [3, size, size].
    """
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _fingerprint(split: Split, size: int) -> dict[str, Any]:
    """What the cached array depends on; any change rebuilds the cache."""
    fp: dict[str, Any] = {
        "version": _CACHE_VERSION,
        "task": split.task,
        "split": split.split,
        "source": str(split.source),
        "n": len(split),
        "size": int(size),
    }
    if isinstance(split.images, np.ndarray):
        arr = np.ascontiguousarray(split.images)
        fp["shape"] = list(arr.shape)
        # cheap next to decoding (80 MB for SVHN test)
        fp["images_sha1"] = hashlib.sha1(arr.data).hexdigest()
    elif isinstance(split.images, EncodedImages):
        fp["encoded_sha1"] = split.images.sha1()  # every byte: cheap next to decoding
    else:
        files = [str(p) for p in split.images]
        fp["first"], fp["last"] = files[0], files[-1]
        fp["files_sha1"] = hashlib.sha1("\n".join(files).encode("utf-8")).hexdigest()
        # File sizes catch a dataset re-written in place under the same names.
        fp["first_last_bytes"] = [os.path.getsize(files[0]), os.path.getsize(files[-1])]
    return fp


def _fill(out: np.ndarray, split: Split, size: int, progress: bool, num_workers: int) -> None:
    """Decode + transform every image into the preallocated `out` (threads: PIL releases the
    GIL)."""
    images = split.images

    def work(i: int) -> None:
        item = images[i]
        try:
            out[i] = _transform(_load_image(item), size)
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - name the file that failed
            where = item if isinstance(item, (str, os.PathLike)) else f"image {i} of {split.source}"
            raise DatasetError(f"{split.task}: cannot decode {where}: {e}") from e

    from tqdm.auto import tqdm

    n = len(split)
    with tqdm(
        total=n, disable=not progress, desc=f"{split.task} {split.split} {size}px", unit="img"
    ) as bar:
        if num_workers <= 1:
            for i in range(n):
                work(i)
                bar.update(1)
            return
        chunk = 256  # bounded work in flight; each worker writes its own row
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                list(pool.map(work, range(start, stop)))
                bar.update(stop - start)


def _load_cache(npy: Path, meta: Path, fp: dict[str, Any]) -> torch.Tensor | None:
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != fp:
        return None
    try:
        # "c" (copy-on-write) rather than "r": torch wants a writable array, and a stray in-place
        # write then stays private instead of crashing on a read-only mapping.
        arr = np.load(npy, mmap_mode="c")
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.shape != (fp["n"], 3, fp["size"], fp["size"]):
        return None
    return torch.from_numpy(arr)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def preprocess_images(
    split: Split,
    image_size: int,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    num_workers: int | None = None,
) -> torch.Tensor:
    """All images of `split` as uint8 [N, 3, S, S] (resize shorter side bicubic, centre crop, RGB;
    no normalisation).

    With `cache_dir`, the array is kept as `<cache_dir>/<task>_<split>_<S>.npy` (+ `.json` sidecar
    with its fingerprint) and memory-mapped on later calls; it is rebuilt when the fingerprint
    differs. `num_workers`: decoding threads (default: up to 8, one per CPU).
    """
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    n = len(split)
    if n == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    if cache_dir is None:
        out = np.empty((n, 3, size, size), dtype=np.uint8)
        _fill(out, split, size, progress, workers)
        return torch.from_numpy(out)

    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{split.task}_{split.split}_{size}"
    npy, meta = cache / f"{stem}.npy", cache / f"{stem}.json"
    fp = _fingerprint(split, size)
    cached = _load_cache(npy, meta, fp)
    if cached is not None:
        return cached

    # Drop the sidecar first: if we die between replacing the .npy and writing the new sidecar,
    # no stale fingerprint can vouch for the new array.
    meta.unlink(missing_ok=True)
    tmp = cache / f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy"
    try:
        # Filled in place on disk: memory stays flat even for SVHN train at 224 px.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        _fill(out, split, size, progress, workers)
        out.flush()
        del out
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _atomic_write_text(meta, json.dumps({"n": n, "fingerprint": fp}, indent=1))
    loaded = _load_cache(npy, meta, fp)
    if loaded is None:  # pragma: no cover - only if the file vanished under us
        raise DatasetError(f"{split.task}: cache {npy} could not be read back")
    return loaded


# ----- users' own tasks -------------------------------------------------------------------------

# Generic prompts for a user task without templates.txt (the first two of CLIP's ImageNet set).
DEFAULT_USER_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.", "a photo of the {c}.")


def read_image_folder_task(name: str, folder: str | Path, split: str = "test") -> Split:
    """A user's task: an ImageFolder tree `folder/<split>/<class>/<images>` (any depth below the
    class).

    Classes are the sorted sub-folder names (label i = i-th folder, as ImageFolder); their names are
    the folder names with `_` as spaces, or the lines of `folder/classnames.txt` (one per class, in
    the same sorted-folder order). Templates: see `user_task_templates`.
    """
    # The name becomes part of cache file names and result keys: keep it a plain file-name word.
    if (
        not name
        or name.startswith(".")
        or any(ch in name for ch in "/\\=, ")
        or not name.isprintable()
    ):
        raise DatasetError(
            f"task name {name!r}: use letters, digits, '-', '_' or '.' (no '/', '=', ',' or spaces)"
        )
    folder = Path(folder).expanduser()
    layout = f"an ImageFolder tree {folder}/{split}/<class>/<images>"
    classes, labels, paths = _image_folder(name, folder / split, layout)
    override = _read_lines(folder / "classnames.txt")
    classnames = override if override is not None else [c.replace("_", " ") for c in classes]
    if len(classnames) != len(classes):
        raise DatasetError(
            f"{name}: {folder / split} has {len(classes)} class folders but"
            f" {folder / 'classnames.txt'} has {len(classnames)} names (one per class folder, in"
            f" sorted folder order: {classes[:5]}...)"
        )
    return Split(
        task=name,
        split=split,
        classnames=classnames,
        labels=labels,
        images=paths,
        source=str(folder / split),
    )


def user_task_templates(folder: str | Path) -> list[str]:
    """Prompt templates of a user task: `folder/templates.txt` (one per line, with `{c}`), else the
    defaults."""
    path = Path(folder).expanduser() / "templates.txt"
    lines = _read_lines(path)
    if lines is None:
        return list(DEFAULT_USER_TEMPLATES)
    bad = [t for t in lines if "{c}" not in t]
    if bad:
        raise DatasetError(
            f"{path}: every template needs a '{{c}}' placeholder; these lack it: {bad[:3]}"
        )
    return lines
