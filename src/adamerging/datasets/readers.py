"""Readers for the 8 benchmark datasets, in the folder layouts the task-vectors project uses.

Each task is read straight from its files (image folders, split lists, .mat, idx, csv): class
names, int64 labels and either image paths or a uint8 image array. We do not go through the
torchvision dataset classes on purpose: several of them insist on downloading or on md5 sums of
the original archives (SVHN), and the task-vectors project wraps the rest in its own small readers
whose behaviour (orders, label conventions, class names) we replicate here.

A reader is `(data root, split, test split candidate or None) -> Raw`: (the raw class list the
class names derive from, or None where the classes are implicit in the labels; labels int64 [N];
the images: file paths or uint8 [N, H, W, 3]; the source read, for the record). The task registry
(`tasks.TASKS`) names each task's reader.

Both layouts of SPEC.md are accepted: the task-vectors one and the AdaMerging fork's (SUN397/DTD
test images in `test/` instead of `val/`, Cars' labelled test annotations inside `devkit/`).
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.datasets.folders import (
    check_files_exist,
    check_same_classes,
    class_folders,
    image_folder,
    load_mat,
    missing,
    require_dir,
    require_file,
    walk_images,
)
from adamerging.runtime.errors import DatasetError

log = logging.getLogger(__name__)


def pick_test_dir(task: str, base: Path, test_dir: str | None) -> Path:
    """SUN397 / DTD: task-vectors reads the test split from `val/`, the AdaMerging fork from
    `test/`."""
    names = [test_dir] if test_dir else ["val", "test"]
    for name in names:
        if (base / name).is_dir():
            return base / name
    raise missing(
        task,
        [base / n for n in names],
        "task-vectors layout reads the test split from val/, the AdaMerging fork from test/",
    )


Raw = tuple[list[str] | None, np.ndarray, Any, str]
Reader = Callable[[Path, str, str | None], Raw]


def read_class_folders(task: str, base: Path, layout: str, split: str, test_dir: str | None) -> Raw:
    """SUN397 and DTD: class folders under train/ and val/ (task-vectors) or test/ (the fork)."""
    folder = pick_test_dir(task, base, test_dir) if split == "test" else base / "train"
    classes, labels, paths = image_folder(task, folder, layout)
    if split == "test":
        check_same_classes(task, folder, base / "train", classes)
    return classes, labels, paths, str(folder)


def read_sun397(root: Path, split: str, test_dir: str | None) -> Raw:
    return read_class_folders(
        "SUN397", root / "sun397", "sun397/{train,val|test}/<x>_<scene>/*.jpg", split, test_dir
    )


def read_dtd(root: Path, split: str, test_dir: str | None) -> Raw:
    return read_class_folders(
        "DTD", root / "dtd", "dtd/{train,val|test}/<class>/*.jpg", split, test_dir
    )


def read_eurosat(root: Path, split: str, test_dir: str | None) -> Raw:
    base = root / "EuroSAT_splits"
    folder = base / (test_dir or "test") if split == "test" else base / "train"
    classes, labels, paths = image_folder(
        "EuroSAT", folder, "EuroSAT_splits/{train,val,test}/<Class>/*.jpg"
    )
    if split == "test":
        check_same_classes("EuroSAT", folder, base / "train", classes)
    return classes, labels, paths, str(folder)


def read_cars(root: Path, split: str, test_dir: str | None) -> Raw:
    base = root / "stanford_cars"
    devkit = base / "devkit"
    layout = "stanford_cars/devkit/*.mat, stanford_cars/cars_{train,test}/"
    meta_path = require_file("Cars", devkit / "cars_meta.mat", layout)
    if split == "train":
        annos_path = require_file("Cars", devkit / "cars_train_annos.mat", layout)
        images_dir = base / "cars_train"
    else:
        # task-vectors: beside devkit/; AdaMerging fork: inside devkit/.
        candidates = [
            base / "cars_test_annos_withlabels.mat",
            devkit / "cars_test_annos_withlabels.mat",
        ]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise missing(
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
    require_dir("Cars", images_dir, layout)

    names = load_mat("Cars", meta_path, squeeze_me=True).get("class_names")
    if names is None:
        raise DatasetError(f"Cars: {meta_path} has no 'class_names' variable")
    classes = [str(c) for c in np.atleast_1d(names).tolist()]

    annos = load_mat("Cars", annos_path, squeeze_me=True).get("annotations")
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
    check_files_exist("Cars", paths, annos_path)
    return classes, labels, paths, str(annos_path)


def read_resisc45(root: Path, split: str, test_dir: str | None) -> Raw:
    base = root / "resisc45"
    layout = "resisc45/NWPU-RESISC45/<class>/<class>_NNN.jpg + resisc45/resisc45-<split>.txt"
    list_name = (test_dir or "test") if split == "test" else split
    list_path = require_file("RESISC45", base / f"resisc45-{list_name}.txt", layout)
    images_dir = base / "NWPU-RESISC45"
    classes = class_folders("RESISC45", images_dir, layout)
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
    check_files_exist("RESISC45", paths, list_path)
    labels = np.asarray([c for c, _ in items], dtype=np.int64)
    return classes, labels, paths, str(list_path)


def read_svhn(root: Path, split: str, test_dir: str | None) -> Raw:
    path = require_file("SVHN", root / "svhn" / f"{split}_32x32.mat", "svhn/{train,test}_32x32.mat")
    mat = load_mat("SVHN", path)
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


def read_gtsrb(root: Path, split: str, test_dir: str | None) -> Raw:
    base = root / "gtsrb"
    if split == "train":
        folder = base / "GTSRB" / "Training"
        layout = "gtsrb/GTSRB/Training/000CC/*.ppm"
        classes = class_folders("GTSRB", folder, layout)
        labels: list[int] = []
        paths: list[str] = []
        for cls in classes:
            if not cls.isdigit():
                raise DatasetError(
                    f"GTSRB: class folder {folder / cls} is not a class number ({layout})"
                )
            files = walk_images(folder / cls, (".ppm",))
            if not files:
                raise DatasetError(f"GTSRB: class folder {folder / cls} holds no .ppm images")
            paths.extend(files)
            labels.extend([int(cls)] * len(files))  # the folder number is the class id
        return None, np.asarray(labels, dtype=np.int64), paths, str(folder)

    layout = "gtsrb/GTSRB/Final_Test/Images/*.ppm + gtsrb/GT-final_test.csv"
    images_dir = require_dir("GTSRB", base / "GTSRB" / "Final_Test" / "Images", layout)
    csv_path = require_file("GTSRB", base / "GT-final_test.csv", layout)
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
    check_files_exist("GTSRB", paths, csv_path)
    return None, labels_arr, paths, str(csv_path)


def read_idx(task: str, path: Path, magic: int) -> np.ndarray:
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


def read_mnist(root: Path, split: str, test_dir: str | None) -> Raw:
    raw = root / "MNIST" / "raw"
    prefix = "t10k" if split == "test" else "train"
    layout = "torchvision's MNIST layout"

    def find(name: str) -> Path:
        for p in (raw / name, raw / f"{name}.gz"):
            if p.is_file():
                return p
        raise missing("MNIST", raw / name, layout)

    images_path = find(f"{prefix}-images-idx3-ubyte")
    labels_path = find(f"{prefix}-labels-idx1-ubyte")
    gray = read_idx("MNIST", images_path, 0x803)
    labels = read_idx("MNIST", labels_path, 0x801).astype(np.int64)
    if len(gray) != len(labels):
        raise DatasetError(
            f"MNIST: {images_path} has {len(gray)} images but {labels_path} {len(labels)} labels"
        )
    # Grayscale to 3 channels: the same pixels as torchvision's resize-in-L-then-convert-RGB
    # (bicubic resampling acts per channel).
    images = np.repeat(gray[..., None], 3, axis=-1)
    return None, labels, images, str(images_path)
