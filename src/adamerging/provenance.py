"""Which files made a run, and whether its experts belong together: content hashes, task-vector
norms, cosines.

Every result records, per checkpoint file, its path, size, format and sha256 (`FileHashes`, cached
by path, size and mtime so reruns read no file twice), and per task ||tau_t|| / ||theta_0|| and the
pairwise cosines of the task vectors over the visual tower (`task_vector_stats`, the one place these
are computed). Two checks on them run before anything is merged (`check_experts`):

- two tasks that load the same expert: the same file content, or task vectors with cosine >=
  DUPLICATE_COSINE. Distinct fine-tunings of one CLIP are near-orthogonal (the task-vectors paper,
  Ilharco et al. 2023; measured on the mini benchmark's experts: |cos| <= 0.035; random-weight test
  experts: about 0); a copy gives 1, and the same expert re-saved in fp16 or bf16 0.99998 or 0.9988
  (measured on the mini experts).
- an expert not fine-tuned from this theta_0: ||tau_t|| / ||theta_0|| above MAX_NORM_RATIO, or 0
  (the file holds theta_0 itself). Fine-tuning moves CLIP's visual weights by a few percent of their
  norm (mini experts: 0.032-0.050; random-weight test experts 0.01-0.05); a model from another
  initialisation is as far away as the weights are large (measured: a random ViT-B/32 from another
  seed 1.12, a random mini CLIP against the trained mini base 1.15).

Both stop with one line (`CheckpointError`), unless the run allows them; then they are logged as
warnings and listed in the record. Source of the task-vector definition: Ilharco et al. 2023, eq. 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

import torch

from .checkpoints import CheckpointError, atomic_write
from .merging import TaskVectors, is_zero_view
from .models import VISUAL_PREFIX

log = logging.getLogger(__name__)

DUPLICATE_COSINE = 0.95  # task vectors this aligned are one expert loaded twice
MAX_NORM_RATIO = 0.5  # ||tau_t|| / ||theta_0|| beyond this is not a fine-tuning of theta_0
# entries per block of the Gram matrix products (fastest of 4k-256k on one CPU thread)
GRAM_BLOCK = 32768
HASH = "sha256"
HASH_NOTE = (
    "sha256 of the whole file (a Hugging Face folder: of its weights file); the same as `sha256sum"
    " FILE`"
)
CACHE_FILE = "file_hashes.json"
ALLOW_DUPLICATES, ALLOW_FOREIGN = "--allow-duplicate-experts", "--allow-foreign-experts"


def checkpoint_format(path: str | Path, kind: str) -> str:
    """A file's format for the record: `kind` is `checkpoints.LoadedCheckpoint.kind`, or "hf" for a
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


