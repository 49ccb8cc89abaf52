"""Writing files so that readers never see half of one, and keeping memory low while holding
tensors.

`atomic_write` (a temporary file in the same folder, then a rename: the one writer every file of
the project goes through), `write_json` and `require_finite` (results and states are never written
with NaN/inf), `return_freed_memory` (glibc malloc_trim) and `file_backed` (tensors kept only to be
written later, memory-mapped from an unlinked temporary file).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def return_freed_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc `malloc_trim(0)`); True where it ran.

    Unpickling a checkpoint puts its tensors below glibc's mmap threshold (most weight matrices,
    once the threshold has adapted) on the C heap; when an expert is released after its task vector
    is taken, those pages stay in the process as free heap (measured: 0.9 GB on ViT-B/32 x 8 tasks)
    unless trimmed. No-op (False) on a C library without malloc_trim (macOS, musl).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def file_backed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors (values, dtypes, shapes) memory-mapped from an unlinked temporary file.

    For tensors kept only to be written out later (theta_0's text-side leftovers, read by
    `--save-merged` only): their pages leave the process's memory and come back from the file when
    read. Written with `torch.save`, mapped with `torch.load(mmap=True)`, the file unlinked at once
    (the mapping keeps it until the tensors are freed). Where no temporary file can be written, the
    tensors are returned as they are.
    """
    if not tensors:
        return tensors
    path = None
    try:
        with tempfile.NamedTemporaryFile(prefix="adamerging-", suffix=".pt", delete=False) as f:
            path = f.name
        torch.save(tensors, path)
        return torch.load(path, mmap=True, weights_only=True)
    except OSError as e:
        log.warning("keeping %d tensors in memory: no temporary file (%s)", len(tensors), e)
        return tensors
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder (`.<name>.<random>.tmp`) to write `path`'s content to;
    renamed onto `path` when the block ends without an error (with the mode `open()` would give),
    removed when it raises: readers never see half a file. For writers that need a path (a
    memory-mapped array); others use `atomic_write`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """An open file (`mode`) whose content replaces `path` once the block ends without an error
    (flushed and synced to disk first; `atomic_path`): readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def require_finite(data: Any, what: str) -> None:
    """ValueError naming the first NaN/inf number in `data` (nested dicts, lists, tuples, floats,
    tensors): results and states are never written with non-finite values."""

    def walk(x: Any, where: str) -> None:
        if isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
        elif (isinstance(x, float) and not math.isfinite(x)) or (
            isinstance(x, torch.Tensor)
            and x.is_floating_point()
            and not bool(torch.isfinite(x).all())
        ):
            raise ValueError(f"refusing to write {what}: {where} is NaN/inf")

    walk(data, "")


def write_json(data: dict, path: str | Path) -> None:
    """`data` as JSON (indent 1, trailing newline), written atomically (temporary file, then
    rename)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
