"""Reading one split of a task: the test-split policy (which candidate folder, chosen how), the
size check against the paper's test sets, and the choice between the task-vectors folders and a
local Hugging Face copy."""

from __future__ import annotations

import logging
from pathlib import Path

from adamerging.datasets.hf_copies import (
    is_hf_dataset,
    read_hf_split,
)
from adamerging.datasets.labels import _default_classnames
from adamerging.datasets.readers import _READERS, _read_lines
from adamerging.datasets.tasks import (
    AMBIGUOUS_TEST_SPLIT,
    DATA_FORMATS,
    SPLITS,
    TASK_DIRS,
    TEST_SPLIT_CHOICES,
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
