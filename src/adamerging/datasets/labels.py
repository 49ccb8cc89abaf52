"""Class names, prompt templates and label order of a task: its `classnames.txt` / `templates.txt`
overrides, else the registry's class-name strategy (`classnames.py`) and the built-in templates
(`data/zeroshot_prompts.json`); and mapping a dataset copy's labels onto a head's class order by
name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adamerging.datasets.classnames import name_key, prompts
from adamerging.datasets.folders import read_lines
from adamerging.datasets.tasks import TASKS, canonical_task, task_folder
from adamerging.runtime.errors import DatasetError


def task_templates(task: str, data_root: str | Path) -> list[str]:
    """The task's zero-shot prompt templates ("{c}" = class name): templates.txt override, else the
    built-in ones."""
    name = canonical_task(task)
    path = task_folder(name, data_root) / "templates.txt"
    lines = read_lines(path)
    if lines is None:
        return list(prompts()["templates"][TASKS[name].templates_key])
    bad = [t for t in lines if "{c}" not in t]
    if bad:
        raise DatasetError(
            f"{path}: every template needs a '{{c}}' placeholder; these lack it: {bad[:3]}"
        )
    return lines


def head_classnames(
    task: str, task_dir: Path, dataset_names: list[str]
) -> tuple[list[str] | None, str]:
    """The class order of the task's zero-shot head, and where it comes from (for messages).

    The task-vectors heads (`head_<Task>.pt`) index classes in the order its folder readers give
    (read_split): `classnames.txt` if present, else the task's class-name strategy
    (`classnames.py`): the fixed lists (RESISC45, SVHN, GTSRB, MNIST); EuroSAT's sorted class
    folders (ImageFolder) renamed as in zeroshot_prompts.json; SUN397 and DTD sorted class folders,
    i.e. sorted class names (SUN397's `x_` prefix is the scene's first letter); Cars the order of
    `devkit/cars_meta.mat`. Without that file Cars' order cannot be derived from names: None is
    returned with the missing file, and the dataset's ClassLabel order is kept (with a warning).
    """
    override = read_lines(task_dir / "classnames.txt")
    if override is not None:
        return override, str(task_dir / "classnames.txt")
    return TASKS[task].names.head_order(task, task_dir, dataset_names)


def map_labels_to_head(
    task: str,
    dataset_names: list[str],
    labels: np.ndarray,
    head_names: list[str],
    origin: str,
    where: str,
    partial: bool = False,
) -> np.ndarray:
    """Labels re-indexed from the dataset's class order onto the head's (`head_names`), matched by
    name.

    Names match up to case, `_`/space and repeated spaces; a task's aliases count as its names
    (EuroSAT's folder names, `AnnualCrop`, as their prompt names). Class names that are the integers
    0..C-1 are class ids (GTSRB's, MNIST's). Anything else that does not match one to one raises a
    one-line DatasetError naming the first mismatching names: evaluating with silently permuted
    labels is never an option. `partial`: the dataset may hold some of the classes only (an
    ImageFolder tree, torchvision's EMNIST letters with its unused `N/A`): every class a label
    uses must match a head class, by name, alias or class id; the others are ignored.
    """
    aliases = TASKS[task].names.aliases() if task in TASKS else {}
    keys = [aliases.get(name_key(n), name_key(n)) for n in dataset_names]
    head_index = {name_key(n): i for i, n in enumerate(head_names)}
    if partial:
        return _map_partial(task, dataset_names, keys, labels, head_index, origin, where)
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
    only_head = [n for n in head_names if name_key(n) not in set(keys)][:3]
    raise DatasetError(
        f"{task}: the class names of {where} ({len(dataset_names)}) do not match the head's class"
        f" order from {origin} ({len(head_names)}): first only in the dataset: {only_dataset};"
        f" first only in the head: {only_head}; list the dataset's class names in the head's order"
        " in classnames.txt of the task folder"
    )


def _map_partial(
    task: str,
    names: list[str],
    keys: list[str],
    labels: np.ndarray,
    head_index: dict[str, int],
    origin: str,
    where: str,
) -> np.ndarray:
    """`map_labels_to_head` for a dataset holding some of the head's classes."""
    count = len(head_index)
    ids = [head_index.get(k, int(k) if k.isdigit() and int(k) < count else -1) for k in keys]
    unknown = [names[i] for i in np.unique(labels) if ids[i] < 0]
    if unknown:
        raise DatasetError(
            f"{task}: the classes {unknown[:5]} of {where} match none of the {count} classes of"
            f" {origin} (by name, alias or class id): name the class folders after those"
        )
    return np.asarray(ids, dtype=np.int64)[labels]
