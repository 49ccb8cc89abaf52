"""The tasks of a run: the task list (`--tasks`, tasks.txt, the paper's 8), users' own tasks
(`--task NAME=DIR`), reading a task's split, and the run's cache folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adamerging.datasets.splits import read_task_split
from adamerging.datasets.tasks import PAPER_TASKS, TASKS, Split
from adamerging.datasets.user_tasks import read_image_folder_task
from adamerging.run.config import RunConfig


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
    """The cache folder (preprocessed images, built heads, file hashes): --cache-dir, else <data
    root>/.cache."""
    return Path(config.cache_dir) if config.cache_dir else config.data_root / ".cache"


def default_tasks(model_dir: Path) -> list[str]:
    """The tasks listed in `model_dir/tasks.txt` (one a line), else the 8 paper tasks."""
    listing = model_dir / "tasks.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return list(PAPER_TASKS)


def parse_tasks(text: str | None, model_dir: Path) -> list[str]:
    """'mnist,SVHN' -> ['MNIST', 'SVHN'] (paper task names matched case-insensitively); empty:
    `default_tasks`."""
    if not text:
        return default_tasks(model_dir)
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