def task_vector_stats(
    theta0: Mapping[str, torch.Tensor],
    tau: TaskVectors,
    entries: Sequence[str],
    tasks: Sequence[str],
) -> dict:
    """||tau_t|| / ||theta_0|| and pairwise cosines over the visual entries (the only ones the
    forward merges).

    One pass over the stacked task vectors: the Gram matrix tau tau^T [T, T] from [T, c] x [c, T]
    products over column blocks of GRAM_BLOCK entries (fp32 products summed in fp64: one [T, n] x
    [n, T] product per entry would sum millions of fp32 terms, measured 2.4e-4 relative error on a
    ViT-B/32 block and twice the time); `merging.zero_task_vectors` views (entries no expert
    changed) add nothing and are not read, but theta_0's norm covers every visual entry. A zero task
    vector has cosine 0. Returns {"theta0_norm", "tau_norm": {task}, "norm_ratio": {task}, "cosine":
    [T][T], "mean_pairwise_cosine"}. Errors: ValueError when no visual entry has a task vector.
    """
    visual = [k for k in entries if k.startswith(VISUAL_PREFIX) and k in tau]
    if not visual:
        raise ValueError("no visual entries with a task vector")
    T = len(tasks)
    gram = torch.zeros(T, T, dtype=torch.float64)
    base = 0.0
    for k in visual:  # entry by entry, block by block: never one flattened copy of the whole model
        for block in theta0[k].reshape(1, -1).float().split(GRAM_BLOCK, dim=1):
            base += float(block @ block.T)
        if not is_zero_view(tau[k]):
            for block in tau[k].reshape(T, -1).float().split(GRAM_BLOCK, dim=1):
                # tau may live on the device (MergedEncoder holds it there)
                gram += (block @ block.T).double().cpu()
    norms = gram.diag().clamp_min(0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
    off = cosine[~torch.eye(T, dtype=torch.bool)]
    theta0_norm = math.sqrt(base)
    return {
        "theta0_norm": theta0_norm,
        "tau_norm": {t: float(norms[i]) for i, t in enumerate(tasks)},
        "norm_ratio": {t: float(norms[i]) / theta0_norm for i, t in enumerate(tasks)},
        "cosine": cosine.tolist(),
        "mean_pairwise_cosine": float(off.mean()) if len(off) else None,
    }


def _stop_or_warn(message: str, allowed: bool, flag: str, accepted: list[str]) -> None:
    if not allowed:
        raise CheckpointError(f"{message}; or pass {flag} if this is intended")
    log.warning("%s (accepted: %s)", message, flag)
    accepted.append(message)


def check_same_file(
    task: str, record: dict, earlier: Mapping[str, dict], allowed: bool, accepted: list[str]
) -> None:
    """CheckpointError (or, when `allowed`, a warning appended to `accepted`) when `task`'s expert
    file has the content of an earlier task's (`earlier`: task -> `FileHashes.record`): checked
    before it is loaded."""
    for other, seen in earlier.items():
        if seen[HASH] == record[HASH]:
            _stop_or_warn(
                f"{other} and {task} load the same expert: {seen['path']} and {record['path']} have"
                f" the same content ({HASH} {record[HASH][:12]}): point each task at its own"
                " fine-tuned checkpoint",
                allowed,
                ALLOW_DUPLICATES,
                accepted,
            )
            return


def check_experts(
    stats: dict,
    tasks: Sequence[str],
    files: Mapping[str, dict],
    zeroshot: str,
    allow_duplicates: bool = False,
    allow_foreign: bool = False,
) -> list[str]:
    """Refuse experts that do not belong to this run, before anything is merged.

    `stats`: `task_vector_stats` of the plain task vectors; `files`: task -> its expert's record;
    `zeroshot`: theta_0's path (for the message). Raises CheckpointError (one line naming the
    task(s), the number and the fix) for an implausible ||tau_t|| / ||theta_0|| (0, or above
    MAX_NORM_RATIO) and for two tasks whose task vectors have cosine >= DUPLICATE_COSINE; with the
    matching allow flag, logs a warning instead. Returns the accepted warnings.
    """
    accepted: list[str] = []
    for task in tasks:
        ratio, path = stats["norm_ratio"][task], files[task]["path"]
        if ratio == 0.0:
            _stop_or_warn(
                f"{task}: the task vector is zero: {path} holds the pretrained weights"
                f" ({zeroshot}), not a fine-tuned expert: check the zeroshot and finetuned files",
                allow_foreign,
                ALLOW_FOREIGN,
                accepted,
            )
        elif ratio > MAX_NORM_RATIO:
            _stop_or_warn(
                f"{task}: ||tau|| / ||theta_0|| = {ratio:.3g} over the visual tower, where a"
                f" fine-tuning moves the weights by a few percent (limit {MAX_NORM_RATIO:g}):"
                f" {path} was not fine-tuned from {zeroshot} (another base model, or the wrong"
                " zeroshot file)",
                allow_foreign,
                ALLOW_FOREIGN,
                accepted,
            )
    for i, a in enumerate(tasks):
        for j in range(i + 1, len(tasks)):
            cos = stats["cosine"][i][j]
            if cos >= DUPLICATE_COSINE:
                b = tasks[j]
                _stop_or_warn(
                    f"{a} and {b} load the same expert: their task vectors have cosine {cos:.4f}"
                    f" (distinct fine-tunings are near-orthogonal; limit {DUPLICATE_COSINE:g}):"
                    f" check {files[a]['path']} and {files[b]['path']}",
                    allow_duplicates,
                    ALLOW_DUPLICATES,
                    accepted,
                )
    return accepted


def task_vector_record(stats: dict, tasks: Sequence[str]) -> dict:
    """The results JSON's "task_vectors" block: the norm ratios and cosines (rounded to 1e-6) with
    what they cover."""
    return {
        "over": (
            f"visual entries ({VISUAL_PREFIX}*) of the plain task vectors tau_t = theta_t - theta_0"
        ),
        "tasks": list(tasks),
        "theta0_norm": round(stats["theta0_norm"], 6),
        "norm_ratio": {t: round(stats["norm_ratio"][t], 6) for t in tasks},
        "cosine": [[round(c, 6) for c in row] for row in stats["cosine"]],
        "limits": {"max_norm_ratio": MAX_NORM_RATIO, "duplicate_cosine": DUPLICATE_COSINE},
    }


QUICK_BUILD_NOTE = (
    "made on a quick mini build (`adamerging-mini-build --quick`: tiny sizes, for tests), "
    "not the mini benchmark's numbers; build without --quick for those"
)


def mini_build(model_dir: str | Path) -> dict | None:
    """Which mini benchmark build a run read, from <model_dir>/build_report.json (written by the
    mini build): {"quick", "config_hash", "build_version", "base"}; None where there is no such
    report (real checkpoints). A quick build is logged as a warning: its numbers are not the
    benchmark's."""
    path = Path(model_dir) / "build_report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: unreadable mini build report ({e}); rebuild with adamerging-mini-build"
            " --force"
        ) from None
    record = {k: report.get(k) for k in ("quick", "config_hash", "build_version", "base")}
    if record["quick"]:
        log.warning("%s: %s", model_dir, QUICK_BUILD_NOTE)
    return record


def cache_file(cache_dir: str | Path) -> Path:
    """Where `FileHashes` keeps its cache in a run's cache folder."""
    return Path(cache_dir) / CACHE_FILE
