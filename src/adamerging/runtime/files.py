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
import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from adamerging.runtime.errors import WriteError

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


# Temporary files and folders: `.<name>.adamerging-<host>-<pid>-<random>.tmp` beside their target,
# so a later run on the same host recognises those of a process that no longer exists (killed
# mid-write) and removes them (`remove_debris`).
_DEBRIS = re.compile(r"^\..*\.adamerging-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[^/]*\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary file or folder for `name` (mkstemp / mkdtemp, with
    suffix ".tmp"): `remove_debris` knows it."""
    return f".{name}.adamerging-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_debris(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (`temp_prefix`) that processes of this host which no
    longer run left in `folder` (a write killed with SIGKILL); returns what was removed. Those of
    live processes and of other hosts (a shared file system) are kept."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            m = _DEBRIS.match(entry.name)
            if m is None or m["host"] != _host() or _alive(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
                log.info("removed %s, left by a killed run", entry.path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder (`temp_prefix`) to write `path`'s content to; renamed
    onto `path` when the block ends without an error (with the mode `open()` would give), removed
    when it raises: readers never see half a file. A killed run's temporary files in the folder are
    removed first (`remove_debris`). For writers that need a path (a memory-mapped array); others
    use `atomic_write`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_debris(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS and not isinstance(e, WriteError):
            raise write_error(path, e) from e
        raise


# a full disk or quota, a read-only file system, no permission: what writing a file meets
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_error(path: Path, error: OSError, flag: str = "") -> WriteError:
    """The one-line error for a failed write of `path`: the path, the reason and what to pass
    (`flag`, else the flags that move a run's writes)."""
    reason = error.strerror or str(error)
    fix = (
        f"pass {flag} with a folder you can write"
        if flag
        else ("free space there, or write elsewhere (--results-dir, --cache-dir, --save-merged)")
    )
    out = WriteError(f"cannot write {path} ({reason}): {fix}")
    out.errno = error.errno
    return out


def require_writable(folder: str | Path, flag: str, keep: bool = True) -> Path:
    """`folder` once a probe file could be written in it (created if needed; with `keep` False the
    folders the probe created are removed again, so a refused run leaves nothing); WriteError
    naming it and `flag` otherwise (before any long work)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temp_prefix("probe"), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise write_error(folder, e, flag) from e
    finally:
        for made in created if not keep else ():
            with contextlib.suppress(OSError):
                made.rmdir()
    return folder


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
