"""AdaMerging: learn the coefficient table by entropy minimisation on unlabeled test batches.

One functional merged model: each optimizer step computes the merged visual parameters once on the
compute device from (theta_0, stacked task vectors, table) and calls the encoder with
`torch.func.functional_call`, so every task's forward in that step shares them and gradients flow
to the table only. Test images come from in-memory uint8 tensors (decoded once, see datasets.py).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm.auto import tqdm

from .evaluation import Normalizer
from .heads import Head
from .merging import CoefficientTable, TaskVectors
from .models import VISUAL_PREFIX


@dataclass
class AdaptConfig:
    steps: int = 500
    lr: float = 1e-3
    init: float = 0.3
    batch_size: int = 16          # images per batch (the authors: 16)
    batches_per_step: int = 2     # batches per task per step (the authors: 2)
    clamp: bool = True            # clamp to [0, 1] inside the forward (zero gradient outside)
    granularity: str = "layer"    # "layer": one row per entry; "task": one row for all
    objective: str = "entropy"    # "entropy" (AdaMerging) or "supervised" (oracle ablation: CE on labels)
    mode: str = "fused"           # "fused": one forward over all tasks' batches; "per-task": backward per task
    eval_every: int = 0           # evaluate every N steps (0: only before and after)
    seed: int = 0
    progress: bool = True


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


class MergedEncoder:
    """The image encoder at theta_0 + table x task vectors, evaluated functionally on `device`."""

    def __init__(self, visual: torch.nn.Module, theta0: dict[str, torch.Tensor], tau: TaskVectors, keys: Sequence[str], device: str | torch.device):
        self.device = torch.device(device)
        self.keys = list(keys)
        self.visual = visual.to(self.device).eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        # Only the visual rows matter for the forward; text-side rows are never used, so they get no gradient.
        self.rows = [(j, k[len(VISUAL_PREFIX):]) for j, k in enumerate(self.keys) if k.startswith(VISUAL_PREFIX)]
        self.theta0 = {name: theta0[VISUAL_PREFIX + name].to(self.device, torch.float32) for _, name in self.rows}
        self.tau = {name: tau[VISUAL_PREFIX + name].to(self.device, torch.float32) for _, name in self.rows}
        self.num_tasks = next(iter(self.tau.values())).shape[0]

    def params(self, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """Merged visual parameters for a full [R, T+1] table (R = 1 or len(keys))."""
        table = table.to(self.device)
        out = {}
        for j, name in self.rows:
            c = table[0 if table.shape[0] == 1 else j]
            out[name] = c[0] * self.theta0[name] + torch.tensordot(c[1:], self.tau[name], dims=1)
        return out

    def __call__(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.visual, params, (images,))

    def encoder(self, table: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A plain function images -> features at a fixed table (for evaluation)."""
        with torch.no_grad():
            params = self.params(table)
        return lambda x: self(params, x)


@dataclass
class TaskData:
    name: str
    images: torch.Tensor   # uint8 [N, 3, S, S]
    head: Head
    labels: torch.Tensor | None = None  # only read by the supervised oracle and by evaluation


@dataclass
class AdaptResult:
    table: CoefficientTable
    trajectory: list[dict] = field(default_factory=list)  # {"step", "loss"} and, where evaluated, "accuracy"
    step_seconds: float = 0.0      # median wall time of one optimizer step
    total_seconds: float = 0.0


class CoefficientModel(torch.nn.Module):
    """The trainable table: raw task columns [R, T]; the pretrained column is fixed at 1."""

    def __init__(self, rows: int, num_tasks: int, init: float | torch.Tensor, clamp: bool):
        super().__init__()
        raw = init if isinstance(init, torch.Tensor) else torch.full((rows, num_tasks), float(init))
        self.raw = torch.nn.Parameter(raw.detach().clone().float())
        self.clamp = clamp

    def forward(self) -> torch.Tensor:
        task = self.raw.clamp(0.0, 1.0) if self.clamp else self.raw
        return torch.cat([torch.ones_like(task[:, :1]), task], dim=1)


def _sample(task: TaskData, count: int, generator: torch.Generator) -> torch.Tensor:
    # A fresh shuffle per step, first `count` images: what re-creating a shuffled DataLoader every
    # step (the authors' code) draws, without re-creating anything.
    return torch.randperm(len(task.images), generator=generator)[:count]


