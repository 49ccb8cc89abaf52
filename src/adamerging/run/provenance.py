"""Whether a run's experts belong together, checked before anything is merged, and which mini
build a run read.

Two checks on the task vectors (`merging.stats`) and the files' hashes (`checkpoints.hashing`):

- two tasks that load the same expert: the same file content, or task vectors with cosine >=
  DUPLICATE_COSINE. Distinct fine-tunings of one CLIP are near-orthogonal (the task-vectors paper,
  Ilharco et al. 2023; measured on the mini benchmark's experts: |cos| <= 0.035; random-weight test
  experts: about 0); a copy gives 1, and the same expert re-saved in fp16 or bf16 0.99998 or
  0.9988 (measured on the mini experts).
- an expert not fine-tuned from this theta_0: ||tau_t|| / ||theta_0|| above MAX_NORM_RATIO, or 0
  (the file holds theta_0 itself). Fine-tuning moves CLIP's visual weights by a few percent of
  their norm (mini experts: 0.032-0.050; random-weight test experts 0.01-0.05); a model from
  another initialisation is as far away as the weights are large (measured: a random ViT-B/32 from
  another seed 1.12, a random mini CLIP against the trained mini base 1.15).

Both stop with one line (`CheckpointError`), unless the run allows them; then they are logged as
warnings and listed in the record. Source of the task-vector definition: Ilharco et al. 2023, eq.
1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from adamerging.checkpoints.hashing import HASH
from adamerging.models.clip import VISUAL_PREFIX
from adamerging.runtime.errors import CheckpointError

log = logging.getLogger(__name__)


DUPLICATE_COSINE = 0.95  # task vectors this aligned are one expert loaded twice


MAX_NORM_RATIO = 0.5  # ||tau_t|| / ||theta_0|| beyond this is not a fine-tuning of theta_0


ALLOW_DUPLICATES, ALLOW_FOREIGN = "--allow-duplicate-experts", "--allow-foreign-experts"


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
