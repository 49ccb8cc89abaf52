"""The checkpoints side of a run: theta_0 and the experts' task vectors, found, read and checked.

`load_task_vectors(config, vectors)` finds each task's expert (`expert_paths`), reads it into the
ImageEncoder layout (`load_expert`), takes tau_t = theta_t - theta_0 one expert at a time, runs the
checks on the experts (`provenance`) and records every file. Also the multi-task encoder of the
"Traditional MTL" row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adamerging.checkpoints.hashing import HASH_NOTE, FileHashes, cache_file
from adamerging.checkpoints.layout import Checkpoint, find_checkpoint, other_layout
from adamerging.datasets.tasks import TASKS
from adamerging.merging.stats import task_vector_stats
from adamerging.merging.task_vectors import TaskVectors, task_vectors
from adamerging.merging.transforms import TRANSFORMS, transform
from adamerging.models.clip import (
    VISUAL_PREFIX,
    create_clip,
    encoder_state_dict,
    load_encoder_weights,
)
from adamerging.run.config import RunConfig
from adamerging.run.provenance import check_experts, check_same_file, mini_build, task_vector_record
from adamerging.run.tasks import _named, cache_dir, parse_tasks
from adamerging.runtime.errors import CheckpointError
from adamerging.runtime.files import file_backed, return_freed_memory


@dataclass
class TaskVectorSet:
    """The checkpoints side of a problem: architecture, theta_0 and the (possibly TIES-selected)
    task vectors."""

    tasks: list[str]
    clip: torch.nn.Module
    # state-dict entries in canonical order (rows of a layer-wise table)
    entries: list[str]
    theta0: dict[str, torch.Tensor]
    tau: TaskVectors
    # the files read and the task vectors' norms and cosines
    provenance: dict = field(default_factory=dict)


def to_encoder_entries(
    sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: Path
) -> dict[str, torch.Tensor]:
    """Any supported state dict -> the ImageEncoder layout (`model.*`) in canonical order.

    Accepts the task-vectors encoder (`model.*`) and a whole open_clip CLIP (`visual.*`, text tower
    dropped). Names missing/unexpected keys and shape mismatches.
    """
    if not any(k.startswith("model.") for k in sd):
        sd = {
            "model." + k: v
            for k, v in sd.items()
            if not k.startswith("transformer.") and k not in ("attn_mask", "logit_bias")
        }
    missing = [k for k in reference if k not in sd]
    unexpected = [k for k in sd if k not in reference]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: entries do not match the architecture: missing {missing[:4]}"
            f" ({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)})"
        )
    out = {}
    for k, ref in reference.items():
        if tuple(sd[k].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: entry {k!r} has shape {tuple(sd[k].shape)}, the architecture expects"
                f" {tuple(ref.shape)}"
            )
        out[k] = sd[k].float()
    return out


def load_expert(
    path: Path, clip: torch.nn.Module, theta0: dict[str, torch.Tensor], record: dict | None = None
) -> dict[str, torch.Tensor]:
    """A fine-tuned encoder (task-vectors file or HF folder) in the ImageEncoder layout of `clip`'s
    architecture.

    HF experts are often vision-only: their text-side entries come from `theta0`. `record` (a file's
    provenance record) gets the file's "format". Errors as `to_encoder_entries`.
    """
    expert = Checkpoint(path)
    weights, fmt = expert.read()
    if record is not None:
        record["format"] = fmt
        # as stored (fp16 experts are merged in fp32 like the others)
        dtypes = {str(v.dtype).removeprefix("torch.") for v in weights.values()}
        record["dtype"] = "/".join(sorted(d for d in dtypes if "float" in d))
    weights = expert.open_clip_weights(weights, clip.state_dict(), theta0)
    return to_encoder_entries(weights, encoder_state_dict(clip), path)


# <checkpoints>/<model>/multitask/finetuned.pt: one encoder fine-tuned on all tasks at once
MULTITASK = "multitask"


def multitask_checkpoint(config: RunConfig) -> Path | None:
    """The jointly fine-tuned encoder ("Traditional MTL") of `config`'s model, or None where there
    is none."""
    folder = Path(config.checkpoints) / config.model / MULTITASK
    found = find_checkpoint(folder, "finetuned", config.checkpoint_format)
    return found.path if found else None


def load_multitask(
    config: RunConfig, clip: torch.nn.Module, theta0: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The multi-task encoder's entries (ImageEncoder layout); FileNotFoundError naming the expected
    file."""
    path = multitask_checkpoint(config)
    if path is None:
        folder = Path(config.checkpoints) / config.model / MULTITASK
        raise FileNotFoundError(
            f"no multi-task encoder: expected {folder}/finetuned.pt (or a Hugging Face folder"
            f" {folder}/finetuned/); the mini benchmark builds one, for the real models the paper's"
            " row is quoted"
        )
    return load_expert(path, clip, theta0)


