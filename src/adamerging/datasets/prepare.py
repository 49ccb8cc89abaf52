"""`python -m adamerging prepare TASK|all --downloads DIR --data-location DIR`: official downloads
-> reader layouts (each task's recipe: `preparers.py`, named in the task registry).

Put what each dataset's official source gives you (archives as downloaded, or the folders they
extract to) in one `--downloads` folder; this builds the task-vectors layout of SPEC.md ("Data")
under `--data-location` with the standard splits, checks it with the same readers the methods use
(splits.read_split) and prints each task's test-image count next to the paper's.

Atomic: each task is built inside `<data-location>/.prepare-<task>-*` and renamed into place only
once it reads back; a failure or Ctrl-C removes the temp folder, so no half-written task folder is
ever left.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from adamerging.datasets.preparers import Inputs, PrepareError
from adamerging.datasets.splits import read_split
from adamerging.datasets.tasks import (
    PAPER_TASKS,
    TASKS,
    canonical_task,
    paper_size_mismatch,
    paper_size_text,
    task_folder,
)
from adamerging.runtime.cli import command_name
from adamerging.runtime.errors import DatasetError
from adamerging.runtime.files import remove_debris, temp_prefix


@contextlib.contextmanager
def _temp_root(data_location: Path, task: str) -> Iterator[Path]:
    """A temp folder beside the final one (same file system: the final rename is atomic), always
    removed."""
    data_location.mkdir(parents=True, exist_ok=True)
    remove_debris(data_location)
    tmp = Path(
        tempfile.mkdtemp(prefix=temp_prefix(f"prepare-{task}"), suffix=".tmp", dir=data_location)
    )
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_task(
    task: str, downloads: str | Path, data_location: str | Path, *, overwrite: bool = False
) -> int:
    """Build one task's folder under `data_location` from `downloads`; returns its test-image count.

    The folder is assembled in a temp folder, read back with splits.read_split (so the methods
    will read it) and only then renamed into place. An existing task folder is kept unless
    `overwrite`. A count other than the paper's (the registry's paper_test_size; SUN397's
    partition 1 has 50 x 397 = 19850) gives a warning naming the task. Raises PrepareError
    (missing / malformed downloads) or errors.DatasetError (layout does not read back).
    """
    name = canonical_task(task)
    downloads, data_location = Path(downloads).expanduser(), Path(data_location).expanduser()
    if not downloads.is_dir():
        raise PrepareError(f"--downloads {downloads} is not a folder")
    final = task_folder(name, data_location)
    if final.exists() and not overwrite:
        raise PrepareError(f"{name}: {final} already exists; remove it or pass --overwrite")
    with _temp_root(data_location, name) as tmp:
        built = task_folder(name, tmp / "out")
        built.mkdir(parents=True)
        record = TASKS[name]
        if record.prepare is None:
            raise PrepareError(f"{name}: no recipe to prepare it from official downloads")
        record.prepare(Inputs(name, downloads, tmp / "staging", record.downloads), built)
        n = len(read_split(name, tmp / "out", "test"))
        if final.exists():  # --overwrite: swap, then drop the old copy (put back if the swap fails)
            os.replace(final, tmp / "old")
            try:
                os.replace(built, final)
            except BaseException:
                os.replace(tmp / "old", final)
                raise
        else:
            os.replace(built, final)
    expected = paper_size_mismatch(name, n)
    if expected is not None:
        warnings.warn(
            f"{name}: {n} test images, the paper used {expected}; check the downloads", stacklevel=2
        )
    return n


def main(argv: list[str] | None = None) -> int:
    """CLI entry: prepare each named task; prints one line per task, errors to stderr; exit 1 if any
    failed."""
    p = argparse.ArgumentParser(
        prog=command_name("adamerging prepare"),
        description=(
            "Turn the official dataset downloads into the folder layouts the readers expect"
            " (standard splits)."
        ),
    )
    p.add_argument(
        "tasks", help=f"a task ({', '.join(PAPER_TASKS)}), a comma-separated list, or 'all'"
    )
    p.add_argument(
        "--downloads",
        required=True,
        help="folder holding the downloaded archives / extracted folders",
    )
    p.add_argument(
        "--data-location", default="data", help="root of the prepared datasets (default: data)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing task folder")
    args = p.parse_args(argv)
    tasks = (
        list(PAPER_TASKS)
        if args.tasks.strip().lower() == "all"
        else [t for t in args.tasks.split(",") if t.strip()]
    )
    failed = 0
    for task in tasks:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                n = prepare_task(task, args.downloads, args.data_location, overwrite=args.overwrite)
            name = canonical_task(task)
            note = "".join(f"  WARNING: {w.message}" for w in caught)
            print(
                f"{name:9s} {n:6d} test images (paper: {paper_size_text(name)}) ->"
                f" {task_folder(name, args.data_location)}{note}"
            )
        except (PrepareError, DatasetError) as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
