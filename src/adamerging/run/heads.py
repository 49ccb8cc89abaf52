"""The frozen zero-shot head of every task: the `head_<Task>.pt` files, else built from the text
tower of full CLIP weights (cached), each checked against the encoder's width and the task's
classes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from adamerging.checkpoints import hf
from adamerging.checkpoints.hashing import FileHashes, checkpoint_format
from adamerging.checkpoints.layout import Checkpoint, find_checkpoint
from adamerging.checkpoints.loading import load_checkpoint
from adamerging.datasets.tasks import TASKS, Split
from adamerging.models.clip import (
    create_clip,
    get_tokenizer,
    load_clip_weights,
)
from adamerging.models.heads import Head, head_from_checkpoint, load_head, zeroshot_weights
from adamerging.models.task_vectors_format import save_classification_head
from adamerging.run.config import RunConfig
from adamerging.runtime.errors import CheckpointError


def load_heads(
    config: RunConfig,
    model_dir: Path,
    tasks: Sequence[str],
    splits: dict[str, Split],
    templates: dict[str, list[str]],
    cache_dir: Path,
    width: int,
    hashes: FileHashes | None = None,
    files: dict | None = None,
) -> dict[str, Head]:
    """The frozen zero-shot head of every task: `head_<Task>.pt` (unless --rebuild-heads), else
    built from the text tower (cached). `width`: the image encoder's output dimension d. `files`
    gets per task the record of the head file read (`FileHashes.record`; a built head's also names
    the CLIP weights).

    Errors: FileNotFoundError when a head is missing and no CLIP weights are at hand;
    CheckpointError (naming the file, both numbers and the fix) when a head's width differs from
    `width` or its class count from the dataset's.
    """
    hashes = hashes or FileHashes(None)
    files = {} if files is None else files
    heads, missing = {}, []
    for task in tasks:
        found = None if config.rebuild_heads else head_file(model_dir, task)
        if found is None:
            missing.append(task)
            continue
        loaded = load_checkpoint(found.path)
        heads[task] = head_from_checkpoint(loaded, found.path)
        files[task] = hashes.record(found.path, fmt=checkpoint_format(found.path, loaded.kind))
        classes = len(splits[task].classnames)
        _check_head(heads[task], found.path, task, width, classes, config.model)
    if missing:
        heads.update(
            _built_heads(config, model_dir, missing, splits, templates, cache_dir, hashes, files)
        )
    return heads


def head_file(model_dir: Path, task: str) -> Checkpoint | None:
    """`task`'s head file in `model_dir`: head_<Task>.pt, or TALL masks' head_<Task>Val.pt."""
    found = find_checkpoint(model_dir, f"head_{task}", "task-vectors")
    return found or find_checkpoint(model_dir, f"head_{task}Val", "task-vectors")


def check_heads_buildable(config: RunConfig, tasks: Sequence[str]) -> None:
    """FileNotFoundError (`_clip_weights`) when some task has no head file and no CLIP weights
    are there to build one, before any checkpoint loads."""
    model_dir = Path(config.checkpoints) / config.model
    missing = [t for t in tasks if config.rebuild_heads or head_file(model_dir, t) is None]
    if missing:
        _clip_weights(config, model_dir, missing)


def _clip_weights(config: RunConfig, model_dir: Path, missing: Sequence[str]) -> Checkpoint:
    """The full CLIP weights the missing heads are built from: --clip-weights, else
    clip_pretrained.* or a Hugging Face zeroshot/ folder (a whole CLIPModel) in `model_dir`."""
    found = (
        Checkpoint(Path(config.clip_weights))
        if config.clip_weights
        else find_checkpoint(model_dir, "clip_pretrained")
        or find_checkpoint(model_dir, "zeroshot", "hf")
    )
    if found is None or not found.path.exists():
        raise FileNotFoundError(
            f"no head for {list(missing)} ({model_dir}/head_<Task>.pt, or TALL masks'"
            f" head_<Task>Val.pt) and no CLIP weights to build"
            " one from the text tower: put the task-vectors heads there, or pass"
            " --clip-weights (a full open_clip state dict)"
        )
    return found


def _built_heads(
    config: RunConfig,
    model_dir: Path,
    missing: Sequence[str],
    splits: dict[str, Split],
    templates: dict[str, list[str]],
    cache_dir: Path,
    hashes: FileHashes,
    files: dict,
) -> dict[str, Head]:
    """The heads of `missing` built from the text tower, each cached under
    `<cache>/heads/<model>/` by a key covering everything it depends on (never a stale head)."""
    weights = _clip_weights(config, model_dir, missing)
    clip = create_clip(config.model)
    full, clip_format = weights.read()
    hf.check_text_tower(full, clip.state_dict(), weights.path, list(missing))
    load_clip_weights(clip, full, str(weights.path))
    tokenizer = get_tokenizer(config.model)
    weights_file = weights.weights_file
    clip_record = hashes.record(weights.path, weights_file, clip_format)
    heads = {}
    for task in missing:
        names, prompts = splits[task].classnames, templates[task]
        stamp = [str(weights_file.resolve()), weights_file.stat().st_mtime_ns]
        key = json.dumps([config.model, *stamp, names, prompts])
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        cached = cache_dir / "heads" / config.model / f"head_{task}-{digest}.pt"
        if cached.is_file():
            heads[task] = load_head(cached)
        else:
            weight = zeroshot_weights(clip, tokenizer, names, prompts, device=config.device)
            save_classification_head(weight, cached)
            heads[task] = Head(weight)
        built = checkpoint_format(cached, "module:src.modeling.ClassificationHead")
        files[task] = {**hashes.record(cached, fmt=built), "built_from_text_tower": clip_record}
    return heads


def _check_head(head: Head, path: Path, task: str, width: int, classes: int, model: str) -> None:
    """CheckpointError when a head file does not fit the encoder's features or the task's
    classes."""
    fix = (
        "rebuild the heads from the text tower with --rebuild-heads (full CLIP weights:"
        " --clip-weights)"
    )
    if head.weight.shape[1] != width:
        raise CheckpointError(
            f"{path}: the head is {head.weight.shape[1]} wide, the {model} image encoder's features"
            f" are {width}: a head of another architecture; {fix}"
        )
    if head.num_classes != classes:
        raise CheckpointError(
            f"{path}: {task}: head has {head.num_classes} classes, the dataset has {classes}: a"
            f" head of another task or class list{_variant(task, head.num_classes)}; {fix}, or"
            " check the dataset copy and its classnames.txt"
        )


def _variant(task: str, classes: int) -> str:
    """The registry's note on another variant of `task` with `classes` classes, or ''."""
    note = dict(TASKS[task].variants).get(classes) if task in TASKS else None
    return f" ({note})" if note else ""