def _task_loss(logits: torch.Tensor, labels: torch.Tensor | None, batches: int, objective: str) -> torch.Tensor:
    """Per batch: mean entropy (or CE); summed over the task's batches."""
    per_sample = softmax_entropy(logits) if objective == "entropy" else F.cross_entropy(logits, labels, reduction="none")
    return per_sample.view(batches, -1).mean(dim=1).sum()


def adamerge(
    merged: MergedEncoder,
    tasks: Sequence[TaskData],
    normalize: Normalizer,
    config: AdaptConfig,
    evaluate: Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]] | None = None,
    init_table: torch.Tensor | None = None,
    on_step: Callable[[int, CoefficientModel, torch.optim.Optimizer], None] | None = None,
) -> AdaptResult:
    """Run AdaMerging and return the learned table (pretrained column first) and the trajectory."""
    if config.objective not in ("entropy", "supervised"):
        raise ValueError(f"objective must be 'entropy' or 'supervised', got {config.objective!r}")
    if config.objective == "supervised" and any(t.labels is None for t in tasks):
        raise ValueError("the supervised objective needs labels for every task")
    num_tasks = merged.num_tasks
    rows = 1 if config.granularity == "task" else len(merged.keys)
    init = init_table[:, 1:] if init_table is not None else config.init
    coefficients = CoefficientModel(rows, num_tasks, init, config.clamp).to(merged.device)
    optimizer = torch.optim.Adam(coefficients.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    per_task = config.batch_size * config.batches_per_step
    names = [t.name for t in tasks]
    result = AdaptResult(CoefficientTable(coefficients().detach().cpu(), names, list(merged.keys) if rows > 1 else None))

    def record_eval(step: int) -> None:
        if evaluate is None:
            return
        accs = evaluate(merged.encoder(coefficients().detach()))
        result.trajectory.append({"step": step, "accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs)})

    record_eval(0)
    times = []
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc=f"{config.granularity}-wise AdaMerging", disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        batch_index = [_sample(t, per_task, generator) for t in tasks]
        optimizer.zero_grad(set_to_none=True)
        params = merged.params(coefficients())
        loss_value = 0.0
        if config.mode == "fused":
            x = normalize(torch.cat([t.images[i] for t, i in zip(tasks, batch_index)]))
            features = merged(params, x).split(per_task)
            loss = 0.0
            for t, f, i in zip(tasks, features, batch_index):
                labels = t.labels[i].to(merged.device) if config.objective == "supervised" else None
                loss = loss + _task_loss(t.head(f), labels, config.batches_per_step, config.objective)
            loss.backward()
            loss_value = float(loss.detach())
        elif config.mode == "per-task":
            # Backward one task at a time into detached copies of the merged parameters, then once
            # from those into the table: peak activation memory of one task, same gradient.
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            for t, i in zip(tasks, batch_index):
                labels = t.labels[i].to(merged.device) if config.objective == "supervised" else None
                loss = _task_loss(t.head(merged(leaves, normalize(t.images[i]))), labels, config.batches_per_step, config.objective)
                loss.backward()
                loss_value += float(loss.detach())
            torch.autograd.backward([params[k] for k in leaves], [leaves[k].grad for k in leaves])
        else:
            raise ValueError(f"mode must be 'fused' or 'per-task', got {config.mode!r}")
        if not torch.isfinite(coefficients.raw.grad).all() or loss_value != loss_value:
            raise FloatingPointError(f"AdaMerging step {step}: loss or gradient is NaN/inf; last good coefficients kept")
        optimizer.step()
        times.append(time.perf_counter() - t0)
        result.trajectory.append({"step": step, "loss": loss_value})
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if on_step is not None:
            on_step(step, coefficients, optimizer)
        if config.eval_every and step % config.eval_every == 0 and step != config.steps:
            record_eval(step)
    if config.steps:
        record_eval(config.steps)
    result.table = CoefficientTable(coefficients().detach().cpu(), names, list(merged.keys) if rows > 1 else None)
    result.step_seconds = statistics.median(times) if times else 0.0
    result.total_seconds = time.perf_counter() - start
    return result
