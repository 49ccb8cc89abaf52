"""The surgery stage of a run: after any method whose result is one set of merged weights, train
every task's surgery modules (`surgery.py`) against its expert's features, evaluate through them,
save them (`<result>.surgery.safetensors`) and record what was done.

The experts' features are computed once per task, reading one expert at a time from its file; the
merged model's too for v1 (`--surgery-features cached`). Training runs in `loop.Loop` (resume, the
non-finite and out-of-memory guards, evaluation and save cadence) with `SurgeryLearner`: one step is
one iteration over the tasks (this rank's, under torchrun; the modules are gathered at the end).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from adamerging.checkpoints.hashing import FileHashes
from adamerging.methods.feed import adaptation_subset, sample
from adamerging.methods.job import Job, Outcome, PerTask
from adamerging.methods.loop import Loop, ResumeError, StateFile, naming
from adamerging.methods.surgery import (
    Hooks,
    Surgery,
    encoder_with,
    forward,
    l1,
    load_modules,
    positions,
    read_metadata,
    save_modules,
)
from adamerging.models.clip import create_clip
from adamerging.run.experts import expert_paths, load_expert, run_tasks
from adamerging.run.problem import TaskData

SUFFIX = {"v1": "_surgery", "deep": "_surgery_deep"}
TITLE = {"v1": " + Surgery", "deep": " + Surgery (deep)"}


@dataclass
class Features:
    """One task's training data: its adaptation images (uint8, for forwards on the fly), the merged
    model's final features of them (cached, v1) and the expert's targets (per position)."""

    images: torch.Tensor
    merged: torch.Tensor | None
    targets: list[torch.Tensor]

    @property
    def bytes(self) -> int:
        tensors = [*self.targets, *([self.merged] if self.merged is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors)


def batched(
    job: Job, images: torch.Tensor, params: dict, hooks: Hooks | None
) -> list[torch.Tensor]:
    """The features `surgery.forward` gives at `params` (no modules) for every image of `images`
    (uint8), in evaluation batches, per position (no gradients)."""
    out: list[list[torch.Tensor]] = []
    size, merged = job.config.batch_size, job.merged
    with torch.no_grad():
        for start in range(0, len(images), size):
            x = job.problem.normalize(images[start : start + size])
            parts = forward(merged, params, x, None, hooks, job.config.precision)
            out = out or [[] for _ in parts]
            for acc, p in zip(out, parts):
                acc.append(p.detach())
    return [torch.cat(acc) for acc in out]


def features(job: Job, params: dict, tasks: list[TaskData], variant: str, cache: bool) -> dict:
    """Every task's `Features`, reading one expert at a time (theta_0 + its own task vector, from
    its file: the problem's task vectors may be TIES-selected or absent)."""
    hooks = Hooks(job.merged.visual) if variant == "deep" else None
    paths = dict(zip(job.problem.tasks, expert_paths(job.config, job.problem.tasks)))
    out = {}
    for i, t in enumerate(tasks):
        if not job.ranks.owns(i):
            continue
        expert = load_expert(paths[t.name], job.problem.clip, job.problem.theta0)
        targets = batched(job, t.images, job.merged.visual_params(expert), hooks)
        del expert
        plain = batched(job, t.images, params, None)[0] if cache else None
        out[t.name] = Features(t.images, plain, targets)
    return out


