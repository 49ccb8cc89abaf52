"""Loading a merging problem: checkpoints -> theta_0 and task vectors, test sets -> uint8 images,
heads.

Loading only: `load_problem(config, vectors)` returns a `Problem` that every method (and the
diagnostics) runs on; nothing here merges, trains or evaluates.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import datasets as ds
from . import hf
from .checkpoints import CheckpointError, file_backed, load_checkpoint, return_freed_memory
from .config import RunConfig
from .corruptions import corrupt
from .evaluation import Normalizer
from .heads import Head, head_from_checkpoint, load_head, zeroshot_weights
from .merging import TaskVectors, task_vectors, ties_select, zero_task_vectors
from .models import (
    VISUAL_PREFIX,
    create_clip,
    encoder_state_dict,
    get_tokenizer,
    image_size,
    load_clip_weights,
    load_encoder_weights,
    normalization,
)
from .provenance import (
    HASH_NOTE,
    FileHashes,
    cache_file,
    check_experts,
    check_same_file,
    checkpoint_format,
    mini_build,
    task_vector_record,
    task_vector_stats,
)
from .task_vectors_format import save_classification_head


@dataclass
class TaskData:
    """One task's test split in memory: images uint8 [N, 3, S, S], its frozen head, labels [N]
    (long)."""

    name: str
    images: torch.Tensor
    head: Head
    labels: torch.Tensor | None = None  # only read by the supervised oracle and by evaluation


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


@dataclass
class Problem:
    """Everything a merging method needs, loaded once."""

    model: str
    tasks: list[str]
    clip: torch.nn.Module
    # state-dict entries in canonical order (rows of a layer-wise table)
    entries: list[str]
    theta0: dict[str, torch.Tensor]
    tau: TaskVectors
    data: list[TaskData]  # the merged tasks (adapted on, evaluated)
    normalize: Normalizer
    eval_data: list[TaskData]  # unseen tasks: evaluated only
    # per task: Split.record() (source, n_images, ...)
    test_data: dict[str, dict] = field(default_factory=dict)
    # per checkpoint file path, size, format, sha256; task-vector norms, cosines
    provenance: dict = field(default_factory=dict)

    @property
    def all_data(self) -> list[TaskData]:
        """Merged tasks, then unseen ones."""
        return self.data + self.eval_data


def _find(folder: Path, stem: str, fmt: str = "auto") -> Path | None:
    """`folder/stem.{pt,safetensors,bin}` (task-vectors layout) or the HF folder `folder/stem/`."""
    if fmt != "hf":
        for suffix in (".pt", ".safetensors", ".bin"):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    if fmt != "task-vectors" and hf.is_hf_checkpoint(folder / stem):
        return folder / stem
    return None


def _named(values: Sequence[str], flag: str) -> dict[str, str]:
    """NAME=VALUE pairs of a repeatable flag."""
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def cache_dir(config: RunConfig) -> Path:
    """The cache folder (preprocessed images, built heads, file hashes): --cache-dir, else <data
    root>/.cache."""
    return Path(config.cache_dir) if config.cache_dir else config.data_root / ".cache"


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint's state dict (`hf.load_weights`) and its format for the record
    (`provenance.checkpoint_format`)."""
    if hf.is_hf_checkpoint(path):
        return hf.load_hf_checkpoint(path), checkpoint_format(path, "hf")
    loaded = load_checkpoint(path)
    return loaded.state_dict, checkpoint_format(path, loaded.kind)


def _content(path: Path) -> Path:
    """The file holding a checkpoint's weights (a Hugging Face folder's weights file)."""
    return hf.weights_file(path) if path.is_dir() else path


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


def default_tasks(model_dir: Path) -> list[str]:
    """The tasks listed in `model_dir/tasks.txt` (one a line), else the 8 paper tasks."""
    listing = model_dir / "tasks.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return list(ds.TASKS)


def parse_tasks(text: str | None, model_dir: Path) -> list[str]:
    """'mnist,SVHN' -> ['MNIST', 'SVHN'] (paper task names matched case-insensitively); empty:
    `default_tasks`."""
    if not text:
        return default_tasks(model_dir)
    canonical = {t.lower(): t for t in ds.TASKS}
    tasks = [canonical.get(t.strip().lower(), t.strip()) for t in text.split(",") if t.strip()]
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:  # a repeated task would merge its task vector twice
        raise ValueError(
            f"--tasks lists {', '.join(repeated)} more than once; each task may appear once"
        )
    return tasks


