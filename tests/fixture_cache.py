"""Fixture trees built once per test session: a builder's output is kept in a session folder and
copied where the next test asks for the same one (same builder, same arguments). The builders are
seeded, so a copy is byte for byte what a fresh build would write; each test gets its own copy to
change as it likes."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

_ROOT: Path | None = None
_BUILT: dict[str, Path] = {}


def _store() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="adamerging-test-fixtures-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def cached_build(
    key: Sequence, root: Path, parts: Sequence[str], build: Callable[[Path], object]
) -> None:
    """Write `root/<part>` for each of `parts` as `build(root)` does, building only the first time
    `key` is asked for (then copying)."""
    name = json.dumps(list(key), sort_keys=True, default=str)
    root = Path(root)
    if name not in _BUILT:
        build(root)
        kept = _store() / str(len(_BUILT))
        for part in parts:
            shutil.copytree(root / part, kept / part)
        _BUILT[name] = kept
        return
    for part in parts:
        shutil.copytree(_BUILT[name] / part, root / part, dirs_exist_ok=True)
