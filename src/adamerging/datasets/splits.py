"""Reading one split of a task: from its task-vectors folders (`read_split`: the test-split policy,
the class names, the size check against the paper's test sets) or from a local Hugging Face copy
(`read_hf_split`: the labels mapped onto the head's class order by name), `read_task_split` choosing
between them (`--data-format`)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from adamerging.datasets.classnames import MetaNames
from adamerging.datasets.folders import missing, read_lines
from adamerging.datasets.hf_copies import HFDatasetError, is_hf_dataset, read_hf_folder
from adamerging.datasets.labels import head_classnames, map_labels_to_head
from adamerging.datasets.tasks import (
    DATA_FORMATS,
    SPLITS,
    TASKS,
    Split,
    canonical_task,
    paper_size_mismatch,
    task_folder,
)
from adamerging.runtime.errors import DatasetError

log = logging.getLogger(__name__)


def read_split(
    task: str, data_root: str | Path, split: str = "test", *, test_dir: str | None = None
) -> Split:
    """Read one split of a task from `data_root` in the task-vectors (or AdaMerging fork) layout.

    `test_dir` picks where the test split is read from, for the tasks with several candidates
    (the registry's `test_splits`: "val" or "test"). Default: SUN397 and DTD `val/` if present, else
    `test/`, with a warning naming the folder used when both exist; EuroSAT and RESISC45 "test". A
    test split whose image count differs from the paper's gets a warning too, unless the folder
    carries a classnames.txt (a miniature benchmark by design). The returned Split records the
    choice (`Split.record()`). Raises DatasetError for a missing layout, an unknown task/split, or a
    choice the task does not have.
    """
    name = canonical_task(task)
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {SPLITS}")
    root = Path(data_root).expanduser()
    task_dir = root / TASKS[name].folder
    test_split, chosen_by = (
        _choose_test_split(name, task_dir, test_dir) if split == "test" else (None, None)
    )
    raw, labels, images, source = TASKS[name].reader(root, split, test_split)
    if len(labels) == 0:
        raise DatasetError(f"{name}: {source} holds no images for the {split} split")
    if TASKS[name].labels_by_name and raw is not None:
        head, origin = head_classnames(name, task_dir, raw)
        labels = map_labels_to_head(name, raw, labels, head, origin, source, partial=True)
        raw = None
    classnames = _classnames(name, task_dir, raw, labels, source)
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
    override = (task_dir / "classnames.txt").is_file()
    expected = paper_size_mismatch(name, len(out)) if split == "test" and not override else None
    if expected is not None:
        log.warning(
            "%s: read %d test images from %s; the published test set has %s: another copy or"
            " split of the dataset? Accuracies are not comparable to the published ones",
            name,
            len(out),
            source,
            expected,
        )
    return out


def _classnames(name: str, task_dir: Path, raw, labels, source: str) -> list[str]:
    """The split's class names: classnames.txt, else the registry's strategy; DatasetError when
    their count does not fit the classes or labels read."""
    override = read_lines(task_dir / "classnames.txt")
    classnames = override if override is not None else TASKS[name].names.names(name, raw, task_dir)
    origin = f"{task_dir / 'classnames.txt'}" if override is not None else "the built-in class list"
    hint = (
        ""
        if override is not None
        else f"; give one name per class in {task_dir / 'classnames.txt'}"
    )
    if raw is not None and len(classnames) != len(raw):
        task = TASKS[name]
        where = task_dir / task.classes_at if task.classes_at else source
        what = "classes" if isinstance(task.names, MetaNames) else "class folders"
        raise DatasetError(
            f"{name}: found {len(raw)} {what} in {where} but {origin} has {len(classnames)}"
            f" names{hint}"
        )
    if labels.min() < 0 or labels.max() >= len(classnames):
        raise DatasetError(
            f"{name}: labels in {source} range over [{labels.min()}, {labels.max()}] but {origin}"
            f" has {len(classnames)} names{hint}"
        )
    return classnames


def _choose_test_split(
    task: str, task_dir: Path, wanted: str | None
) -> tuple[str | None, str | None]:
    """(candidate to read the test split from, "--test-split" or "default"); (None, None) for
    one-source tasks."""
    choices = TASKS[task].test_splits
    if not choices:
        if wanted is not None:
            several = [t.name for t in TASKS.values() if t.test_splits]
            raise DatasetError(
                f"{task}: has a single test split; --test-split applies to {', '.join(several)}"
            )
        return None, None
    if wanted is not None:
        if wanted not in choices:
            raise DatasetError(
                f"{task}: --test-split {wanted!r} is not a split of this task; expected one of"
                f" {', '.join(choices)}"
            )
        return wanted, "--test-split"
    if not TASKS[task].ambiguous_test_split:
        return choices[0], "default"
    present = [c for c in choices if (task_dir / c).is_dir()]
    if len(present) > 1:
        log.warning(
            "%s: both %s hold a test split candidate; using %s (the task-vectors choice; the"
            " AdaMerging fork reads test/): pass --test-split %s=<%s> to choose",
            task,
            " and ".join(str(task_dir / c) for c in present),
            task_dir / present[0],
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
            for t in TASKS.values():
                if t.ambiguous_test_split:
                    out[t.name] = task
            continue
        out[canonical_task(task)] = value
    for task, value in out.items():
        _choose_test_split(task, Path(), value)  # validates, reads nothing
    return out


def read_hf_split(task: str, data_root: str | Path, split: str = "test") -> Split:
    """One split of a task from a local Hugging Face dataset copy in its task folder (e.g.
    `data/sun397/`).

    Reads either form described in hf_copies.py; the labels are re-indexed onto the head's class
    order (head_classnames, map_labels_to_head) and the class names returned in that order.
    `Split.source` says "Hugging Face parquet ..." / "Hugging Face save_to_disk ...".
    """
    name = canonical_task(task)
    folder = task_folder(name, data_root)
    if not is_hf_dataset(folder):
        raise missing(
            name,
            folder / "README.md",
            "a Hugging Face dataset: README.md + data/<split>-*.parquet, or a save_to_disk folder",
        )
    try:
        raw = read_hf_folder(folder, TASKS[name].hf_test_split if split == "test" else split)
    except HFDatasetError as e:
        raise DatasetError(f"{name}: {e}") from e
    if len(raw.labels) == 0:
        raise DatasetError(f"{name}: {raw.source} holds no images for the {split} split")
    raw.classnames = TASKS[name].names.copy_names(raw.classnames)
    head_names, origin = head_classnames(name, folder, raw.classnames)
    if head_names is None:
        warnings.warn(
            f"{name}: no {origin} or classnames.txt to check the class order against; using the"
            " dataset's ClassLabel order (right for heads built from class names)",
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