def load_heads(
    config: RunConfig,
    model_dir: Path,
    tasks: Sequence[str],
    splits: dict[str, ds.Split],
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
        path = None if config.rebuild_heads else _find(model_dir, f"head_{task}", "task-vectors")
        if path is not None:
            loaded = load_checkpoint(path)
            heads[task] = head_from_checkpoint(loaded, path)
            files[task] = hashes.record(path, fmt=checkpoint_format(path, loaded.kind))
            _check_head(heads[task], path, task, width, len(splits[task].classnames), config.model)
        else:
            missing.append(task)
    if missing:
        # a full CLIP: clip_pretrained.*, or an HF zeroshot/ folder (a whole CLIPModel)
        weights = (
            Path(config.clip_weights)
            if config.clip_weights
            else (_find(model_dir, "clip_pretrained") or _find(model_dir, "zeroshot", "hf"))
        )
        if weights is None or not weights.exists():
            raise FileNotFoundError(
                f"no head for {missing} ({model_dir}/head_<Task>.pt) and no CLIP weights to build"
                " one from the text tower: put the task-vectors heads there, or pass"
                " --clip-weights (a full open_clip state dict)"
            )
        clip = create_clip(config.model)
        full, clip_format = _read(weights)
        hf.check_text_tower(full, clip.state_dict(), weights, missing)
        load_clip_weights(clip, full, str(weights))
        tokenizer = get_tokenizer(config.model)
        weights_file = _content(weights)
        clip_record = hashes.record(weights, weights_file, clip_format)
        for task in missing:
            # the cache key covers everything the head depends on, so a stale head is never reused
            key = json.dumps(
                [
                    config.model,
                    str(weights_file.resolve()),
                    weights_file.stat().st_mtime_ns,
                    splits[task].classnames,
                    templates[task],
                ]
            )
            cached = (
                cache_dir
                / "heads"
                / config.model
                / f"head_{task}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.pt"
            )
            if cached.is_file():
                heads[task] = load_head(cached)
            else:
                weight = zeroshot_weights(
                    clip, tokenizer, splits[task].classnames, templates[task], device=config.device
                )
                save_classification_head(weight, cached)
                heads[task] = Head(weight)
            files[task] = {
                **hashes.record(
                    cached, fmt=checkpoint_format(cached, "module:src.modeling.ClassificationHead")
                ),
                "built_from_text_tower": clip_record,
            }
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
            f" head of another task or class list; {fix}, or check the dataset copy and its"
            " classnames.txt"
        )


def load_expert(
    path: Path, clip: torch.nn.Module, theta0: dict[str, torch.Tensor], record: dict | None = None
) -> dict[str, torch.Tensor]:
    """A fine-tuned encoder (task-vectors file or HF folder) in the ImageEncoder layout of `clip`'s
    architecture.

    HF experts are often vision-only: their text-side entries come from `theta0`. `record` (a file's
    provenance record) gets the file's "format". Errors as `to_encoder_entries`.
    """
    weights, fmt = _read(path)
    if record is not None:
        record["format"] = fmt
    if hf.is_hf_checkpoint(path):
        weights = hf.fill_from(hf.image_tower(weights, clip.state_dict(), path, theta0), theta0)
    return to_encoder_entries(weights, encoder_state_dict(clip), path)


# <checkpoints>/<model>/multitask/finetuned.pt: one encoder fine-tuned on all tasks at once
MULTITASK = "multitask"


def multitask_checkpoint(config: RunConfig) -> Path | None:
    """The jointly fine-tuned encoder ("Traditional MTL") of `config`'s model, or None where there
    is none."""
    return _find(
        Path(config.checkpoints) / config.model / MULTITASK, "finetuned", config.checkpoint_format
    )


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


def read_task(config: RunConfig, task: str, split: str, test_dir: str | None = None) -> ds.Split:
    """One split of a task: the user's ImageFolder tree (--task NAME=DIR), else the dataset under
    the data root."""
    user_tasks = _named(config.task, "--task")
    if task in user_tasks:
        return ds.read_image_folder_task(task, user_tasks[task], split)
    return ds.read_task_split(
        task, config.data_root, split, data_format=config.data_format, test_dir=test_dir
    )


