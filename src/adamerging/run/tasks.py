"""The tasks of a run: the task list (`--tasks`, tasks.txt, the paper's 8), users' own tasks
(`--task NAME=DIR`), reading a task's split, and the run's cache folder."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from adamerging.datasets.splits import read_task_split
from adamerging.datasets.suite_readers import SuiteReader
from adamerging.datasets.tasks import PAPER_TASKS, TASKS, Split, suite, task_folder
from adamerging.datasets.user_tasks import read_image_folder_task
from adamerging.run.config import RunConfig
from adamerging.runtime.errors import DatasetError, WriteError
from adamerging.runtime.files import require_writable

log = logging.getLogger(__name__)


def _named(values: Sequence[str], flag: str) -> dict[str, str]:
    """NAME=VALUE pairs of a repeatable flag."""
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def cache_dir(config: RunConfig) -> Path:
    """The cache folder (preprocessed images, built heads, file hashes): --cache-dir (WriteError if
    it cannot be written), else <data root>/.cache, else, where that cannot be written (a read-only
    data folder), the user's cache ($XDG_CACHE_HOME or ~/.cache)/adamerging/<data root's digest>
    with a warning; WriteError naming both and --cache-dir when neither can be written."""
    if config.cache_dir:
        return require_writable(config.cache_dir, "--cache-dir")
    return _default_cache(config.data_root.resolve())


@functools.cache
def _default_cache(data_root: Path) -> Path:
    default = data_root / ".cache"
    try:
        return require_writable(default, "--cache-dir")
    except WriteError as first:
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        digest = hashlib.sha1(str(data_root).encode()).hexdigest()[:10]
        fallback = base / "adamerging" / f"{data_root.name}-{digest}"
        try:
            require_writable(fallback, "--cache-dir")
        except WriteError as second:
            raise WriteError(f"{first}; and {second}") from None
        log.warning("%s; caching in %s instead", first, fallback)
        return fallback


def default_tasks(model_dir: Path) -> list[str]:
    """The tasks listed in `model_dir/tasks.txt` (one a line), else the 8 paper tasks."""
    listing = model_dir / "tasks.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return list(PAPER_TASKS)


def parse_tasks(text: str | None, model_dir: Path) -> list[str]:
    """'mnist,SVHN' -> ['MNIST', 'SVHN'] (built-in task names matched case-insensitively); a suite
    ('8', '14', '20', 'TALL20'; `tasks.SUITES`) -> its tasks; empty: `default_tasks`."""
    if not text:
        return default_tasks(model_dir)
    if suite(text) is not None:
        return list(suite(text))
    canonical = {t.lower(): t for t in TASKS}
    tasks = [canonical.get(t.strip().lower(), t.strip()) for t in text.split(",") if t.strip()]
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:  # a repeated task would merge its task vector twice
        raise ValueError(
            f"--tasks lists {', '.join(repeated)} more than once; each task may appear once"
        )
    return tasks


def read_task(config: RunConfig, task: str, split: str, test_dir: str | None = None) -> Split:
    """One split of a task: the user's ImageFolder tree (--task NAME=DIR), else the dataset under
    the data root."""
    user_tasks = _named(config.task, "--task")
    if task in user_tasks:
        return read_image_folder_task(task, user_tasks[task], split)
    return read_task_split(
        task, config.data_root, split, data_format=config.data_format, test_dir=test_dir
    )


def check_named_experts(config: RunConfig, tasks: Sequence[str]) -> None:
    """ValueError naming every --finetuned / --task NAME that is not one of the run's `tasks` (an
    expert for a task outside the suite would otherwise be ignored without a word)."""
    named = {**_named(config.task, "--task"), **_named(config.finetuned, "--finetuned")}
    outside = [name for name in named if name not in tasks]
    if outside:
        raise ValueError(
            f"--finetuned / --task name {', '.join(outside)}, which the run does not merge or"
            f" evaluate (tasks: {', '.join(tasks)}): add them to --tasks or drop them"
        )


def check_data_present(config: RunConfig, tasks: Sequence[str]) -> None:
    """One DatasetError naming every built-in task of `tasks` whose data is absent (neither its
    task folder nor the folder torchvision reads holds anything), before any model loads."""
    user_tasks = _named(config.task, "--task")
    root = Path(config.data_root).expanduser()
    gaps = []
    for task in tasks:
        if task in user_tasks or task not in TASKS:
            continue
        places = [task_folder(task, root)]
        if isinstance(TASKS[task].reader, SuiteReader):
            places.append(root / TASKS[task].reader.torchvision.files)
        if not any(p.is_dir() and any(p.iterdir()) for p in places):  # an empty folder is none
            gaps.append(f"{task} ({' or '.join(str(p) for p in places)})")
    if gaps:
        raise DatasetError(
            f"no data for {len(gaps)} of {len(tasks)} tasks: {'; '.join(gaps)}; fetch them"
            " (python -m adamerging download --source hf --tasks ...; FER2013 from Kaggle: see"
            " docs/data.md) or point --data-location at them"
        )
