"""Results files: where a method's JSON goes, the package versions recorded with it, and the
individual experts' accuracies a run is normalized by."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def package_versions() -> dict[str, Any]:
    """Versions of this package, python, torch, open_clip and numpy, and in a git checkout the
    commit and whether the tree had changes: recorded with every result."""
    import numpy
    import open_clip

    import adamerging

    return {
        "adamerging": adamerging.__version__,
        **git_source(Path(adamerging.__file__).parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": numpy.__version__,
    }


@functools.cache
def git_source(folder: Path) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the git checkout `folder` is in; {} outside one (an installed
    package) or without git. Dirty: a tracked file outside results/ differs from the commit (the
    results a run writes do not count)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
        )
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(
            git("status", "--porcelain", "--untracked-files=no", ":(top)", ":(top,exclude)results")
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty}


def saved_individual(folder: str | Path, test_data: Mapping[str, Any]) -> dict[str, float] | None:
    """The individual experts' accuracies of <folder>/individual.json (folder: results/<model>) for
    the tasks of `test_data` (a run's `test_data` record) that it measured on the same test data;
    None when there is none."""
    path = Path(folder) / "individual.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    recorded = saved.get("test_data") or {}
    same = {
        t: saved["accuracy"][t]
        for t, record in test_data.items()
        if t in saved["accuracy"] and recorded.get(t) == record
    }
    return same or None


def results_path(folder: Path, method: str, overwrite: bool) -> Path:
    """<folder>/<method>.json; an existing result is kept and the new one written beside it unless
    `overwrite`."""
    path = Path(folder) / f"{method}.json"
    if path.exists() and not overwrite:
        path = path.with_name(f"{method}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return path