def expert_paths(config: RunConfig, tasks: Sequence[str]) -> list[Path]:
    """Each task's fine-tuned encoder (file or HF folder): --finetuned NAME=PATH, else
    <checkpoints>/<model>/<Task>/finetuned.*.

    Errors (one line): ValueError for a task that is neither a paper task nor the user's,
    FileNotFoundError naming the expected file.
    """
    model_dir = Path(config.checkpoints) / config.model
    user_tasks = _named(config.task, "--task")
    user_experts = {
        name: Path(path) for name, path in _named(config.finetuned, "--finetuned").items()
    }
    paths = []
    for task in tasks:
        path = user_experts.get(task) or _find(
            model_dir / task, "finetuned", config.checkpoint_format
        )
        if (
            task not in ds.TASKS
            and task not in user_experts
            and task not in user_tasks
            and path is None
        ):
            raise ValueError(
                f"{task!r} is not one of the paper's tasks ({', '.join(ds.TASKS)}): check its"
                f" spelling, or give your own task with --task {task}=DIR and --finetuned"
                f" {task}=PATH"
            )
        if path is None or not path.exists():
            raise FileNotFoundError(
                f"{task}: fine-tuned encoder not found: expected"
                f" {path or model_dir / task / 'finetuned.pt'} (or a Hugging Face folder"
                f" {model_dir / task / 'finetuned'}/, or --finetuned {task}=PATH)"
            )
        paths.append(path)
    return paths


def load_task_vectors(config: RunConfig, vectors: str = "plain") -> TaskVectorSet:
    """theta_0 and the experts' task vectors tau [T, *shape] per entry, for the tasks of `config`.

    `vectors`: "plain" (tau_t = theta_t - theta_0), "ties" (TIES-selected, `merging.ties_select`) or
    "none" (zero views that take no memory: for methods that read the experts themselves, one at a
    time, with `expert_paths` and `load_expert`; the files are checked here all the same). No
    dataset is read. Before any merge, refuses (CheckpointError, one line) two tasks loading the
    same expert and an expert not fine-tuned from theta_0 (`provenance.check_experts`; warnings with
    --allow-duplicate-experts / --allow-foreign-experts). `provenance` of the result: every file's
    path, size, format and sha256, and the plain task vectors' norm ratios and cosines. Errors:
    FileNotFoundError naming the missing checkpoint, CheckpointError.
    """
    if vectors not in ("plain", "ties", "none"):
        raise ValueError(f"task vectors must be 'plain', 'ties' or 'none', got {vectors!r}")
    model_dir = Path(config.checkpoints) / config.model
    user_tasks = _named(config.task, "--task")
    tasks = (
        parse_tasks(config.tasks, model_dir) if config.tasks or not user_tasks else list(user_tasks)
    )
    paths = expert_paths(config, tasks)
    # shapes only: the weights are theta_0's (assigned below)
    clip = create_clip(config.model, device="meta")
    reference = encoder_state_dict(clip)
    base_path = _find(model_dir, "zeroshot", config.checkpoint_format)
    if base_path is None:
        raise FileNotFoundError(
            f"pretrained encoder not found: expected {model_dir}/zeroshot.pt (task-vectors layout),"
            f" zeroshot.safetensors, or a Hugging Face folder {model_dir}/zeroshot/ with"
            " config.json"
        )
    base, base_format = _read(base_path)
    if hf.is_hf_checkpoint(base_path):  # a CLIPModel whose text tower differs: its image tower only
        # its text-side leftovers belong to another text tower: zeros of this architecture's shapes
        # stand in (never read by the image encoder; the architecture itself is shapes only)
        text_side = {
            k: v if k.startswith(VISUAL_PREFIX) else torch.zeros(v.shape)
            for k, v in reference.items()
        }
        base = hf.image_tower(base, clip.state_dict(), base_path, text_side)
    theta0 = to_encoder_entries(base, reference, base_path)
    load_encoder_weights(clip, theta0, str(base_path), assign=True)

    files: dict[str, dict] = {}
    accepted: list[str] = []

    def experts():  # one at a time: task_vectors subtracts each and drops it before the next loads
        for task, path in zip(tasks, paths):
            record = hashes.record(path, _content(path))
            # a copy is refused before it is unpickled
            check_same_file(task, record, files, config.allow_duplicate_experts, accepted)
            files[task] = record
            yield load_expert(path, clip, theta0, record)

    # the hash cache lives in the data's cache folder: never create a data root that is not there
    # (the missing data is reported later, naming what is expected)
    hashes = FileHashes(
        cache_file(cache_dir(config)) if config.cache_dir or config.data_root.is_dir() else None
    )
    # hashed in a background thread while the experts load: the experts in order (each is checked
    # before it is read), theta_0's last
    hashes.prefetch(_content(p) for p in [*paths, base_path])
    try:
        tau = task_vectors(theta0, experts(), tasks)
    finally:
        hashes.cancel()  # a refused expert stops the hashing of the files after it
    zeroshot = {**hashes.record(base_path, _content(base_path)), "format": base_format}
    hashes.save()
    started = time.perf_counter()
    stats = task_vector_stats(theta0, tau, list(reference), tasks)
    accepted += check_experts(
        stats,
        tasks,
        files,
        str(base_path),
        config.allow_duplicate_experts,
        config.allow_foreign_experts,
    )
    provenance = {
        "hash": HASH_NOTE,
        "files": {"zeroshot": zeroshot, "finetuned": files},
        "task_vectors": task_vector_record(stats, tasks),
        "accepted_warnings": accepted,
        "seconds": {
            "hashing_in_background": round(hashes.seconds, 3),
            "norms_and_cosines": round(time.perf_counter() - started, 3),
        },
    }
    if (build := mini_build(model_dir)) is not None:
        provenance["mini_build"] = build
    if vectors == "none":  # checked above like every method's experts; the method reads them itself
        tau = {
            k: zero_task_vectors(len(tasks), v.shape)
            for k, v in theta0.items()
            if v.is_floating_point()
        }
    elif vectors == "ties":
        tau = ties_select(tau, config.ties_k, config.ties_combine, inplace=True)
    # theta_0's text-side leftovers: no method reads them (the image encoder never does); only
    # --save-merged writes them. Out of memory until then (0.1 GB on ViT-B/32, 0.16 GB on ViT-L/14).
    theta0.update(file_backed({k: v for k, v in theta0.items() if not k.startswith(VISUAL_PREFIX)}))
    load_encoder_weights(clip, theta0, str(base_path), assign=True)
    # the released experts' heap pages (0.9 GB on ViT-B/32 x 8), before the method runs
    return_freed_memory()
    return TaskVectorSet(tasks, clip, list(reference), theta0, tau, provenance)


