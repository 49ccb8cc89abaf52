"""AdaMerging: learn the merging coefficients lambdas by entropy minimisation on unlabeled test batches.

Read `adamerging_step` beside the paper (Yang et al., ICLR 2024, Sec. 3.2: merged model
theta(lambdas) = theta_0 + sum_k lambda_k tau_k, task-wise or per layer; objective
min_lambdas sum_k sum_{x in B_k} H(f(x; theta(lambdas))) over unlabeled test batches B_k; Adam):
sample, merge once, forward, entropy, backward, Adam step. `adamerge` is the loop around it: resume,
the non-finite guard, ranks, progress, evaluation cadence, saving.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .cli import RunStopped
from .config import RunConfig, resume_conflicts
from .distributed import Ranks
from .evaluation import Normalizer
from .merged_encoder import MergedEncoder, autocast
from .merging import LAYER_WISE, TASK_WISE, CoefficientTable
from .problem import TaskData
from .run_log import TensorBoardLog

Evaluate = Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]]  # encoder -> accuracy (%) per task


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row: [N, C] -> [N]."""
    logits = logits.float()
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


class Lambdas(torch.nn.Module):
    """The learned merging coefficients: `raw` [R, T] (R = 1 task-wise, R = entries layer-wise).

    forward() = clamp(raw, 0, 1), applied inside the forward as in the authors' code (a raw value
    outside [0, 1] gets zero gradient), or raw itself with clamp=False.
    """

    def __init__(self, rows: int, num_tasks: int, init: float | torch.Tensor, clamp: bool = True):
        super().__init__()
        raw = init if isinstance(init, torch.Tensor) else torch.full((rows, num_tasks), float(init))
        self.raw = torch.nn.Parameter(raw.detach().clone().float())
        self.clamp = clamp

    def forward(self) -> torch.Tensor:
        """lambdas [R, T]."""
        return self.of(self.raw)

    def of(self, raw: torch.Tensor) -> torch.Tensor:
        """The lambdas [R, T] that raw values [R, T] stand for (clamped unless clamp=False)."""
        return raw.clamp(0.0, 1.0) if self.clamp else raw


@dataclass
class AdaMerging:
    """What one step works on, fixed for the run (built by `adamerge`)."""

    merged: MergedEncoder
    lambdas: Lambdas
    optimizer: torch.optim.Optimizer
    tasks: Sequence[TaskData]
    normalize: Normalizer
    config: RunConfig
    generator: torch.Generator     # the sampler
    ranks: Ranks = Ranks()

    @property
    def mine(self) -> list[int]:
        """Indices of the tasks this rank computes the loss of."""
        return [i for i in range(len(self.tasks)) if self.ranks.owns(i)]


def adamerging_step(run: AdaMerging) -> float:
    """One AdaMerging step; returns the loss (sum over tasks of the mean batch entropy, summed over ranks).

    FloatingPointError (before the update) when the loss or the gradient of lambdas is not finite.
    """
    config = run.config
    per_task = config.batch_size_adapt * config.batches_per_step
    batches = [sample(t, per_task, run.generator) for t in run.tasks]      # 1. unlabeled test batches B_k
    run.optimizer.zero_grad(set_to_none=True)
    lambdas = run.lambdas()                                                 # 2. theta(lambdas), once per step (in `backward`)

    def loss_of(task_ids: Sequence[int], leaves: dict[str, torch.Tensor]) -> torch.Tensor:
        x = run.normalize(torch.cat([run.tasks[i].images[batches[i]] for i in task_ids]))
        with autocast(run.merged.device, config.precision):
            features = run.merged(leaves, x).split(per_task)               # 3. forward
        total = 0.0
        for i, f in zip(task_ids, features):                               # 4. entropy of each task's predictions
            labels = run.tasks[i].labels[batches[i]].to(run.merged.device) if config.objective == "supervised" else None
            total = total + task_loss(run.tasks[i].head(f.float()), labels, config.batches_per_step, config.objective)
        return total

    loss = backward(run, lambdas, loss_of)                                  # 5. gradient of lambdas
    grad = run.lambdas.raw.grad if run.lambdas.raw.grad is not None else torch.zeros_like(run.lambdas.raw)
    run.ranks.all_reduce_(grad)
    run.ranks.all_reduce_(loss)
    if not (torch.isfinite(grad).all() and torch.isfinite(loss)):
        raise FloatingPointError("the loss or its gradient is NaN/inf")
    run.lambdas.raw.grad = grad
    run.optimizer.step()                                                    # 6. Adam update of lambdas
    return float(loss)


