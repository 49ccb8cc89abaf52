"""How a task's class names come about, one strategy per kind of dataset, for the task registry:
the names the task-vectors readers give (and so the class order of its `head_<Task>.pt` heads), the
order a head expects when a dataset copy lists its classes in another one, and the aliases a copy
may use for them.

- `FolderNames`: the class folders (ImageFolder), minus a prefix, `_` read as a space (SUN397, DTD);
- `MappedNames`: the class folders renamed by a table of `data/zeroshot_prompts.json` (EuroSAT);
- `MetaNames`: a list in the dataset's own metadata file, in its order (Cars' cars_meta.mat);
- `FixedNames`: the built-in list of `data/zeroshot_prompts.json` (RESISC45, SVHN, GTSRB, MNIST).

A strategy has `names(task, raw, task_dir)` (the class names of the raw class list a reader gave),
`head_order(task, task_dir, dataset_names)` ((the head's class order or None, where it comes from)),
`aliases()` ({name key: the head's name key}) and `copy_names(names)` (a copy's own spelling
normalised).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.datasets.folders import load_mat
from adamerging.runtime.errors import DatasetError

_PROMPTS_FILE = Path(__file__).resolve().parents[1] / "data" / "zeroshot_prompts.json"


@lru_cache(maxsize=1)
def prompts() -> dict[str, Any]:
    """The vendored `data/zeroshot_prompts.json`: "classnames" and "templates" per task."""
    with open(_PROMPTS_FILE, encoding="utf-8") as f:
        return json.load(f)


def name_key(name: str) -> str:
    """How class names are compared: case, `_` versus space and repeated spaces do not matter."""
    return " ".join(str(name).replace("_", " ").split()).lower()


@dataclass(frozen=True)
class FolderNames:
    """Class folders named after their class: the folder name minus `strip` leading characters,
    `_` as a space; the heads' order is the sorted names (ImageFolder's). `copy_prefix`: a pattern a
    dataset copy's names may start with, removed (SUN397's "/a/abbey" paths)."""

    strip: int = 0
    copy_prefix: str | None = None

    def names(self, task: str, raw: list[str] | None, task_dir: Path) -> list[str]:
        return [c[self.strip :].replace("_", " ") for c in raw or []]

    def head_order(self, task: str, task_dir: Path, dataset_names: list[str]) -> tuple[list, str]:
        sorted_names = sorted(" ".join(n.replace("_", " ").split()) for n in dataset_names)
        return sorted_names, "sorted class names (ImageFolder order)"

    def aliases(self) -> dict[str, str]:
        return {}

    def copy_names(self, names: list[str]) -> list[str]:
        if self.copy_prefix is None:
            return list(names)
        return [re.sub(self.copy_prefix, "", n).replace("/", " ") for n in names]


@dataclass(frozen=True)
class MappedNames:
    """Class folders renamed by the table `table` of zeroshot_prompts.json's "classnames" (folder ->
    prompt name); the heads' order is the sorted folders'. A copy may use either name."""

    table: str

    def mapping(self) -> dict[str, str]:
        return prompts()["classnames"][self.table]

    def names(self, task: str, raw: list[str] | None, task_dir: Path) -> list[str]:
        mapping = self.mapping()
        unknown = [c for c in raw or [] if c not in mapping]
        if unknown:
            raise DatasetError(
                f"{task}: class folders {unknown} have no known class name (known folders:"
                f" {sorted(mapping)}); name them as {task} does or give"
                f" {task_dir / 'classnames.txt'}"
            )
        return [mapping[c] for c in raw or []]

    def head_order(self, task: str, task_dir: Path, dataset_names: list[str]) -> tuple[list, str]:
        mapping = self.mapping()
        return [
            mapping[f] for f in sorted(mapping)
        ], f"{task}'s sorted class folders (ImageFolder order)"

    def aliases(self) -> dict[str, str]:
        return {name_key(k): name_key(v) for k, v in self.mapping().items()}

    def copy_names(self, names: list[str]) -> list[str]:
        return list(names)


@dataclass(frozen=True)
class MetaNames:
    """Class names listed in the dataset's metadata file `file` (relative to the task folder),
    variable `variable`, in its order (the reader gives them as the raw class list); `_` as a
    space. Without that file a copy's class order cannot be checked by name: head_order gives
    None."""

    file: str
    variable: str

    def names(self, task: str, raw: list[str] | None, task_dir: Path) -> list[str]:
        return [c.replace("_", " ") for c in raw or []]

    def head_order(
        self, task: str, task_dir: Path, dataset_names: list[str]
    ) -> tuple[list | None, str]:
        meta = task_dir / self.file
        if not meta.is_file():
            return None, str(meta)
        names = load_mat(task, meta, squeeze_me=True).get(self.variable)
        if names is None:
            raise DatasetError(f"{task}: {meta} has no {self.variable!r} variable")
        return [str(c) for c in np.atleast_1d(names).tolist()], str(meta)

    def aliases(self) -> dict[str, str]:
        return {}

    def copy_names(self, names: list[str]) -> list[str]:
        return list(names)


@dataclass(frozen=True)
class FixedNames:
    """The built-in list of zeroshot_prompts.json's "classnames" for the task, in class-id order
    (the classes are implicit in the labels). `copy_aliases`: (another spelling a copy may use, the
    built-in name) pairs, e.g. FusionBench's KMNIST hiragana for torchvision's romaji."""

    copy_aliases: tuple[tuple[str, str], ...] = ()

    def names(self, task: str, raw: list[str] | None, task_dir: Path) -> list[str]:
        return list(prompts()["classnames"][task])

    def head_order(self, task: str, task_dir: Path, dataset_names: list[str]) -> tuple[list, str]:
        return list(prompts()["classnames"][task]), "the built-in class list"

    def aliases(self) -> dict[str, str]:
        return {name_key(a): name_key(b) for a, b in self.copy_aliases}

    def copy_names(self, names: list[str]) -> list[str]:
        return list(names)


ClassNames = FolderNames | MappedNames | MetaNames | FixedNames