def expert_paths(config: RunConfig, tasks: Sequence[str]) -> list[Path]:
    """Each task's fine-tuned encoder (file or HF folder): --finetuned NAME=PATH, else
    <checkpoints>/<model>/<Task>/finetuned.* (or TALL masks' <Task>Val/nonlinear_finetuned.pt).

    Errors (one line): ValueError for a task that is neither a built-in task nor the user's,
    FileNotFoundError naming the expected file of every task whose expert is missing.
    """
    model_dir = Path(config.checkpoints) / config.model
    user_tasks = _named(config.task, "--task")
    user_experts = {
        name: Path(path) for name, path in _named(config.finetuned, "--finetuned").items()
    }
    paths, missing = [], []
    for task in tasks:
        found = find_expert(model_dir, task, config.checkpoint_format)
        path = user_experts.get(task) or (found.path if found else None)
        if task not in TASKS and task not in user_experts and task not in user_tasks and not path:
            raise ValueError(
                f"{task!r} is not one of the built-in tasks ({', '.join(TASKS)}) or suites (8,"
                f" 14, 20, TA8, TALL14, TALL20): check its spelling, or give your own task with"
                f" --task {task}=DIR and --finetuned {task}=PATH"
            )
        if path is None or not path.exists():
            missing.append((task, path or model_dir / task / "finetuned.pt"))
        paths.append(path)
    if len(missing) == 1:
        task, path = missing[0]
        raise FileNotFoundError(
            f"{task}: fine-tuned encoder not found: expected {path} (or a Hugging Face folder"
            f" {model_dir / task / 'finetuned'}/, TALL masks'"
            f" {model_dir / (task + 'Val') / 'nonlinear_finetuned.pt'}, or --finetuned"
            f" {task}=PATH)" + other_layout(model_dir / task, "finetuned", config.checkpoint_format)
        )
    if missing:
        raise FileNotFoundError(
            f"fine-tuned encoders not found for {len(missing)} of {len(tasks)} tasks: "
            + ", ".join(f"{task} ({path})" for task, path in missing)
            + f"; each may also be a Hugging Face folder {model_dir}/<Task>/finetuned/, TALL"
            f" masks' {model_dir}/<Task>Val/nonlinear_finetuned.pt, or --finetuned NAME=PATH"
            + other_layout(model_dir / missing[0][0], "finetuned", config.checkpoint_format)
        )
    return paths


def find_expert(model_dir: Path, task: str, fmt: str) -> Checkpoint | None:
    """`task`'s expert under `model_dir`: <Task>/finetuned.* or a Hugging Face <Task>/finetuned/
    folder, else TALL masks' release layout <Task>Val/nonlinear_finetuned.pt."""
    found = find_checkpoint(model_dir / task, "finetuned", fmt)
    return found or find_checkpoint(model_dir / f"{task}Val", "nonlinear_finetuned", fmt)


