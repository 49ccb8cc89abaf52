"""The files of a dataset folder: ImageFolder trees (the same classes, order and extensions as
torchvision's), split lists, override files (`classnames.txt`, `templates.txt`), MATLAB files, and
the one-line errors that name what was expected and what is there instead."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.runtime.errors import DatasetError

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


def found_instead(path: Path) -> str:
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


def missing(task: str, expected: Path | list[Path], layout: str) -> DatasetError:
    """The DatasetError for `expected` (one path or alternatives) not found, naming the layout and
    what the nearest existing folder holds."""
    paths = expected if isinstance(expected, list) else [expected]
    what = " or ".join(str(p) for p in paths)
    return DatasetError(
        f"{task}: expected {what} ({layout}); not found. Found instead: {found_instead(paths[0])}"
    )


def require_dir(task: str, path: Path, layout: str) -> Path:
    """`path`, or the `missing` error when it is not a folder."""
    if not path.is_dir():
        raise missing(task, path, layout)
    return path


def require_file(task: str, path: Path, layout: str) -> Path:
    """`path`, or the `missing` error when it is not a file."""
    if not path.is_file():
        raise missing(task, path, layout)
    return path


def check_files_exist(task: str, paths: list[str], listed_in: Path) -> None:
    """A split file listing images that are not on disk is an error (ImageFolder would drop them
    silently)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f", ... ({len(missing)} missing)" if len(missing) > 5 else ""
        )
        raise DatasetError(f"{task}: {listed_in} lists images that do not exist: {shown}")


def read_lines(path: Path) -> list[str] | None:
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


def class_folders(task: str, folder: Path, layout: str) -> list[str]:
    """The class folders of an ImageFolder tree, sorted."""
    # Same rule as ImageFolder.find_classes: the sorted names of the sub-folders.
    require_dir(task, folder, layout)
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DatasetError(
            f"{task}: expected class folders in {folder} ({layout}); found none. Found instead:"
            f" {found_instead(folder)}"
        )
    return classes


def walk_images(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Every image file below `folder`, in torchvision's order."""
    # Same order as torchvision's make_dataset: sorted walk, sorted file names, recursive.
    out: list[str] = []
    for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True)):
        for fname in sorted(fnames):
            if fname.lower().endswith(extensions):
                out.append(os.path.join(dirpath, fname))
    return out


def image_folder(
    task: str, folder: Path, layout: str, extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> tuple[list[str], np.ndarray, list[str]]:
    """An ImageFolder-style tree: (sorted class folder names, labels, image paths)."""
    classes = class_folders(task, folder, layout)
    labels: list[int] = []
    paths: list[str] = []
    for idx, cls in enumerate(classes):
        files = walk_images(folder / cls, extensions)
        if not files:
            raise DatasetError(
                f"{task}: class folder {folder / cls} holds no image files"
                f" ({', '.join(extensions)}); found instead: {found_instead(folder / cls)}"
            )
        paths.extend(files)
        labels.extend([idx] * len(files))
    return classes, np.asarray(labels, dtype=np.int64), paths


def check_same_classes(
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


def load_mat(task: str, path: Path, **kwargs: Any) -> dict[str, Any]:
    """A MATLAB file's variables (scipy), or a DatasetError naming the file."""
    import scipy.io  # local: only the .mat tasks need scipy

    try:
        return scipy.io.loadmat(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - any parse failure is a dataset problem
        raise DatasetError(f"{task}: cannot read {path} as a MATLAB file: {e}") from e
