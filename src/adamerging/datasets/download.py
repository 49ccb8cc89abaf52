"""`python -m adamerging download --source hf --model ViT-B-32 [--tasks ...]`: everything from the
Hugging Face hub.

Fetches, with `huggingface_hub.snapshot_download` (resumable, with progress bars):
- the pretrained CLIP `openai/clip-vit-<arch>` -> `<checkpoints>/hf/<model>/zeroshot/`,
- FusionBench's experts `tanganke/clip-vit-<arch>_<task>` ->
  `<checkpoints>/hf/<model>/<Task>/finetuned/`,
- the test split of each task's dataset (the task registry's `hf_dataset`) -> `<data-location>/<task
  folder>/`, and its train split, which only Fisher merging and RegMean read (`--splits test` skips
  it),
i.e. the layouts `--checkpoint-format hf` and `--data-format hf` read, then prints the command that
reproduces the main table. Model repo names: FusionBench's model pools
(github.com/tanganke/fusion_bench,
`config/modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TA8.yaml`).

Each repo is downloaded into a hidden `.<name>.download` folder beside its target (kept between
runs: that is what makes an interrupted download resume) and renamed into place once complete, so a
target folder is either absent or whole. Only `config.json` + safetensors weights of the models and
the dataset card + the chosen splits' parquet shards of the datasets are fetched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from adamerging.datasets.tasks import (
    SPLITS,
    TASKS,
    canonical_task,
    paper_size_text,
    suite,
    task_folder,
)
from adamerging.runtime.cli import command_name

# open_clip architecture -> the Hugging Face CLIP name part.
HF_ARCH: dict[str, str] = {
    "ViT-B-32": "clip-vit-base-patch32",
    "ViT-B-16": "clip-vit-base-patch16",
    "ViT-L-14": "clip-vit-large-patch14",
}


_MODEL_FILES = ("config.json", "*.safetensors")

# (vision tower, whole CLIP) parameter counts: the plan's sizes (float32 safetensors, 4 bytes each)
_PARAMETERS: dict[str, tuple[int, int]] = {
    "ViT-B-32": (87_849_216, 151_277_313),
    "ViT-B-16": (86_192_640, 149_620_737),
    "ViT-L-14": (303_966_208, 427_616_513),
}


class DownloadError(Exception):
    """The hub could not be reached or a repo could not be fetched (the message names the repo)."""


@dataclass(frozen=True)
class Fetch:
    """One hub repo to fetch into one folder."""

    repo_id: str
    repo_type: str  # "model" or "dataset"
    target: Path
    allow_patterns: tuple[str, ...]
    size: str = ""  # what the plan prints: "~351 MB" (a model), "8000 test images" (a dataset)
    nbytes: int = 0  # a model's float32 weights (the plan's total)


def plan(
    model: str,
    tasks: list[str],
    checkpoints: str | Path,
    data_location: str | Path,
    splits: tuple[str, ...] = SPLITS,
) -> list[Fetch]:
    """Which repos go to which folders: the pretrained CLIP, one expert per task, one dataset per
    task (`splits` of it)."""
    if model not in HF_ARCH:
        raise DownloadError(
            f"--model {model!r}: the hub has FusionBench experts for {', '.join(HF_ARCH)}"
        )
    ckpt = Path(checkpoints) / "hf" / model
    vision, whole = (4 * n for n in _PARAMETERS[model])
    fetches = [
        Fetch(f"openai/{HF_ARCH[model]}", "model", ckpt / "zeroshot", _MODEL_FILES, *_mb(whole))
    ]
    for task in tasks:
        repo = f"tanganke/{HF_ARCH[model]}_{TASKS[task].hf_expert}"
        fetches.append(Fetch(repo, "model", ckpt / task / "finetuned", _MODEL_FILES, *_mb(vision)))
    for task in tasks:
        if TASKS[task].hf_dataset is None:
            continue
        repo, config = TASKS[task].hf_dataset
        names = [TASKS[task].hf_test_split if split == "test" else split for split in splits]
        shards = tuple(f"{config}/{n}-*.parquet" if config else f"*{n}-*.parquet" for n in names)
        target = task_folder(task, data_location)
        size = f"test split: {paper_size_text(task)} images" + (
            "; and the train split" if "train" in splits else ""
        )
        fetches.append(Fetch(repo, "dataset", target, ("README.md", *shards), size))
    return fetches


def _mb(nbytes: int) -> tuple[str, int]:
    """(the plan's size text, the bytes) of a model's weights."""
    return f"~{nbytes / 1e6:,.0f} MB", nbytes


def no_copy(tasks: list[str]) -> list[str]:
    """The tasks whose data the hub has no parquet copy of (read from torchvision's files or an
    ImageFolder tree instead)."""
    return [t for t in tasks if TASKS[t].hf_dataset is None]


def _staging(target: Path) -> Path:
    return target.parent / f".{target.name}.download"


def fetch(item: Fetch) -> None:
    """Download one repo (resuming a previous attempt) and move it into place; DownloadError if it
    fails."""
    from huggingface_hub import snapshot_download  # only this command needs the hub client
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    staging = _staging(item.target)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            item.repo_id,
            repo_type=item.repo_type,
            local_dir=staging,
            allow_patterns=list(item.allow_patterns),
        )
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise DownloadError(
            f"{item.repo_type} {item.repo_id}: not found or gated on the hub ({type(e).__name__});"
            " check the name / log in"
        ) from e
    # connection, DNS, timeouts, offline mode: one message for all
    except Exception as e:  # noqa: BLE001
        what = f"{item.repo_type} {item.repo_id}: {type(e).__name__}: {e}".splitlines()[0]
        raise DownloadError(f"no network / hub unreachable: {what}") from e
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # the hub client's resume bookkeeping
    if not any(staging.rglob("*.safetensors" if item.repo_type == "model" else "*.parquet")):
        raise DownloadError(
            f"{item.repo_type} {item.repo_id}: nothing matching {list(item.allow_patterns)} was"
            f" downloaded into {staging}"
        )
    os.replace(staging, item.target)


def main_table_command(
    model: str, checkpoints: str | Path, data_location: str | Path, tasks: str | None = None
) -> str:
    """The command that reproduces the main table on what was downloaded (`tasks`: --tasks)."""
    return (
        f"python -m adamerging experiments main-table --model {model} --checkpoints"
        f" {Path(checkpoints) / 'hf'} --data-location {data_location}"
        + (f" --tasks {tasks}" if tasks else "")
    )


def print_plan(fetches: list[Fetch], tasks: list[str]) -> None:
    """Every repo -> folder with its size (models) or test-set size (datasets), what is already
    there, and the tasks the hub has no dataset copy of."""
    for item in fetches:
        state = "have" if item.target.exists() else "plan"
        print(f"{state}     {item.repo_type} {item.repo_id} -> {item.target}  ({item.size})")
    todo = [f for f in fetches if f.repo_type == "model" and not f.target.exists()]
    total = sum(f.nbytes for f in todo)
    print(f"{len(tasks)} tasks; models to fetch: {len(todo)}, ~{total / 1e9:.1f} GB")
    for task in no_copy(tasks):
        print(
            f"no copy  {task}: the hub has no parquet copy (FusionBench reads a webdataset);"
            f" {TASKS[task].downloads}"
        )


def _parser() -> argparse.ArgumentParser:
    """The command line of `adamerging download`."""
    p = argparse.ArgumentParser(
        prog=command_name("adamerging download"),
        description=(
            "Fetch the pretrained CLIP, FusionBench's experts and the tasks' datasets from the"
            " Hugging Face hub (the plan first: --dry-run)."
        ),
    )
    p.add_argument(
        "--source", required=True, choices=["hf"], help="where from: the Hugging Face hub"
    )
    p.add_argument("--model", default="ViT-B-32", choices=list(HF_ARCH), help="CLIP architecture")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks, or a suite: 8, 14, 20 (TA8, TALL14, TALL20; default: 8)",
    )
    p.add_argument(
        "--checkpoints", default="checkpoints", help="models go to <checkpoints>/hf/<model>/"
    )
    p.add_argument(
        "--data-location", default="data", help="datasets go to <data-location>/<task folder>/"
    )
    p.add_argument(
        "--splits",
        default=",".join(SPLITS),
        help=(
            "comma-separated dataset splits to fetch: test (every method), "
            "train (Fisher merging and RegMean only)"
        ),
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (repo -> folder) and fetch nothing"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: fetch what the plan lists (or print it with --dry-run); exit 1 on a failed fetch,
    2 on bad flags."""
    args = _parser().parse_args(argv)
    try:
        tasks = list(suite(args.tasks or "8") or [])
        tasks = tasks or [canonical_task(t) for t in args.tasks.split(",") if t.strip()]
        splits = tuple(x.strip() for x in args.splits.split(",") if x.strip())
        if not splits or set(splits) - set(SPLITS):
            raise ValueError(f"--splits {args.splits!r}: expected some of {', '.join(SPLITS)}")
        fetches = plan(args.model, tasks, args.checkpoints, args.data_location, splits)
    except Exception as e:  # noqa: BLE001 - unknown task / model: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_plan(fetches, tasks)
    for item in [] if args.dry_run else fetches:
        if item.target.exists():
            continue
        print(f"fetch    {item.repo_type} {item.repo_id}")
        try:
            fetch(item)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(
        "Reproduce the main table with:\n  "
        + main_table_command(args.model, args.checkpoints, args.data_location, args.tasks)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