def load_task_vectors(config: RunConfig, vectors: str = "plain") -> TaskVectorSet:
    """theta_0 and the experts' task vectors tau [T, *shape] per entry, for the tasks of `config`.

    `vectors`: a key of `merging.transforms.TRANSFORMS` ("plain": tau_t = theta_t - theta_0; "ties":
    TIES-selected; "none": zero views, for methods that read the experts themselves, one at a time,
    with `expert_paths` and `load_expert`; the files are checked here all the same). No dataset is
    read. Find, read, check: each expert is found (`expert_paths`) and theta_0; the experts are read
    one at a time; before any merge, two tasks loading the same expert and an expert not fine-tuned
    from theta_0 are refused (CheckpointError, one line; `provenance.check_experts`; warnings with
    --allow-duplicate-experts / --allow-foreign-experts). `provenance` of the result: every file's
    path, size, format and sha256, and the plain task vectors' norm ratios and cosines. Errors:
    FileNotFoundError naming the missing checkpoint, CheckpointError, ValueError (unknown vectors).
    """
    if vectors not in TRANSFORMS:
        raise ValueError(f"task vectors must be one of {', '.join(TRANSFORMS)}, got {vectors!r}")
    tasks = run_tasks(config)
    paths = expert_paths(config, tasks)
    base = find_base(config)
    clip, reference, theta0, base_format = read_base(config, base)
    tau, hashes, files, accepted = read_experts(config, tasks, paths, base, clip, theta0)
    zeroshot = {**hashes.record(base.path, base.weights_file), "format": base_format}
    hashes.save()
    checked = check(config, tasks, theta0, tau, list(reference), files, base.path, accepted)
    hashing = {"hashing_in_background": round(hashes.seconds, 3)}
    provenance = {
        "hash": HASH_NOTE,
        "files": {"zeroshot": zeroshot, "finetuned": files},
        **checked,
        "seconds": {**hashing, **checked["seconds"]},
    }
    if (build := mini_build(Path(config.checkpoints) / config.model)) is not None:
        provenance["mini_build"] = build
    tau = transform(vectors, tau, config)
    # theta_0's text-side leftovers: no method reads them (the image encoder never does); only
    # --save-merged writes them. Out of memory until then (0.1 GB on ViT-B/32, 0.16 GB on ViT-L/14).
    theta0.update(file_backed({k: v for k, v in theta0.items() if not k.startswith(VISUAL_PREFIX)}))
    load_encoder_weights(clip, theta0, str(base.path), assign=True)
    # the released experts' heap pages (0.9 GB on ViT-B/32 x 8), before the method runs
    return_freed_memory()
    return TaskVectorSet(tasks, clip, list(reference), theta0, tau, provenance)


def run_tasks(config: RunConfig) -> list[str]:
    """The merged tasks: --tasks (or tasks.txt, or the 8 paper tasks), else the users' --task
    names."""
    user_tasks = _named(config.task, "--task")
    if config.tasks or not user_tasks:
        return parse_tasks(config.tasks, Path(config.checkpoints) / config.model)
    return list(user_tasks)


def unseen_tasks(config: RunConfig) -> list[str]:
    """The --eval-tasks (evaluated with the merged model, neither merged nor adapted on)."""
    return parse_tasks(config.eval_tasks, Path()) if config.eval_tasks else []


def find_base(config: RunConfig) -> Checkpoint:
    """theta_0's checkpoint: <checkpoints>/<model>/zeroshot.* or a Hugging Face zeroshot/ folder."""
    model_dir = Path(config.checkpoints) / config.model
    base = find_checkpoint(model_dir, "zeroshot", config.checkpoint_format)
    for tall in [] if base else sorted(model_dir.glob("*Val/nonlinear_zeroshot.*")):
        # TALL masks' release keeps a copy of theta_0 in every task's folder
        base = base or find_checkpoint(tall.parent, "nonlinear_zeroshot", config.checkpoint_format)
    if base is None:
        raise FileNotFoundError(
            f"pretrained encoder not found: expected {model_dir}/zeroshot.pt (task-vectors layout),"
            f" zeroshot.safetensors, a Hugging Face folder {model_dir}/zeroshot/ with"
            " config.json, or TALL masks' <Task>Val/nonlinear_zeroshot.pt"
            + other_layout(model_dir, "zeroshot", config.checkpoint_format)
        )
    return base