def backward(run: AdaMerging, lambdas: torch.Tensor,
             loss_of: Callable[[Sequence[int], dict[str, torch.Tensor]], torch.Tensor]) -> torch.Tensor:
    """Merge at `lambdas` [R, T], backpropagate this rank's loss into them; returns the loss (detached, scalar).

    adapt_mode "fused": one forward over all tasks' batches; each merged parameter's gradient is
    contracted into the lambdas gradient as soon as it exists (`MergedEncoder.streamed_params`), so
    they are never all held at once. "per-task": backward one task at a time into detached copies of
    the merged parameters, then once from those into the lambdas: peak activation memory of one
    task, same gradient up to float summation order.
    """
    mine = run.mine
    total = torch.zeros((), device=run.merged.device)
    if run.config.adapt_mode == "fused":
        params, finish = run.merged.streamed_params(lambdas)
        with run.merged.bound(params):
            loss = loss_of(mine, params) if mine else params[next(iter(params))].sum() * 0
            loss.backward()
        finish()
        return total + loss.detach()
    params = run.merged.params(lambdas)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with run.merged.bound(leaves):
        for i in mine:
            loss = loss_of([i], leaves)
            loss.backward()
            total += loss.detach()
    if mine:
        torch.autograd.backward([params[k] for k in leaves], [leaves[k].grad for k in leaves])
    return total


