"""Class names, prompt templates and label order: the built-in class lists and templates
(`data/zeroshot_prompts.json`), the `classnames.txt` / `templates.txt` overrides, and mapping a
dataset copy's labels onto a head's class order by name."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.datasets.readers import _load_mat, _read_lines
from adamerging.datasets.tasks import canonical_task, task_folder
from adamerging.runtime.errors import DatasetError

_PROMPTS_FILE = Path(__file__).resolve().parents[1] / "data" / "zeroshot_prompts.json"


@lru_cache(maxsize=1)
def _prompts() -> dict[str, Any]:
    with open(_PROMPTS_FILE, encoding="utf-8") as f:
        return json.load(f)


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