def read_base(
    config: RunConfig, base: Checkpoint
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """(the architecture with theta_0 assigned, its ImageEncoder reference entries, theta_0 in
    that layout, the file's format)."""
    # shapes only: the weights are theta_0's (assigned below)
    clip = create_clip(config.model, device="meta")
    reference = encoder_state_dict(clip)
    weights, base_format = base.read()
    # a Hugging Face CLIPModel whose text tower differs: its image tower only; its text-side
    # leftovers belong to another text tower: zeros of this architecture's shapes stand in (never
    # read by the image encoder; the architecture itself is shapes only)
    text_side = {
        k: v if k.startswith(VISUAL_PREFIX) else torch.zeros(v.shape) for k, v in reference.items()
    }
    weights = base.open_clip_weights(weights, clip.state_dict(), text_side, complete=False)
    theta0 = to_encoder_entries(weights, reference, base.path)
    load_encoder_weights(clip, theta0, str(base.path), assign=True)
    return clip, reference, theta0, base_format


def read_experts(
    config: RunConfig,
    tasks: Sequence[str],
    paths: Sequence[Path],
    base: Checkpoint,
    clip: torch.nn.Module,
    theta0: dict[str, torch.Tensor],
) -> tuple[TaskVectors, FileHashes, dict[str, dict], list[str]]:
    """The task vectors, one expert at a time (`task_vectors` subtracts each and drops it before the
    next loads), each file hashed (in a background thread while the experts load) and refused
    before it is unpickled when it has an earlier task's content. Returns (tau, the hashes, each
    task's file record, the accepted warnings)."""
    files: dict[str, dict] = {}
    accepted: list[str] = []
    # the hash cache lives in the data's cache folder: never create a data root that is not there
    # (the missing data is reported later, naming what is expected)
    keep = config.cache_dir or config.data_root.is_dir()
    hashes = FileHashes(cache_file(cache_dir(config)) if keep else None)
    # the experts in order (each is checked before it is read), theta_0's last
    hashes.prefetch([*(Checkpoint(p).weights_file for p in paths), base.weights_file])

    def experts():
        for task, path in zip(tasks, paths):
            record = hashes.record(path, Checkpoint(path).weights_file)
            check_same_file(task, record, files, config.allow_duplicate_experts, accepted)
            files[task] = record
            yield load_expert(path, clip, theta0, record)

    try:
        tau = task_vectors(theta0, experts(), tasks)
    finally:
        hashes.cancel()  # a refused expert stops the hashing of the files after it
    return tau, hashes, files, accepted


def check(
    config: RunConfig,
    tasks: Sequence[str],
    theta0: dict[str, torch.Tensor],
    tau: TaskVectors,
    entries: Sequence[str],
    files: dict[str, dict],
    base_path: Path,
    accepted: list[str],
) -> dict:
    """The checks on the experts (`provenance.check_experts`) on the plain task vectors' norms and
    cosines; the provenance record's "task_vectors", "accepted_warnings" and "seconds"."""
    started = time.perf_counter()
    stats = task_vector_stats(theta0, tau, list(entries), list(tasks))
    accepted += check_experts(
        stats,
        tasks,
        files,
        str(base_path),
        config.allow_duplicate_experts,
        config.allow_foreign_experts,
    )
    return {
        "task_vectors": task_vector_record(stats, tasks),
        "accepted_warnings": accepted,
        "seconds": {"norms_and_cosines": round(time.perf_counter() - started, 3)},
    }


def check_resume_inputs(config: RunConfig, states: Sequence[Path]) -> None:
    """Before anything loads: ValueError (one line, naming the task, the file and both sha256) when
    a saved state to be resumed (`states` that exist) was made from other files than this run's
    experts or theta_0 (one replaced since; `StateFile` saves their hashes). Unchanged files are
    not read again (`FileHashes`' cache by size and mtime)."""
    saved = {}
    for path in states:
        if Path(path).is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved[Path(path)] = state.get("inputs") or {}
    if not any(saved.values()):
        return
    tasks = run_tasks(config)
    files = {t: Checkpoint(p).weights_file for t, p in zip(tasks, expert_paths(config, tasks))}
    files["zeroshot"] = find_base(config).weights_file
    hashes = FileHashes(cache_file(cache_dir(config)))
    for path, inputs in saved.items():
        for key, then in inputs.items():
            if key not in files:
                continue
            now = hashes.digest(files[key])
            if now != then:
                what = "theta_0" if key == "zeroshot" else f"{key}'s expert"
                raise ValueError(
                    f"--resume: {path} was made with {what} of sha256 {then[:16]}..., and"
                    f" {files[key]} now has {now[:16]}...: rerun without --resume"
                )
    hashes.save()
