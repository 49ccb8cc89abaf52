"""The shared pipeline behind every `src/main_*.py`: load, merge (or learn the merge), evaluate, report.

A method is a few facts (which task vectors, which table, whether to learn it); everything else is
shared, so a fix lands once for every method.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import datasets as ds
from . import hf
from .adaptation import AdaptConfig, AdaptationStopped, MergedEncoder, TaskData, adamerge
from .checkpoints import CheckpointError, atomic_write, save_classification_head, save_state_dict
from .distributed import Ranks, init_from_env
from .evaluation import Normalizer, accuracy, predict
from .heads import Head, load_head, zeroshot_weights
from .corruptions import CORRUPTIONS, corrupt
from .diagnostics import add_diagnostic_arguments, run_diagnostics
from .merging import CoefficientTable, constant_table, load_table, merge, published_table, task_vectors, ties_select
from .models import (MODEL_NAMES, create_clip, encoder_state_dict, get_tokenizer, image_size, load_clip_weights, load_encoder_weights,
                     normalization)
from .reporting import markdown_table, package_versions, results_path, write_json


@dataclass(frozen=True)
class Method:
    name: str                      # results file name (script name without `main_`)
    title: str                     # row label in tables
    vectors: str = "plain"         # "plain" task vectors or "ties"-selected ones
    adapt: str | None = None       # None (fixed table), "task" or "layer" (AdaMerging)
    published: str | None = None   # key of the authors' table in published_merging_coefficients.json


METHODS = {m.name: m for m in [
    Method("zeroshot", "Zero-shot"),
    Method("individual", "Individual"),
    Method("weight_averaging", "Weight Averaging"),
    Method("task_arithmetic", "Task Arithmetic"),
    Method("ties_merging", "Ties-Merging", vectors="ties"),
    Method("task_wise_adamerging", "Task-wise AdaMerging", adapt="task", published="tw_adamerging"),
    Method("task_wise_adamergingpp", "Task-wise AdaMerging++", vectors="ties", adapt="task", published="tw_adamergingpp"),
    Method("layer_wise_adamerging", "Layer-wise AdaMerging", adapt="layer", published="lw_adamerging"),
    Method("layer_wise_adamergingpp", "Layer-wise AdaMerging++", vectors="ties", adapt="layer", published="lw_adamergingpp"),
]}


def build_parser(method: Method) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"{method.title}: merge CLIP image encoders fine-tuned on several tasks, evaluate every task's test split.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("models, data and outputs")
    g.add_argument("--model", default="ViT-B-32", choices=MODEL_NAMES, help="CLIP architecture (`mini`: the embedded mini benchmark)")
    g.add_argument("--checkpoints", default="checkpoints", help="root holding <model>/zeroshot.pt, <model>/<Task>/finetuned.pt, <model>/head_<Task>.pt")
    g.add_argument("--data-location", default=None, help="root of the datasets (default: data/, or data/mini for --model mini)")
    g.add_argument("--results-dir", default="results", help="results go to <results-dir>/<model>/<method>.json")
    g.add_argument("--cache-dir", default=None, help="preprocessed-image and built-head cache (default: <data-location>/.cache)")
    g.add_argument("--tasks", default=None, help="comma-separated tasks, in coefficient-column order (default: the 8 paper tasks, or <checkpoints>/<model>/tasks.txt)")
    g.add_argument("--eval-tasks", default=None, help="comma-separated unseen tasks: evaluated with the merged model, but neither merged nor adapted on (generalization)")
    g.add_argument("--corruption", default=None, help="corrupt every test image first (robustness): " + ", ".join(CORRUPTIONS))
    g.add_argument("--checkpoint-format", default="auto", choices=["auto", "task-vectors", "hf"], help="task-vectors files (zeroshot.pt, <Task>/finetuned.pt), Hugging Face CLIP folders (zeroshot/, <Task>/finetuned/ with config.json), or detect")
    g.add_argument("--task", action="append", default=[], metavar="NAME=DIR", help="your own task: an ImageFolder tree DIR/test/<class>/... (optional classnames.txt, templates.txt); repeatable")
    g.add_argument("--finetuned", action="append", default=[], metavar="NAME=PATH", help="expert checkpoint of task NAME in any supported format (file or HF folder); repeatable")
    g.add_argument("--clip-weights", default=None, help="full open_clip CLIP weights to build missing zero-shot heads from the text tower (default: <checkpoints>/<model>/clip_pretrained.safetensors if present)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="compute device")
    g.add_argument("--batch-size", type=int, default=128, help="evaluation batch size")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling and initialisation")
    g.add_argument("--save-merged", default=None, help="write the merged image encoder here as a plain state dict (.safetensors or weights-only .pt)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing results file instead of writing beside it")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    m = p.add_argument_group("merging")
    m.add_argument("--lam", type=float, default=0.3 if method.name != "weight_averaging" else None, help="scaling coefficient for Task Arithmetic / TIES (weight averaging: 1/T)")
    m.add_argument("--ties-k", type=float, default=0.2, help="TIES: fraction of each task vector kept (top-k by magnitude)")
    m.add_argument("--ties-combine", default="sum", choices=["sum", "mean"], help="TIES: disjoint sum (the authors' code) or disjoint mean (the TIES paper)")
    m.add_argument("--coefficients", default=None, help="evaluate a fixed table instead of learning one: 'published' (the authors') or a JSON written by this repo")
    a = p.add_argument_group("AdaMerging (the four adamerging scripts)")
    a.add_argument("--steps", type=int, default=500, help="optimizer steps")
    a.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    a.add_argument("--init", type=float, default=0.3, help="initial task coefficient")
    a.add_argument("--batch-size-adapt", type=int, default=16, help="images per unlabeled test batch")
    a.add_argument("--batches-per-step", type=int, default=2, help="batches per task per step")
    a.add_argument("--no-clamp", action="store_true", help="do not clamp coefficients to [0, 1] in the forward")
    a.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (trajectory); 0: only at start and end")
    a.add_argument("--adapt-fraction", type=float, default=1.0, help="fraction of each task's test images the adaptation may draw from (seeded subset; evaluation always uses all)")
    a.add_argument("--objective", default="entropy", choices=["entropy", "supervised"], help="entropy (AdaMerging) or cross-entropy with test labels (the paper's supervised oracle ablation)")
    a.add_argument("--adapt-mode", default="fused", choices=["fused", "per-task"], help="one forward over all tasks' batches, or backward per task (less memory)")
    a.add_argument("--diagnose", action="store_true", help="before adapting, check on a labeled test sample whether entropy tracks the loss on these models (as src/diagnose.py) and print the verdict")
    add_diagnostic_arguments(a)
    a.add_argument("--save-every", type=int, default=50, help="save coefficients + optimizer state every N steps (also on Ctrl-C and on a NaN), for --resume")
    a.add_argument("--resume", action="store_true", help="continue from <results-dir>/<model>/<method>.state.pt")
    s_ = p.add_argument_group("speed")
    s_.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 autocast for the encoder (use on CUDA)")
    s_.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the encoder (ViT-L/14 on a 24 GB GPU)")
    s_.add_argument("--compile", action="store_true", help="torch.compile the encoder forward (experimental; pays off on GPU for long runs)")
    return p


# ---------------------------------------------------------------------------------------------- loading


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


def to_encoder_entries(sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Any supported state dict -> the ImageEncoder layout (`model.*`) in canonical order.

    Accepts the task-vectors encoder (`model.*`) and a whole open_clip CLIP (`visual.*`, text tower
    dropped). Names missing/unexpected keys and shape mismatches.
    """
    if not any(k.startswith("model.") for k in sd):
        sd = {"model." + k: v for k, v in sd.items() if not k.startswith("transformer.") and k not in ("attn_mask", "logit_bias")}
    missing = [k for k in reference if k not in sd]
    unexpected = [k for k in sd if k not in reference]
    if missing or unexpected:
        raise CheckpointError(f"{source}: entries do not match the architecture: missing {missing[:4]} ({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)})")
    out = {}
    for k, ref in reference.items():
        if tuple(sd[k].shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: entry {k!r} has shape {tuple(sd[k].shape)}, the architecture expects {tuple(ref.shape)}")
        out[k] = sd[k].float()
    return out


def default_tasks(model_dir: Path) -> list[str]:
    listing = model_dir / "tasks.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return list(ds.TASKS)


def parse_tasks(text: str | None, model_dir: Path) -> list[str]:
    if not text:
        return default_tasks(model_dir)
    canonical = {t.lower(): t for t in ds.TASKS}
    return [canonical.get(t.strip().lower(), t.strip()) for t in text.split(",") if t.strip()]


@dataclass
class Problem:
    """Everything a merging method needs, loaded once."""

    model: str
    tasks: list[str]
    clip: torch.nn.Module
    keys: list[str]
    theta0: dict[str, torch.Tensor]
    tau: dict[str, torch.Tensor]
    data: list[TaskData]            # the merged tasks (adapted on, evaluated)
    normalize: Normalizer
    eval_data: list[TaskData]       # unseen tasks: evaluated only

    @property
    def all_data(self) -> list[TaskData]:
        return self.data + self.eval_data


def load_heads(args, model_dir: Path, tasks: Sequence[str], splits: dict[str, "ds.Split"], templates: dict[str, list[str]],
               cache_dir: Path) -> dict[str, Head]:
    heads, missing = {}, []
    for task in tasks:
        path = _find(model_dir, f"head_{task}", "task-vectors")
        if path is not None:
            heads[task] = load_head(path)
        else:
            missing.append(task)
    if missing:
        # a full CLIP: clip_pretrained.*, or an HF zeroshot/ folder (a whole CLIPModel)
        weights = Path(args.clip_weights) if args.clip_weights else (_find(model_dir, "clip_pretrained") or _find(model_dir, "zeroshot", "hf"))
        if weights is None or not weights.exists():
            raise FileNotFoundError(
                f"no head for {missing} ({model_dir}/head_<Task>.pt) and no CLIP weights to build one from the text tower: "
                f"put the task-vectors heads there, or pass --clip-weights (a full open_clip state dict)")
        clip = create_clip(args.model)
        load_clip_weights(clip, hf.load_weights(weights), str(weights))
        tokenizer = get_tokenizer(args.model)
        weights_file = hf.weights_file(weights) if weights.is_dir() else weights
        for task in missing:
            # the cache key covers everything the head depends on, so a stale head is never reused
            key = json.dumps([args.model, str(weights_file.resolve()), weights_file.stat().st_mtime_ns, splits[task].classnames, templates[task]])
            cached = cache_dir / "heads" / args.model / f"head_{task}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.pt"
            if cached.is_file():
                heads[task] = load_head(cached)
                continue
            weight = zeroshot_weights(clip, tokenizer, splits[task].classnames, templates[task], device=args.device)
            save_classification_head(weight, cached)
            heads[task] = Head(weight)
    for task in tasks:
        if heads[task].num_classes != len(splits[task].classnames):
            raise ValueError(f"{task}: head has {heads[task].num_classes} classes, the dataset has {len(splits[task].classnames)}")
    return heads


@dataclass
class TaskVectorSet:
    """The checkpoints side of a problem: architecture, theta_0 and the (possibly TIES-selected) task vectors."""

    tasks: list[str]
    clip: torch.nn.Module
    keys: list[str]
    theta0: dict[str, torch.Tensor]
    tau: dict[str, torch.Tensor]


def load_task_vectors(args, method: Method) -> TaskVectorSet:
    """theta_0 and the experts' task vectors, for the tasks of `args` (no dataset is read)."""
    model_dir = Path(args.checkpoints) / args.model
    user_tasks = _named(args.task, "--task")
    user_experts = {name: Path(path) for name, path in _named(args.finetuned, "--finetuned").items()}
    tasks = parse_tasks(args.tasks, model_dir) if args.tasks or not user_tasks else list(user_tasks)
    clip = create_clip(args.model, device="meta")  # shapes only: the weights are theta_0's (assigned below)
    reference = encoder_state_dict(clip)
    fmt = args.checkpoint_format
    base_path = _find(model_dir, "zeroshot", fmt)
    if base_path is None:
        raise FileNotFoundError(f"pretrained encoder not found: expected {model_dir}/zeroshot.pt (task-vectors layout), "
                                f"zeroshot.safetensors, or a Hugging Face folder {model_dir}/zeroshot/ with config.json")
    theta0 = to_encoder_entries(hf.load_weights(base_path), reference, base_path)
    load_encoder_weights(clip, theta0, str(base_path), assign=True)

    def experts():  # one at a time: task_vectors subtracts each and drops it before the next loads
        for task in tasks:
            path = user_experts.get(task) or _find(model_dir / task, "finetuned", fmt)
            if path is None or not path.exists():
                raise FileNotFoundError(f"{task}: fine-tuned encoder not found: expected {path or model_dir / task / 'finetuned.pt'} "
                                        f"(or a Hugging Face folder {model_dir / task / 'finetuned'}/, or --finetuned {task}=PATH)")
            weights = hf.load_weights(path)
            if hf.is_hf_checkpoint(path):  # HF experts are often vision-only: text-side entries come from theta_0
                weights = hf.fill_from(weights, theta0)
            yield to_encoder_entries(weights, reference, path)
            del weights  # not held while the next expert loads
    tau = task_vectors(theta0, experts(), tasks)
    if method.vectors == "ties":
        tau = ties_select(tau, args.ties_k, args.ties_combine, inplace=True)
    return TaskVectorSet(tasks, clip, list(reference), theta0, tau)


def load_problem(args, method: Method, timings: dict[str, float]) -> Problem:
    t0 = time.perf_counter()
    vectors = load_task_vectors(args, method)
    tasks, clip, keys, theta0, tau = vectors.tasks, vectors.clip, vectors.keys, vectors.theta0, vectors.tau
    model_dir = Path(args.checkpoints) / args.model
    data_root = Path(args.data_location or ("data/mini" if args.model == "mini" else "data"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else data_root / ".cache"
    user_tasks = {name: Path(folder) for name, folder in _named(args.task, "--task").items()}
    timings["load_checkpoints"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    unseen = [t for t in parse_tasks(args.eval_tasks, model_dir) if t not in tasks] if args.eval_tasks else []
    everything = tasks + unseen
    splits = {task: ds.read_image_folder_task(task, user_tasks[task]) if task in user_tasks else ds.read_split(task, data_root, "test")
              for task in everything}
    templates = {task: ds.user_task_templates(user_tasks[task]) if task in user_tasks else ds.task_templates(task, data_root)
                 for task in everything}
    size = image_size(clip)
    images = {task: ds.preprocess_images(splits[task], size, cache_dir / "images", progress=not args.no_progress) for task in everything}
    if args.corruption:
        images = {task: corrupt(x, args.corruption, seed=args.seed) for task, x in images.items()}
    timings["load_data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    heads = load_heads(args, model_dir, everything, splits, templates, cache_dir)
    timings["load_heads"] = time.perf_counter() - t0
    data = {task: TaskData(task, images[task], heads[task].to(args.device), torch.as_tensor(splits[task].labels, dtype=torch.long))
            for task in everything}
    mean, std = normalization(clip)
    return Problem(args.model, tasks, clip, keys, theta0, tau, [data[t] for t in tasks], Normalizer(mean, std, args.device),
                   [data[t] for t in unseen])


def adaptation_subset(data: Sequence[TaskData], fraction: float, seed: int) -> list[TaskData]:
    """Each task restricted to a seeded `fraction` of its test images (at least one) for adaptation."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--adapt-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(data)
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in data:
        keep = torch.randperm(len(t.images), generator=g)[: max(1, round(fraction * len(t.images)))].sort().values
        out.append(TaskData(t.name, t.images[keep], t.head, t.labels[keep] if t.labels is not None else None))
    return out


# ---------------------------------------------------------------------------------------------- running


def evaluate_tasks(encoder, problem: Problem, batch_size: int, tasks: Sequence[TaskData] | None = None,
                   ranks: Ranks = Ranks()) -> dict[str, float]:
    """Accuracy per task; under torchrun each rank evaluates its share and the results are gathered."""
    tasks = list(tasks or problem.all_data)
    out = {}
    for i, t in enumerate(tasks):
        if ranks.owns(i):
            out[t.name] = accuracy(predict(encoder, t.head, t.images, problem.normalize, batch_size), t.labels)
    out = ranks.merge_dicts(out)
    return {t.name: out[t.name] for t in tasks}


def fixed_table(args, method: Method, problem: Problem) -> CoefficientTable:
    if args.coefficients == "published":
        if method.published is None:
            raise ValueError(f"{method.name}: the authors published coefficients only for the AdaMerging methods")
        return published_table(method.published, problem.model).for_entries(problem.tasks, problem.keys, f"published {method.published}/{problem.model}")
    if args.coefficients:
        return load_table(args.coefficients).for_entries(problem.tasks, problem.keys, args.coefficients)
    if method.name == "zeroshot":
        return constant_table(problem.tasks, 0.0)
    if method.name == "weight_averaging":
        return constant_table(problem.tasks, 1.0 / len(problem.tasks) if args.lam is None else args.lam)
    return constant_table(problem.tasks, args.lam)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def result_name(method: Method, args) -> str:
    """Variants get their own file, so they never replace the method's main result."""
    name = method.name
    if method.adapt and args.objective == "supervised" and not args.coefficients:
        name += "_supervised"
    if args.coefficients == "published":
        name += "_published"
    return name


def _state_io(args, name: str, ranks: Ranks):
    """Load (for --resume) and save the adaptation state: <results-dir>/<model>/<name>.state.pt."""
    path = Path(args.results_dir) / args.model / f"{name}.state.pt"
    resume = None
    if args.resume:
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no saved state at {path}")
        resume = torch.load(path, weights_only=True)

    def save(state: dict) -> None:
        if ranks.is_main:
            state = {**state, "table": state["table"].to_json()}
            with atomic_write(path) as f:
                torch.save(state, f)
    return path, resume, save


def run(method_name: str, argv: Sequence[str] | None = None) -> dict:
    """Parse flags, run one method end to end, print its table and write its results JSON."""
    method = METHODS[method_name]
    args = build_parser(method).parse_args(argv)
    ranks, args.device = init_from_env(args.device)
    seed_everything(args.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    problem = load_problem(args, method, timings)
    merged = MergedEncoder(problem.clip.visual, problem.theta0, problem.tau, problem.keys, args.device,
                           checkpointing=args.checkpointing, compile=args.compile)
    evaluate = lambda enc: evaluate_tasks(enc, problem, args.batch_size, ranks=ranks)  # noqa: E731
    adaptation = diagnosis = None
    name = result_name(method, args)

    t0 = time.perf_counter()
    if method.name == "individual":
        accs = {}
        for i, t in enumerate(problem.data):
            table = constant_table(problem.tasks, 0.0)
            table.values[0, i + 1] = 1.0
            accs.update(evaluate_tasks(merged.encoder(table.values, args.precision), problem, args.batch_size, [t]))
        table = None
    elif method.adapt and not args.coefficients:
        config = AdaptConfig(steps=args.steps, lr=args.lr, init=args.init, batch_size=args.batch_size_adapt,
                             batches_per_step=args.batches_per_step, clamp=not args.no_clamp, granularity=method.adapt,
                             objective=args.objective, mode=args.adapt_mode, precision=args.precision,
                             eval_every=args.eval_every, save_every=args.save_every, seed=args.seed,
                             progress=not args.no_progress)
        if args.diagnose:
            diagnosis = run_diagnostics(problem, args, merged=merged, vectors=method.vectors, timings=timings)
        state_path, resume, save_state = _state_io(args, name, ranks)
        try:
            adaptation = adamerge(merged, adaptation_subset(problem.data, args.adapt_fraction, args.seed), problem.normalize, config, evaluate=evaluate,
                                  resume=resume, save_state=save_state, ranks=ranks)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted; coefficients and optimizer state saved to {state_path}: rerun with --resume") from None
        except AdaptationStopped as stop:
            raise AdaptationStopped(f"{stop}; state saved to {state_path} (its 'table' is the last good one)", stop.state) from None
        table = adaptation.table
        last = adaptation.trajectory[-1] if adaptation.trajectory else {}
        accs = last["accuracy"] if "accuracy" in last else evaluate(merged.encoder(table.values, args.precision))
    else:
        table = fixed_table(args, method, problem)
        accs = evaluate(merged.encoder(table.values, args.precision))
    timings["merge_adapt_evaluate"] = time.perf_counter() - t0

    average = sum(accs[t] for t in problem.tasks) / len(problem.tasks)  # over the merged tasks
    if not ranks.is_main:
        return {"accuracy": accs, "average": average}
    if args.save_merged and table is not None:
        save_state_dict(merge(problem.theta0, problem.tau, table.values, problem.keys), args.save_merged)
    title = method.title + (" (supervised oracle)" if name.endswith("_supervised") else "")
    print(markdown_table({title: accs}, problem.tasks + [t.name for t in problem.eval_data]))
    timings["total"] = time.perf_counter() - started
    result = {
        "method": method.name, "title": method.title, "model": args.model, "tasks": problem.tasks,
        "accuracy": accs, "average": average, "eval_tasks": [t.name for t in problem.eval_data],
        "unseen_average": (sum(accs[t.name] for t in problem.eval_data) / len(problem.eval_data)
                           if problem.eval_data and all(t.name in accs for t in problem.eval_data) else None),
        "coefficients": table.to_json() if table is not None else None,
        "config": vars(args), "seed": args.seed, "versions": package_versions(), "timings_s": timings,
    }
    if diagnosis is not None:
        result["diagnostics"] = {k: diagnosis[k] for k in ("verdict", "checks", "spearman", "thresholds")}
    if adaptation is not None:
        result["adaptation"] = {"step_seconds_median": adaptation.step_seconds, "adapt_seconds": adaptation.total_seconds,
                                "trajectory": adaptation.trajectory}
    result["result_name"] = name
    path = results_path(Path(args.results_dir), args.model, name, args.overwrite)
    write_json(result, path)
    print(f"wrote {path}")
    return result


def main(method_name: str) -> None:
    """Entry point of the scripts: user mistakes print one line and exit 2, no traceback."""
    try:
        run(method_name, sys.argv[1:])
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    except AdaptationStopped as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except (FileNotFoundError, CheckpointError, ds.DatasetError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        sys.exit(2)
