"""Write mini tasks in the on-disk layouts of the real datasets they stand in for (SPEC.md, "Data").

Each writer takes the data root, the class names, the templates and a dict ``{split: (images uint8
[N,32,32,3], labels int64 [N])}`` with splits "train" and "test", and writes the real dataset's
files plus ``classnames.txt`` / ``templates.txt`` in the dataset's folder (mini class names and
templates differ from the real ones). Image files are written losslessly (PNG) where the real layout
does not fix the format (class-folder datasets); GTSRB keeps its .ppm files, SVHN its .mat, MNIST
its idx files (32x32 grey, the idx header carries the size).
"""

from __future__ import annotations

import csv
import os
import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image

EUROSAT_FOLDERS = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def folder_names(task: str, classnames: Sequence[str]) -> list[str] | None:
    """Class-folder names of the folder datasets (None for the others)."""
    if task == "SUN397":
        return [f"{c[0]}_{c.replace(' ', '_')}" for c in classnames]  # e.g. b_beach, n_night_sky
    if task == "DTD":
        return [c.replace(" ", "_") for c in classnames]
    if task == "EuroSAT":
        return (
            EUROSAT_FOLDERS
            if len(classnames) == len(EUROSAT_FOLDERS)
            else [c.replace(" ", "_") for c in classnames]
        )
    return None


def on_disk_order(
    task: str, classnames: Sequence[str], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Reorder classes as the readers number them: ImageFolder labels follow the SORTED class-folder
    names, so classnames.txt, the heads and the experts must use that order too.
    Returns (classnames, splits) relabelled; identity for the non-folder datasets."""
    folders = folder_names(task, classnames)
    if folders is None:
        return list(classnames), splits
    # new label j = old label order[j]
    order = sorted(range(len(folders)), key=lambda i: folders[i])
    inv = np.empty(len(order), dtype=np.int64)
    inv[order] = np.arange(len(order))
    new_splits = {k: (x, inv[y]) for k, (x, y) in splits.items()}
    return [classnames[i] for i in order], new_splits


def _write_meta(folder, classnames, templates):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "classnames.txt"), "w") as f:
        f.write("".join(c + "\n" for c in classnames))
    with open(os.path.join(folder, "templates.txt"), "w") as f:
        f.write("".join(t + "\n" for t in templates))


def _save_png(path, img):
    Image.fromarray(img).save(path, format="PNG", optimize=False)


def _class_folders(root, split_dir, folder_names, images, labels, stem="img"):
    for name in folder_names:
        os.makedirs(os.path.join(root, split_dir, name), exist_ok=True)
    counters = np.zeros(len(folder_names), dtype=np.int64)
    for img, y in zip(images, labels):
        _save_png(
            os.path.join(root, split_dir, folder_names[y], f"{stem}_{counters[y]:05d}.png"), img
        )
        counters[y] += 1


def write_mnist(
    root: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """MNIST as torchvision's raw layout:
    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (idx format, the first channel of
    RGB images, size in the header). Needs splits "train" and "test" (KeyError otherwise)."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        images, labels = splits[split]
        grey = images[..., 0] if images.ndim == 4 else images
        n, h, w = grey.shape
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, h, w))
            f.write(np.ascontiguousarray(grey, dtype=np.uint8).tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 2049, n))
            f.write(np.asarray(labels, dtype=np.uint8).tobytes())
    _write_meta(os.path.join(root, "MNIST"), classnames, templates)


def write_svhn(
    root: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """SVHN as the official format 2 files: <root>/svhn/{train,test}_32x32.mat with X uint8 [32, 32,
    3, N] and y uint8 [N, 1], digit 0 stored as label 10. Needs splits "train" and "test"."""
    from scipy.io import savemat

    folder = os.path.join(root, "svhn")
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "test"):
        images, labels = splits[split]
        X = np.ascontiguousarray(np.transpose(images, (1, 2, 3, 0)), dtype=np.uint8)  # [32,32,3,N]
        # label 10 means digit 0
        y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
        savemat(os.path.join(folder, f"{split}_32x32.mat"), {"X": X, "y": y}, do_compression=False)
    _write_meta(folder, classnames, templates)


def write_gtsrb(
    root: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """GTSRB as the official archives: <root>/gtsrb/GTSRB/Training/<class:05d>/00000_<i:05d>.ppm
    with a GT-<class:05d>.csv in every class folder, and GTSRB/Final_Test/Images/<i:05d>.ppm
    labelled by <root>/gtsrb/GT-final_test.csv (";"-separated). Needs splits "train" and "test"."""
    base = os.path.join(root, "gtsrb")
    images, labels = splits["train"]
    counters = {}
    for img, y in zip(images, labels):
        d = os.path.join(base, "GTSRB", "Training", f"{int(y):05d}")
        if y not in counters:
            os.makedirs(d, exist_ok=True)
            counters[y] = 0
        Image.fromarray(img).save(os.path.join(d, f"00000_{counters[y]:05d}.ppm"), format="PPM")
        counters[y] += 1
    # every class folder exists, with its GT csv as in the real archive
    for y in range(len(classnames)):
        d = os.path.join(base, "GTSRB", "Training", f"{y:05d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"GT-{y:05d}.csv"), "w", newline="") as f:
            w = csv.writer(f, delimiter=";")
            w.writerow(
                ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
            )
            for i in range(counters.get(y, 0)):
                w.writerow([f"00000_{i:05d}.ppm", 32, 32, 0, 0, 31, 31, y])
    images, labels = splits["test"]
    d = os.path.join(base, "GTSRB", "Final_Test", "Images")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(base, "GT-final_test.csv"), "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(
            ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
        )
        for i, (img, y) in enumerate(zip(images, labels)):
            Image.fromarray(img).save(os.path.join(d, f"{i:05d}.ppm"), format="PPM")
            w.writerow([f"{i:05d}.ppm", 32, 32, 0, 0, 31, 31, int(y)])
    _write_meta(base, classnames, templates)


def _class_folder_writer(task: str, dirname: str, test_dir: str):
    """Writer of a class-folder dataset under root/<dirname>/{train,<test_dir>}/ (+ val/ if
    given)."""

    def write(root, classnames, templates, splits):
        base = os.path.join(root, dirname)
        folders = folder_names(task, classnames)
        _class_folders(base, "train", folders, *splits["train"])
        _class_folders(base, test_dir, folders, *splits["test"])
        if "val" in splits and test_dir != "val":
            _class_folders(base, "val", folders, *splits["val"])
        _write_meta(base, classnames, templates)

    return write


write_eurosat = _class_folder_writer("EuroSAT", "EuroSAT_splits", "test")
# task-vectors reads DTD's test split from val/
write_dtd = _class_folder_writer("DTD", "dtd", "val")
write_sun397 = _class_folder_writer("SUN397", "sun397", "val")  # likewise SUN397's


WRITERS = {
    "SUN397": write_sun397,
    "EuroSAT": write_eurosat,
    "SVHN": write_svhn,
    "GTSRB": write_gtsrb,
    "MNIST": write_mnist,
    "DTD": write_dtd,
}
