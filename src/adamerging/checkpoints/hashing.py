"""Which files made a run: each checkpoint's path, size, format and sha256.

`FileHashes` hashes whole files (the same as `sha256sum FILE`), cached by resolved path, size and
modification time in `<cache>/file_hashes.json` so reruns read no file twice, and can hash in a
background thread while the experts load. `checkpoint_format` names a file's format for the record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path

from adamerging.runtime.files import atomic_write

log = logging.getLogger(__name__)


HASH = "sha256"


HASH_NOTE = (
    "sha256 of the whole file (a Hugging Face folder: of its weights file); the same as `sha256sum"
    " FILE`"
)


CACHE_FILE = "file_hashes.json"


def checkpoint_format(path: str | Path, kind: str) -> str:
    """A file's format for the record: `kind` is `loading.LoadedCheckpoint.kind`, or "hf" for a
    folder."""
    if kind == "hf":
        return "Hugging Face folder"
    if kind.startswith("module:"):
        return f"torch.save pickled module {kind[len('module:') :]}"
    return (
        "safetensors state dict" if Path(path).suffix == ".safetensors" else "torch.save state dict"
    )


class FileHashes:
    """sha256 of whole files, cached in a JSON file (`<cache>/file_hashes.json`) by resolved path,
    size and modification time: a rerun stats its checkpoints instead of reading gigabytes again.
    Where the cache cannot be read or written, files are hashed every time (nothing fails).
    `prefetch` hashes in a background thread (hashlib releases the GIL), overlapping the hashing
    with the loading."""

    def __init__(self, cache_file: str | Path | None):
        self.cache_file = Path(cache_file) if cache_file else None
        self.entries: dict[str, dict] = {}
        self.changed = False
        self.seconds = 0.0  # spent reading and hashing files (not in the cache)
        self._pending: dict[str, Future] = {}
        if self.cache_file is not None and self.cache_file.is_file():
            try:
                self.entries = dict(json.loads(self.cache_file.read_text()))
            except (OSError, ValueError, TypeError):
                self.entries = {}

    def prefetch(self, paths: Iterable[str | Path]) -> None:
        """Start hashing `paths` in order in a background thread; `digest` then waits for its
        result. The thread is a daemon: a process that stops early (a refused run) does not wait for
        it."""
        jobs = []
        for path in paths:
            key = str(Path(path).resolve())
            if key not in self._pending:
                self._pending[key] = Future()
                jobs.append((key, self._pending[key]))

        def work() -> None:
            for key, future in jobs:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(self._digest(Path(key)))
                    except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                        future.set_exception(e)

        threading.Thread(target=work, name="hash-checkpoints", daemon=True).start()

    def cancel(self) -> None:
        """Drop the prefetched hashes not started yet (a refused run does not wait for them)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def digest(self, path: str | Path) -> str:
        """The hex sha256 of the file at `path` (from the cache when its size and mtime are
        unchanged)."""
        pending = self._pending.pop(str(Path(path).resolve()), None)
        return (
            pending.result()
            if pending is not None and not pending.cancelled()
            else self._digest(Path(path).resolve())
        )

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
        cached = self.entries.get(key)
        if (
            isinstance(cached, dict)
            and cached.get("stamp") == stamp
            and isinstance(cached.get(HASH), str)
        ):
            return cached[HASH]
        started = time.perf_counter()
        with open(path, "rb") as f:
            value = hashlib.file_digest(f, HASH).hexdigest()
        self.seconds += time.perf_counter() - started
        self.entries[key] = {"stamp": stamp, HASH: value}
        self.changed = True
        return value

    def record(self, path: str | Path, content: str | Path | None = None, fmt: str = "") -> dict:
        """{"path", "size" (bytes), "format", "sha256"} of a checkpoint; `content`: the file holding
        its weights when `path` is a folder (a Hugging Face folder's model.safetensors)."""
        content = Path(content or path)
        return {
            "path": str(path),
            "size": content.stat().st_size,
            "format": fmt,
            HASH: self.digest(content),
        }

    def save(self) -> None:
        """Write the cache back (atomically) if a file was hashed; an unwritable cache folder is
        skipped."""
        if self.cache_file is None or not self.changed:
            return
        try:
            with atomic_write(self.cache_file, "w") as f:
                json.dump(self.entries, f, indent=0, sort_keys=True)
            self.changed = False
        except OSError as e:
            log.debug("file hashes not cached in %s: %s", self.cache_file, e)


def cache_file(cache_dir: str | Path) -> Path:
    """Where `FileHashes` keeps its cache in a run's cache folder."""
    return Path(cache_dir) / CACHE_FILE