def load_problem(
    config: RunConfig, vectors: str = "plain", timings: dict[str, float] | None = None
) -> Problem:
    """Checkpoints, test images (uint8, preprocessed once and cached), heads and labels of a run.

    `vectors`: "plain", "ties" or "none" task vectors (see `load_task_vectors`). `timings` (seconds)
    gets load_checkpoints / load_data / load_heads when given.
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    loaded = load_task_vectors(config, vectors)
    tasks, clip, entries, theta0, tau = (
        loaded.tasks,
        loaded.clip,
        loaded.entries,
        loaded.theta0,
        loaded.tau,
    )
    model_dir = Path(config.checkpoints) / config.model
    root, cache = config.data_root, cache_dir(config)
    user_tasks = {name: Path(folder) for name, folder in _named(config.task, "--task").items()}
    timings["load_checkpoints"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    unseen = (
        [t for t in parse_tasks(config.eval_tasks, model_dir) if t not in tasks]
        if config.eval_tasks
        else []
    )
    everything = tasks + unseen
    test_splits = ds.parse_test_split(config.test_split)
    splits = {task: read_task(config, task, "test", test_splits.get(task)) for task in everything}
    templates = {
        task: (
            ds.user_task_templates(user_tasks[task])
            if task in user_tasks
            else ds.task_templates(task, root)
        )
        for task in everything
    }
    timings["load_data"] = time.perf_counter() - t0

    # heads before the images are decoded: a head that does not fit costs seconds
    t0 = time.perf_counter()
    hashes, head_files = FileHashes(cache_file(cache)), {}
    heads = load_heads(
        config,
        model_dir,
        everything,
        splits,
        templates,
        cache,
        clip.visual.output_dim,
        hashes,
        head_files,
    )
    hashes.save()
    timings["load_heads"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    size = image_size(clip)
    images = {
        task: ds.preprocess_images(
            splits[task], size, cache / "images", progress=not config.no_progress
        )
        for task in everything
    }
    if config.corruption:
        images = {
            task: corrupt(x, config.corruption, seed=config.seed) for task, x in images.items()
        }
    timings["load_data"] += time.perf_counter() - t0
    data = {
        task: TaskData(
            task,
            images[task],
            heads[task].to(config.device),
            torch.as_tensor(splits[task].labels, dtype=torch.long),
        )
        for task in everything
    }
    mean, std = normalization(clip)
    provenance = {**loaded.provenance, "files": {**loaded.provenance["files"], "heads": head_files}}
    return Problem(
        config.model,
        tasks,
        clip,
        entries,
        theta0,
        tau,
        [data[t] for t in tasks],
        Normalizer(mean, std, config.device),
        [data[t] for t in unseen],
        {task: splits[task].record() for task in everything},
        provenance,
    )