class SurgeryLearner:
    """The surgery modules as `loop.Loop` trains them: one step is one iteration over the tasks,
    `--surgery-batches` optimiser steps each; the saved state: the modules, Adam's state and the
    sampler's."""

    name, noun = "Surgery", "surgery modules"

    def __init__(
        self,
        job: Job,
        params: dict,
        surgery: Surgery,
        tasks: list[TaskData],
        data: dict,
        variant: str,
    ):
        config = job.config
        self.job, self.params, self.surgery, self.data = job, params, surgery, data
        self.variant = variant
        self.label = f"Surgery ({variant})"
        self.steps, self.steps_flag = config.surgery_steps, "--surgery-steps"
        self.segment = {
            "lr": config.surgery_lr,
            "precision": config.precision,
            "device": config.device,
        }
        self.device = job.merged.device
        self.plan = "cached features" if self._cached else "on the fly"
        self.hooks = Hooks(job.merged.visual) if variant == "deep" else None
        self.optimizer = torch.optim.Adam(surgery.parameters(), lr=config.surgery_lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.sampler = self.generator.get_state()
        self.tasks = tasks

    @property
    def _cached(self) -> bool:
        return all(f.merged is not None for f in self.data.values())

    def step(self) -> float:
        config = self.job.config
        count = config.surgery_batch * config.surgery_batches
        # every task's draw, owned or not: the sampler's state is the same on every rank
        draws = {t.name: sample(t, count, self.generator) for t in self.tasks}
        total = torch.zeros((), device=self.device)
        for name, data in self.data.items():
            for b in range(config.surgery_batches):
                index = draws[name][b * config.surgery_batch : (b + 1) * config.surgery_batch]
                total += self._update(name, data, index)
        self.job.ranks.all_reduce_(total)
        return float(total)

    def _update(self, name: str, data, index: torch.Tensor) -> torch.Tensor:
        """One optimiser step on one batch of task `name`; FloatingPointError before it when the
        loss or a gradient is not finite."""
        modules = self.surgery.of(name)
        targets = [t[index].to(self.device) for t in data.targets]
        if data.merged is not None:
            outputs = [modules["final"](data.merged[index].to(self.device))]
        else:
            x = self.job.problem.normalize(data.images[index.to(data.images.device)])
            outputs = forward(
                self.job.merged, self.params, x, modules, self.hooks, self.job.config.precision
            )
        loss = l1(outputs, targets)
        self.optimizer.zero_grad(set_to_none=not self.job.config.surgery_stale_momentum)
        loss.backward()
        grads = [p.grad for p in modules.parameters() if p.grad is not None]
        finite = torch.isfinite(loss) & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if not bool(finite):
            raise FloatingPointError("the loss or its gradient is NaN/inf")
        self.optimizer.step()
        return loss.detach()

    def commit(self) -> None:
        self.sampler = self.generator.get_state()

    def snapshot(self) -> tuple:
        modules = {k: v.detach().clone() for k, v in self.surgery.state_dict().items()}
        return modules, copy.deepcopy(self.optimizer.state_dict()), self.sampler.clone()

    def saved(self, snapshot: tuple) -> dict:
        modules, adam, sampler = snapshot
        return {
            "tasks": self.surgery.tasks,
            "modules": modules,
            "table": None,
            "optimizer": adam,
            "generator": sampler,
        }

    def check_resume(self, saved: dict) -> None:
        ours = {k: tuple(v.shape) for k, v in self.surgery.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in saved["modules"].items()}
        if saved["tasks"] != self.surgery.tasks or ours != theirs:
            raise ResumeError(
                f"cannot resume: the saved surgery modules are for tasks {saved['tasks']}"
                f" ({len(theirs)} tensors); this run has {self.surgery.tasks} ({len(ours)})"
            )

    def restore(self, saved: dict) -> None:
        self.surgery.load_state_dict(saved["modules"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.job.config.surgery_lr
        self.generator.set_state(saved["generator"])
        self.sampler = self.generator.get_state()

    def encoder(self) -> PerTask:
        return encoders(self.job, self.params, self.surgery, self.hooks)

    def table(self) -> None:
        return None

    def smaller_step(self) -> str:
        return f"--surgery-batch {max(1, self.job.config.surgery_batch // 2)}"


def encoders(job: Job, params: dict, surgery: Surgery, hooks: Hooks | None) -> PerTask:
    """Each task's encoder through its modules; the plain merged model for the others."""
    precision = job.config.precision
    own = {
        t: encoder_with(job.merged, params, surgery.of(t), hooks, precision) for t in surgery.tasks
    }
    return PerTask(own, job.merged.bind(params, precision))


def merged_params(job: Job, outcome: Outcome) -> dict[str, torch.Tensor]:
    """The merged visual parameters of a method's outcome (a table's, or a rule's)."""
    if outcome.params is not None:
        return outcome.params
    with torch.no_grad():
        return job.merged.params(outcome.table.lambdas)


def apply_surgery(job: Job, outcome: Outcome) -> Outcome:
    """The surgery stage on a method's outcome: trained (or, with --surgery-modules, reloaded)
    modules, the accuracies through them, the merged model's own accuracies and the settings in the
    record (`"surgery"`)."""
    config, variant = job.config, job.config.surgery
    started = time.perf_counter()
    params = merged_params(job, outcome)
    places = positions(job.merged.visual, variant)
    hooks = Hooks(job.merged.visual) if variant == "deep" else None
    record = {"variant": variant, "rank": config.surgery_rank, "merged_accuracy": outcome.accuracy}
    if config.surgery_modules:
        surgery = load_modules(config.surgery_modules, places, config.surgery_rank)
        surgery = surgery.to(job.merged.device)
        record["modules_file"] = FileHashes(None).record(config.surgery_modules, fmt="safetensors")
        accuracy = job.evaluate(encoders(job, params, surgery, hooks))
    else:
        surgery, trained = train(job, params, places, variant)
        record.update(trained)
        last = trained["trajectory"][-1] if trained["trajectory"] else {}
        accuracy = last.get("accuracy") or job.evaluate(encoders(job, params, surgery, hooks))
    record["seconds"] = round(time.perf_counter() - started, 3)
    return replace(outcome, accuracy=accuracy, record={**outcome.record, "surgery": record})


def train(job: Job, params: dict, places: list, variant: str) -> tuple[Surgery, dict]:
    """Train the modules (`SurgeryLearner` in `loop.Loop`), gather them from the ranks, save them on
    the main rank; (the modules, their record)."""
    config = job.config
    cache = config.surgery_features == "cached" or (
        config.surgery_features == "auto" and variant == "v1"
    )
    tasks = adaptation_subset(job.problem.data, config.adapt_fraction, config.seed)
    t0 = time.perf_counter()
    data = features(job, params, tasks, variant, cache)
    feature_seconds = time.perf_counter() - t0
    surgery = Surgery(job.problem.tasks, places, config.surgery_rank, config.seed).to(
        job.merged.device
    )
    learner = SurgeryLearner(job, params, surgery, tasks, data, variant)
    state = job.state_file(".surgery.state.pt", "Surgery")
    result = run_loop(job, learner, state)
    gather(job, surgery, data)
    path = surgery_path(config.output_dir, job.result_name)
    if job.ranks.is_main:
        save_modules(surgery, path, config.model, variant)
    record = {
        "steps": config.surgery_steps,
        "lr": config.surgery_lr,
        "batch_size": config.surgery_batch,
        "batches_per_step": config.surgery_batches,
        "features": learner.plan,
        "stale_momentum": config.surgery_stale_momentum,
        "feature_seconds": round(feature_seconds, 3),
        "feature_bytes": sum(f.bytes for f in data.values()),
        "step_seconds_median": result.step_seconds,
        "train_seconds": result.total_seconds,
        "segments": result.segments,
        "trajectory": result.trajectory,
        "modules_file": str(path),
    }
    return surgery, record


def run_loop(job: Job, learner: SurgeryLearner, state: StateFile):
    """`loop.Loop` over the learner, its messages naming the state file."""
    config = job.config
    resume = state.load() if config.resume and state.path.is_file() else None
    # no TensorBoard curves: a learned table's are written to the run's folder with its own steps
    loop = Loop(learner, config, job.evaluate, resume, state.save, job.ranks)
    with naming(state):
        return loop.run()


def gather(job: Job, surgery: Surgery, data: dict) -> None:
    """Under torchrun every rank trained its own tasks' modules: each rank gets all of them."""
    if not job.ranks.active:
        return
    mine = {t: {k: v.cpu() for k, v in surgery.of(t).state_dict().items()} for t in data}
    for task, state in job.ranks.merge_dicts(mine).items():
        surgery.of(task).load_state_dict(state)


def surgery_path(output_dir: Path, result_name: str) -> Path:
    """Where a run's modules are saved."""
    return Path(output_dir) / f"{result_name}.surgery.safetensors"


def check_flags(config, one_model: bool, method: str) -> None:
    """One-line errors (ValueError), before anything loads, for surgery settings that cannot work:
    no single merged model, a rank wider than a feature, a variant's features that cannot be
    cached, a modules file of another model, task list, variant or width."""
    if not config.surgery:
        if config.surgery_modules:
            raise ValueError("--surgery-modules needs --surgery v1|deep (the modules' variant)")
        return
    if not one_model:
        raise ValueError(
            f"--surgery needs one merged model; {method} evaluates each expert on its own task"
        )
    places = positions(create_clip(config.model, device="meta").visual, config.surgery)
    narrowest = min(width for _, width in places)
    if config.surgery_rank > narrowest:
        raise ValueError(
            f"--surgery-rank {config.surgery_rank} is wider than the {narrowest}-wide features the"
            f" {config.surgery} modules of {config.model} act on; give at most {narrowest}"
        )
    if config.surgery == "deep" and config.surgery_features == "cached":
        raise ValueError(
            "--surgery-features cached: deep surgery changes every block's input, so the merged"
            " model's features cannot be computed once; use on-the-fly (or auto)"
        )
    if config.surgery == "deep" and config.compile:
        raise ValueError("--compile: not with --surgery deep (its modules hook into every block)")
    if config.surgery_modules:
        check_modules_file(config, places)


def check_modules_file(config, places: list) -> None:
    """ValueError (one line, naming the file and what differs) unless the modules file was saved
    for this model, task list, variant and widths."""
    path = config.surgery_modules
    if not Path(path).is_file():
        raise FileNotFoundError(f"--surgery-modules {path}: no such file")
    meta = read_metadata(path)
    expected = {
        "model": config.model,
        "tasks": run_tasks(config),
        "variant": config.surgery,
        "places": [list(p) for p in places],
    }
    found = {
        "model": meta.get("model"),
        "tasks": json.loads(meta.get("tasks", "null")),
        "variant": meta.get("variant"),
        "places": json.loads(meta.get("places", "null")),
    }
    for key, want in expected.items():
        if found[key] != want:
            raise ValueError(
                f"--surgery-modules {path}: saved for {key} {found[key]}, this run has {want}"
            )
