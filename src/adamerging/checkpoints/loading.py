"""Reading and writing checkpoints without executing code from them.

The public task-vectors checkpoints are whole pickled modules (`torch.save(module)`) of classes from
`src.modeling` and open_clip 2.0.2. Unpickling them normally imports those classes and can run any
callable the file names. Here a restricted unpickler rebuilds tensors and containers only; every
other class becomes an inert stand-in (an object that just keeps its pickled attributes), and a file
that tries to *call* something outside a short allow-list is refused. Parameters and buffers are
then collected from the stand-ins into a state dict, in the module's own order.

Plain state dicts (weights-only `.pt`, `.safetensors`) load too; the writers here produce plain
state dicts and write every file atomically (the task-vectors pickles are written by
`task_vectors_format`).
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adamerging.checkpoints.unpickler import RestrictedUnpickler, StandIn, restricted_pickle
from adamerging.runtime.errors import CheckpointError
from adamerging.runtime.files import atomic_write

log = logging.getLogger(__name__)


_DDP_PREFIX = "module."


_LOOKS_SAFETENSORS = "a safetensors file"


_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` read: the tensors in the file's order, the container kind, and the
    plain top-level attributes of a pickled module (e.g. the `normalize` flag of task-vectors'
    heads)."""

    state_dict: collections.OrderedDict[str, torch.Tensor]
    kind: str  # "module:<module>.<Class>" for pickled modules, "state_dict" otherwise
    # plain top-level attributes (e.g. normalize)
    attributes: dict[str, Any] = field(default_factory=dict)


def _module_state_dict(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """nn.Module.state_dict order: own parameters, persistent buffers, then submodules."""
    state = obj.__dict__
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else value
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_state_dict(child, prefix + name + ".", out)


def _is_module_stand_in(obj: Any) -> bool:
    return isinstance(obj, StandIn) and "_modules" in obj.__dict__


def _check_tensors(sd: dict[str, Any], path: Path) -> None:
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: entry {key!r} contains NaN or inf values")


def sniff_format(path: str | Path) -> str:
    """What a file looks like from its first bytes, for error messages (never raises, runs no code).

    Tells apart torch.save's zip container (torch >= 1.6), its legacy container (magic number
    0x1950a86a20f9469cfc6c first; torch < 1.6 or `_use_new_zipfile_serialization=False`), the older
    tar container, safetensors, and the usual failed downloads: Git LFS pointers, HTML pages, empty
    files.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"an unreadable file ({e.strerror})"
    try:  # the magic number is a pickle of some 20 bytes: unpickle from the head only, bounded
        first = RestrictedUnpickler(io.BytesIO(head)).load() if head[:1] == b"\x80" else None
    except Exception:  # noqa: BLE001 - a sniffer: any parse failure just means "not that"
        first = None
    if not head:
        return "an empty file (an interrupted download?)"
    if head.startswith(b"PK\x03\x04"):
        return "torch.save's zip container (torch >= 1.6), damaged or cut short"
    if first == _LEGACY_MAGIC_NUMBER:
        return "torch.save's legacy container (torch < 1.6), damaged or cut short"
    if head[257:262] == b"ustar":
        return "a tar archive (torch's oldest legacy container, or an archive to unpack first)"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    if head.lstrip()[:1] == b"<":
        return "an HTML/XML page, not the weights (a download that saved an error or login page)"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return _LOOKS_SAFETENSORS
    if head[:1] == b"\x80":
        return "a bare pickle, not written by torch.save"
    return f"no known checkpoint format (first bytes {head[:16]!r})"


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a task-vectors pickled module, a weights-only `.pt` state dict, or a `.safetensors`
    file.

    Every container `torch.load` reads loads the same way, with no code from the file run: the zip
    container (torch >= 1.6) and the legacy one (torch < 1.6 or
    `_use_new_zipfile_serialization=False`), pickle protocols 2 to 5. An open_clip training
    checkpoint (`{"epoch", "state_dict", ...}`) is unwrapped and a DistributedDataParallel `module.`
    prefix removed (both logged as warnings).

    Returns the entries in the file's order (a pickled module: `nn.Module.state_dict` order).
    Raises CheckpointError (one line, naming the file) for a missing, unreadable (with the format it
    looked like), hostile (tries to call code), non-tensor or non-finite checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        sd, kind, attributes = _read_safetensors(path), "state_dict", {}
    else:
        sd, kind, attributes = _entries(_unpickle(path), path)
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    sd = _strip_ddp_prefix(sd, path)
    _check_tensors(sd, path)
    return LoadedCheckpoint(sd, kind, attributes)


# what torch.load raises on a file it cannot read (torch's own errors and the pickle machinery's)
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    zipfile.BadZipFile,
    ValueError,
    KeyError,
    AttributeError,
    TypeError,
    IndexError,
    tarfile.TarError,
    struct.error,
)


def _read_safetensors(path: Path) -> collections.OrderedDict[str, torch.Tensor]:
    """A .safetensors file's tensors; CheckpointError naming the format it looked like."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return collections.OrderedDict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        looks = sniff_format(path)
        seems = "" if looks == _LOOKS_SAFETENSORS else f"; it looks like {looks}"
        raise CheckpointError(f"{path}: not a readable safetensors file{seems} ({e})") from e


def _unpickle(path: Path) -> Any:
    """The object of a torch.save file, unpickled by the restricted unpickler (no code run)."""
    try:
        return torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
        )
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except _UNREADABLE as e:
        # torch's messages can span lines; keep errors one line
        detail = " ".join(str(e).split())[:300]
        looks = sniff_format(path)
        if looks == _LOOKS_SAFETENSORS:
            looks += " (give it the .safetensors suffix)"
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; it looks like {looks} ({type(e).__name__}:"
            f" {detail})"
        ) from e