def sample(task: TaskData, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` image indices of `task`: the first of a fresh shuffle.

    What re-creating a shuffled DataLoader every step (the authors' code) draws, without re-creating
    anything. With fewer images than `count` (a small --adapt-fraction), shuffles are chained so
    every batch stays full.
    """
    n = len(task.images)
    rounds = -(-count // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:count]


def task_loss(logits: torch.Tensor, labels: torch.Tensor | None, batches: int, objective: str) -> torch.Tensor:
    """One task's loss: per batch the mean entropy (or cross-entropy with labels), summed over its batches.

    logits [batches * B, C] (batch-major); labels [batches * B] (objective "supervised" only).
    """
    logits = logits.float()
    per_sample = softmax_entropy(logits) if objective == "entropy" else F.cross_entropy(logits, labels, reduction="none")
    return per_sample.view(batches, -1).mean(dim=1).sum()


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


# ---------------------------------------------------------------------------------------------- the loop


# The resumable settings that shape the learned lambdas: recorded per step range ("segments")
SEGMENT_FIELDS = ("lr", "precision", "device")


@dataclass
class AdaptResult:
    """The learned table, the trajectory ({"step", "loss"}, and "accuracy" where evaluated), timings (s),
    and the settings used per step range: [{"steps": [first, last], "lr": ..., "precision": ..., "device": ...}]."""

    table: CoefficientTable
    trajectory: list[dict] = field(default_factory=list)
    step_seconds: float = 0.0      # median wall time of one optimizer step
    total_seconds: float = 0.0
    segments: list[dict] = field(default_factory=list)


class AdaptationStopped(RunStopped):
    """Adaptation stopped early (non-finite loss); `state` holds the last good lambdas (None: there were none)."""

    def __init__(self, message: str, state: dict | None):
        super().__init__(message)
        self.state = state


class ResumeError(ValueError):
    """A saved state cannot continue this run (other settings, tasks, table shape, or past --steps)."""


def _check_resume(resume: dict, config: RunConfig, names: list[str], shape: tuple[int, ...]) -> None:
    if "config" not in resume:  # refused: its settings (and a NaN-stopped state's lambdas) cannot be trusted
        raise ResumeError("cannot resume: the saved state holds no run settings (written by an older version), "
                          "so they cannot be checked; rerun without --resume")
    conflicts = resume_conflicts(resume["config"], config)
    if conflicts:
        raise ResumeError(conflicts)
    if tuple(resume["raw"].shape) != shape or resume["tasks"] != names:
        raise ResumeError(f"cannot resume: saved state is for tasks {resume['tasks']} with a "
                          f"{tuple(resume['raw'].shape)} table; this run has {names}, {shape}")
    if config.steps < resume["step"]:
        raise ResumeError(f"cannot resume: the saved state is at step {resume['step']}, past --steps {config.steps}; "
                          f"pass --steps {resume['step']} or more")


def _segments(previous: list[dict], first: int, last: int, config: RunConfig) -> list[dict]:
    """`previous` plus steps [first, last] run with `config`; merged into the last range when the settings match."""
    if last < first:
        return list(previous)
    now = {k: getattr(config, k) for k in SEGMENT_FIELDS}
    if previous and previous[-1]["steps"][1] == first - 1 and all(previous[-1][k] == v for k, v in now.items()):
        return previous[:-1] + [{**previous[-1], "steps": [previous[-1]["steps"][0], last]}]
    return list(previous) + [{"steps": [first, last], **now}]


def _check(config: RunConfig, granularity: str, tasks: Sequence[TaskData]) -> None:
    if granularity not in (TASK_WISE, LAYER_WISE):
        raise ValueError(f"granularity must be {TASK_WISE!r} or {LAYER_WISE!r}, got {granularity!r}")
    if config.objective == "supervised" and any(t.labels is None for t in tasks):
        raise ValueError("the supervised objective needs labels for every task")


def adamerge(merged: MergedEncoder, tasks: Sequence[TaskData], normalize: Normalizer, config: RunConfig, granularity: str,
             evaluate: Evaluate | None = None, resume: dict | None = None, save_state: Callable[[dict], None] | None = None,
             ranks: Ranks = Ranks(), log: TensorBoardLog | None = None) -> AdaptResult:
    """Run `config.steps` AdaMerging steps and return the learned lambdas table and the trajectory.

    `granularity`: "task-wise" (lambdas [1, T]) or "layer-wise" ([entries, T]). `resume` is a state
    from `save_state` (lambdas, Adam, sampler, trajectory, config, segments): the run continues as if it
    had never stopped, with this config's RESUMABLE settings (config.py; a new --lr replaces the one the
    Adam state brings back, more --steps continue); ResumeError if another setting differs.
    `save_state` gets the state every `config.save_every` steps, at the end, on Ctrl-C, and on a
    non-finite loss or gradient at step k: then the last good state, the one from before step k-1's
    update (the lambdas step k-1 evaluated finitely; step k's lambdas are step k-1's result), or
    nothing if no step of this run was finite. Under torchrun, `ranks` splits the tasks. `log` gets each
    trajectory entry as it is made, with the lambdas as of its step (run_log: --tensorboard).
    """
    _check(config, granularity, tasks)
    rows = 1 if granularity == TASK_WISE else len(merged.entries)
    lambdas = Lambdas(rows, merged.num_tasks, config.init, config.clamp).to(merged.device)
    run = AdaMerging(merged, lambdas, torch.optim.Adam(lambdas.parameters(), lr=config.lr), tasks, normalize, config,
                     torch.Generator().manual_seed(config.seed), ranks)
    names = [t.name for t in tasks]
    entries = list(merged.entries) if rows > 1 else None
    trajectory: list[dict] = []
    segments: list[dict] = []
    first = 1
    if resume is not None:
        _check_resume(resume, config, names, tuple(lambdas.raw.shape))
        with torch.no_grad():
            lambdas.raw.copy_(resume["raw"])
        run.optimizer.load_state_dict(resume["optimizer"])
        for group in run.optimizer.param_groups:  # the loaded Adam state brings the saved lr back
            group["lr"] = config.lr
        run.generator.set_state(resume["generator"])
        trajectory, segments = list(resume["trajectory"]), list(resume["segments"])
        first = resume["step"] + 1

    completed = first - 1                      # last step whose update is applied
    sampler_state = run.generator.get_state()  # the sampler as it was right after that step

    def table() -> CoefficientTable:
        return CoefficientTable(lambdas().detach().cpu().clone(), names, entries)

    def snapshot() -> tuple:
        """What a saved state needs that the run goes on changing (taken every step; the rest is derived in `state`)."""
        return completed, lambdas.raw.detach().cpu().clone(), copy.deepcopy(run.optimizer.state_dict()), sampler_state.clone(), len(trajectory)

    def state(snap: tuple | None = None) -> dict:
        """The saved state as of `snap` (default: now); nothing in it changes when the run goes on."""
        step, raw, adam, sampler, recorded = snap or snapshot()
        return {"step": step, "tasks": names, "raw": raw, "table": CoefficientTable(lambdas.of(raw).clone(), names, entries),
                "optimizer": adam, "generator": sampler, "trajectory": trajectory[:recorded], "config": config.to_json(),
                "segments": _segments(segments, first, step, config)}

    def record_eval(step: int) -> None:
        if evaluate is not None:
            accs = evaluate(merged.encoder(lambdas().detach(), config.precision))
            trajectory.append({"step": step, "accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs)})
            if log is not None:
                log.record(trajectory[-1], table())

    if resume is None:
        record_eval(0)
    good = None  # the last state whose lambdas gave a finite loss and gradient
    times = []
    start = time.perf_counter()
    bar = tqdm(range(first, config.steps + 1), desc=f"{granularity} AdaMerging", dynamic_ncols=True,
               disable=not config.progress or not ranks.is_main, initial=first - 1, total=config.steps)
    try:
        for step in bar:
            before = snapshot()
            t0 = time.perf_counter()
            try:
                value = adamerging_step(run)
            except FloatingPointError as e:
                if good is None:  # not even the lambdas this run started from were finite
                    advice = ("at the resumed lambdas; stopped, nothing saved: rerun without --resume, with a lower --lr"
                              if resume is not None else "at the initial lambdas; stopped, nothing saved: check the inputs (models, heads, images)")
                    raise AdaptationStopped(f"AdaMerging step {step}: {e} {advice}", None) from None
                raise AdaptationStopped(f"AdaMerging step {step}: {e}; stopped, keeping the state of step {good[0]}, "
                                        "the last whose loss and gradient were finite", state(good)) from None
            good = before
            times.append(time.perf_counter() - t0)
            trajectory.append({"step": step, "loss": value})
            if log is not None:
                log.record(trajectory[-1], table())
            completed, sampler_state = step, run.generator.get_state()
            bar.set_postfix(loss=f"{value:.4f}")
            if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                record_eval(step)
            if save_state is not None and config.save_every and step % config.save_every == 0:
                save_state(state())
    except KeyboardInterrupt:
        if save_state is not None:
            save_state(state())
        raise
    except AdaptationStopped as stop:
        if save_state is not None and stop.state is not None:
            save_state(stop.state)
        raise
    if config.steps >= first:
        record_eval(config.steps)
    if save_state is not None:
        save_state(state())
    return AdaptResult(table(), trajectory, statistics.median(times) if times else 0.0, time.perf_counter() - start,
                       _segments(segments, first, completed, config))
