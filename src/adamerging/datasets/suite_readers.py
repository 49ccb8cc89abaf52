"""The reader of the 12 tasks the 14- and 20-task suites add (TALL masks, Wang et al., ICML 2024;
FusionBench's TALL14 / TALL20): an ImageFolder tree where the task folder holds one, else
torchvision's own dataset class on the files it downloads.

- ImageFolder: `<data>/<task folder>/{test,train}/<class>/*.png|jpg`, each class folder named after
  its class (the registry's name, an alias such as FER2013's Kaggle `disgust`, or its class id);
- torchvision: the dataset class TALL masks reads (`CIFAR100(root, train=False)`,
  `Flowers102(root/flowers102, split="test")`, ...) with `download=False`: its own checks and file
  layout, its labels mapped onto the registry's class order by name where its order differs
  (FER2013's csv order, EMNIST letters' 1..26).

Either way the reader names the classes of its labels, and `splits.read_split` matches them by
name onto the registry's class list (`data/zeroshot_prompts.json`), the zero-shot heads' order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.datasets.folders import image_folder
from adamerging.runtime.errors import DatasetError


@dataclass(frozen=True)
class Torchvision:
    """How TALL masks reads a task with torchvision: the dataset class, its root relative to the
    data root, the folder of its files, the keyword arguments of each split, and the class names
    of its label ids where they are not its `classes` (None: its `classes` where it has them,
    matched by name; `ids`: the labels are the registry's class ids as they are)."""

    dataset: str
    root: str
    files: str  # the folder its files lie in, relative to the data root (presence checks)
    test: tuple[tuple[str, Any], ...]
    train: tuple[tuple[str, Any], ...]
    label_names: tuple[str, ...] | None = None
    ids: bool = False
    fetch: str | None = None  # how to get the files, where torchvision cannot download them

    def how(self) -> str:
        """How to get the files torchvision reads (messages, the download plan)."""
        return self.fetch or (
            f"torchvision.datasets.{self.dataset}(..., download=True) once fetches them into"
            f" <data>/{self.files}; or fetch the Hugging Face copy (python -m adamerging download)"
        )


class DatasetImages(Sequence[Any]):
    """The images of a torchvision dataset, decoded one at a time (PIL images, item 0 of each
    sample), with a fingerprint over the files under its root for the preprocessing cache."""

    def __init__(self, dataset: Any, root: Path) -> None:
        self._dataset = dataset
        self._root = root

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self._dataset[i][0]

    def fingerprint(self) -> str:
        """sha1 over the dataset class and every file's path, size and modification time."""
        h = hashlib.sha1(type(self._dataset).__name__.encode())
        for dirpath, _, files in sorted(os.walk(self._root, followlinks=True)):
            for name in sorted(files):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name} {st.st_size} {st.st_mtime_ns}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class SuiteReader:
    """The `tasks.Reader` of one suite task (module docstring): `(data root, split, None) -> Raw`;
    the raw class list names the classes of the labels (the class folders, torchvision's classes
    or `label_names`), which `splits.read_split` matches to the registry's by name (the task's
    `labels_by_name`); None where the labels are the class ids already."""

    task: str
    folder: str
    torchvision: Torchvision

    def __call__(self, root: Path, split: str, test_dir: str | None) -> tuple:
        tree = root / self.folder / split
        if tree.is_dir():
            classes, labels, paths = image_folder(self.task, tree, f"{tree}/<class>/*")
            return classes, labels, paths, str(tree)
        dataset, where = self.open(root, split, tree)
        spec = self.torchvision
        names = None if spec.ids else spec.label_names or getattr(dataset, "classes", None)
        names = list(names) if names is not None else None
        return names, _labels(dataset), DatasetImages(dataset, Path(where)), where

    def open(self, root: Path, split: str, tree: Path) -> tuple[Any, str]:
        """torchvision's dataset of `split` on its files under `root` (never downloading);
        DatasetError naming both layouts and how to get the files when neither is there."""
        import inspect

        import torchvision.datasets as tv  # the package's import put its shim first

        spec = self.torchvision
        where = root / spec.root if spec.root else root
        kwargs = dict(spec.test if split == "test" else spec.train)
        cls = getattr(tv, spec.dataset)
        if "download" in inspect.signature(cls).parameters:  # FER2013 has no download
            kwargs["download"] = False
        try:
            return cls(str(where), **kwargs), str(where)
        except (RuntimeError, OSError, ImportError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(
                f"{self.task}: no ImageFolder tree {tree}/<class>/*, and torchvision's"
                f" {spec.dataset}({str(where)!r}, {_args(kwargs)}) cannot read its files:"
                f" {str(e).splitlines()[0] if str(e) else type(e).__name__}; {spec.how()}"
            ) from e


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _labels(dataset: Any) -> np.ndarray:
    """int64 labels of a torchvision dataset: its label attribute where it has one (no image is
    decoded), else item 1 of each sample."""
    for attr in ("targets", "labels", "_labels"):
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):
            return np.asarray(value, dtype=np.int64).reshape(-1)
    samples = getattr(dataset, "_samples", None)
    if samples is not None:
        return np.asarray([s[1] for s in samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)