def _entries(obj: Any, path: Path) -> tuple[collections.OrderedDict, str, dict]:
    """(state dict, kind, plain attributes) of an unpickled object: a module stand-in's parameters
    and buffers, or a state dict (an open_clip training checkpoint's, unwrapped)."""
    if _is_module_stand_in(obj):
        sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        _module_state_dict(obj, "", sd)
        attributes = {
            k: v for k, v in obj.__dict__.items() if isinstance(v, (bool, int, float, str))
        }
        return sd, f"module:{type(obj)._pickled_module}.{type(obj)._pickled_name}", attributes
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a module or a state dict"
        )
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        # open_clip's training checkpoint {"epoch", "name", "state_dict", "optimizer", ...}
        others = sorted(str(k) for k in obj if k != "state_dict")
        log.warning(
            "%s: a training checkpoint (also holds %s): using its 'state_dict'",
            path,
            ", ".join(others[:6]),
        )
        obj = obj["state_dict"]
    return collections.OrderedDict(obj), "state_dict", {}


def _strip_ddp_prefix(
    sd: collections.OrderedDict[str, Any], path: Path
) -> collections.OrderedDict[str, Any]:
    """Entries saved from a DistributedDataParallel wrapper are named `module.<name>`: drop the
    prefix, as open_clip's `load_state_dict` does (it checks the first key; here every key must
    carry it)."""
    if not all(isinstance(k, str) and k.startswith(_DDP_PREFIX) for k in sd):
        return sd
    log.warning(
        "%s: entries are prefixed %r (saved from DistributedDataParallel): prefix removed",
        path,
        _DDP_PREFIX,
    )
    return collections.OrderedDict((k[len(_DDP_PREFIX) :], v) for k, v in sd.items())


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """A plain state dict: `.safetensors`, or a `.pt` that loads with
    `torch.load(weights_only=True)`."""
    path = Path(path)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(sd)
        with atomic_write(path) as f:
            f.write(data)
    else:
        with atomic_write(path) as f:
            torch.save(collections.OrderedDict(sd), f)


def load_state_dict(path: str | Path) -> collections.OrderedDict[str, torch.Tensor]:
    """The tensors of any checkpoint `load_checkpoint` reads, in the file's order (attributes
    dropped). Raises CheckpointError as `load_checkpoint` does."""
    return load_checkpoint(path).state_dict
