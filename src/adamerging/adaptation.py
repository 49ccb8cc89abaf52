"""AdaMerging: learn the coefficient table by entropy minimisation on unlabeled test batches.

One functional merged model: each optimizer step computes the merged visual parameters once on the
compute device from (theta_0, stacked task vectors, table) and calls the encoder with
`torch.func.functional_call`, so every task's forward in that step shares them and gradients flow
to the table only. Test images come from in-memory uint8 tensors (decoded once, see datasets.py).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm.auto import tqdm

from .distributed import Ranks
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
    precision: str = "fp32"       # "fp32" or "bf16" (autocast for the encoder forward)
    eval_every: int = 0           # evaluate every N steps (0: only before and after)
    save_every: int = 0           # call `save_state` every N steps (0: only on interrupt / failure)
    seed: int = 0
    progress: bool = True


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row."""
    logits = logits.float()
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


class MergedEncoder:
    """The image encoder at theta_0 + table x task vectors, evaluated functionally on `device`."""

    def __init__(self, visual: torch.nn.Module, theta0: dict[str, torch.Tensor], tau: TaskVectors, keys: Sequence[str],
                 device: str | torch.device, checkpointing: bool = False, compile: bool = False):
        self.device = torch.device(device)
        self.keys = list(keys)
        self.visual = visual.to(self.device).eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        # Recompute block activations in backward: ViT-L/14 memory in exchange for time. Set both ways,
        # since the module may be shared with an earlier MergedEncoder.
        self.checkpointing = checkpointing
        self.visual.set_grad_checkpointing(checkpointing)
        # Only the visual rows matter for the forward; text-side rows are never used, so they get no gradient.
        self.rows = [(j, k[len(VISUAL_PREFIX):]) for j, k in enumerate(self.keys) if k.startswith(VISUAL_PREFIX)]
        self.theta0 = {name: theta0[VISUAL_PREFIX + name].to(self.device, torch.float32) for _, name in self.rows}
        self.tau = {name: tau[VISUAL_PREFIX + name].to(self.device, torch.float32) for _, name in self.rows}
        self.num_tasks = next(iter(self.tau.values())).shape[0]
        self._forward = torch.compile(self._call) if compile else self._call

    def params(self, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """Merged visual parameters for a full [R, T+1] table (R = 1 or len(keys))."""
        table = table.to(self.device)
        out = {}
        for j, name in self.rows:
            c = table[0 if table.shape[0] == 1 else j]
            out[name] = c[0] * self.theta0[name] + torch.tensordot(c[1:], self.tau[name], dims=1)
        return out

    def _call(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.visual, params, (images,))

    def __call__(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return self._forward(params, images)

    def bound(self, params: dict[str, torch.Tensor]):
        """Keep `params` bound to the module until the backward is done.

        Activation checkpointing recomputes each block during backward, after `functional_call` has
        put the module's own weights back; the recomputation must see the merged ones. (torch.func
        uses this same context internally; without checkpointing it is not needed.)
        """
        if not self.checkpointing:
            return contextlib.nullcontext()
        from torch.nn.utils.stateless import _reparametrize_module
        return _reparametrize_module(self.visual, params)

    def encoder(self, table: torch.Tensor, precision: str = "fp32") -> Callable[[torch.Tensor], torch.Tensor]:
        """A plain function images -> features at a fixed table (for evaluation)."""
        with torch.no_grad():
            params = self.params(table)

        def encode(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, precision):
                return self(params, x).float()
        return encode


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


class AdaptationStopped(RuntimeError):
    """Adaptation stopped early (non-finite loss); `state` holds the last good coefficients."""

    def __init__(self, message: str, state: dict):
        super().__init__(message)
        self.state = state


def _sample(task: TaskData, count: int, generator: torch.Generator) -> torch.Tensor:
    # A fresh shuffle per step, first `count` images: what re-creating a shuffled DataLoader every
    # step (the authors' code) draws, without re-creating anything. With fewer images than `count`
    # (a small --adapt-fraction), shuffles are chained so every batch stays full.
    n = len(task.images)
    rounds = -(-count // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:count]


def _task_loss(logits: torch.Tensor, labels: torch.Tensor | None, batches: int, objective: str) -> torch.Tensor:
    """Per batch: mean entropy (or CE); summed over the task's batches."""
    logits = logits.float()
    per_sample = softmax_entropy(logits) if objective == "entropy" else F.cross_entropy(logits, labels, reduction="none")
    return per_sample.view(batches, -1).mean(dim=1).sum()


def adamerge(
    merged: MergedEncoder,
    tasks: Sequence[TaskData],
    normalize: Normalizer,
    config: AdaptConfig,
    evaluate: Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]] | None = None,
    resume: dict | None = None,
    save_state: Callable[[dict], None] | None = None,
    ranks: Ranks = Ranks(),
) -> AdaptResult:
    """Run AdaMerging and return the learned table (pretrained column first) and the trajectory.

    `resume` is a state dict from `save_state` (coefficients, Adam, sampler, trajectory): the run
    continues as if it had never stopped. Under torchrun, `ranks` splits the tasks across processes.
    """
    if config.objective not in ("entropy", "supervised"):
        raise ValueError(f"objective must be 'entropy' or 'supervised', got {config.objective!r}")
    if config.objective == "supervised" and any(t.labels is None for t in tasks):
        raise ValueError("the supervised objective needs labels for every task")
    if config.mode not in ("fused", "per-task"):
        raise ValueError(f"mode must be 'fused' or 'per-task', got {config.mode!r}")
    rows = 1 if config.granularity == "task" else len(merged.keys)
    coefficients = CoefficientModel(rows, merged.num_tasks, config.init, config.clamp).to(merged.device)
    optimizer = torch.optim.Adam(coefficients.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    names = [t.name for t in tasks]
    row_keys = list(merged.keys) if rows > 1 else None
    trajectory: list[dict] = []
    first = 1
    if resume is not None:
        if tuple(resume["raw"].shape) != tuple(coefficients.raw.shape) or resume["tasks"] != names:
            raise ValueError(f"cannot resume: saved state is for tasks {resume['tasks']} with a "
                             f"{tuple(resume['raw'].shape)} table; this run has {names}, {tuple(coefficients.raw.shape)}")
        with torch.no_grad():
            coefficients.raw.copy_(resume["raw"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        trajectory = list(resume["trajectory"])
        first = resume["step"] + 1

    completed = first - 1              # last step whose update is applied
    sampler_state = generator.get_state()  # the sampler as it was right after that step

    def state() -> dict:
        return {"step": completed, "tasks": names, "raw": coefficients.raw.detach().cpu().clone(),
                "table": CoefficientTable(coefficients().detach().cpu(), names, row_keys),
                "optimizer": optimizer.state_dict(), "generator": sampler_state.clone(), "trajectory": list(trajectory)}

    def record_eval(step: int) -> None:
        if evaluate is not None:
            accs = evaluate(merged.encoder(coefficients().detach(), config.precision))
            trajectory.append({"step": step, "accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs)})

    if first == 1:
        record_eval(0)
    mine = [i for i in range(len(tasks)) if ranks.owns(i)]
    per_task = config.batch_size * config.batches_per_step
    times = []
    start = time.perf_counter()
    bar = tqdm(range(first, config.steps + 1), desc=f"{config.granularity}-wise AdaMerging", dynamic_ncols=True,
               disable=not config.progress or not ranks.is_main, initial=first - 1, total=config.steps)
    try:
        for step in bar:
            t0 = time.perf_counter()
            batch_index = [_sample(t, per_task, generator) for t in tasks]  # every rank draws for every task
            optimizer.zero_grad(set_to_none=True)
            params = merged.params(coefficients())
            loss_value = torch.zeros((), device=merged.device)

            def task_losses(task_ids, leaves):
                x = normalize(torch.cat([tasks[i].images[batch_index[i]] for i in task_ids]))
                with autocast(merged.device, config.precision):
                    features = merged(leaves, x).split(per_task)
                total = 0.0
                for i, f in zip(task_ids, features):
                    labels = tasks[i].labels[batch_index[i]].to(merged.device) if config.objective == "supervised" else None
                    total = total + _task_loss(tasks[i].head(f.float()), labels, config.batches_per_step, config.objective)
                return total

            if config.mode == "fused":
                with merged.bound(params):
                    loss = task_losses(mine, params) if mine else params[next(iter(params))].sum() * 0
                    loss.backward()
                loss_value += loss.detach()
            else:
                # Backward one task at a time into detached copies of the merged parameters, then once
                # from those into the table: peak activation memory of one task, same gradient.
                leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
                with merged.bound(leaves):
                    for i in mine:
                        loss = task_losses([i], leaves)
                        loss.backward()
                        loss_value += loss.detach()
                if mine:
                    torch.autograd.backward([params[k] for k in leaves], [leaves[k].grad for k in leaves])
            grad = coefficients.raw.grad if coefficients.raw.grad is not None else torch.zeros_like(coefficients.raw)
            ranks.all_reduce_(grad)
            ranks.all_reduce_(loss_value)
            value = float(loss_value)
            if not (torch.isfinite(grad).all() and torch.isfinite(loss_value)):
                raise AdaptationStopped(f"AdaMerging step {step}: the loss or its gradient is NaN/inf; stopped, "
                                        f"coefficients of step {completed} kept", state())
            coefficients.raw.grad = grad
            optimizer.step()
            times.append(time.perf_counter() - t0)
            trajectory.append({"step": step, "loss": value})
            completed, sampler_state = step, generator.get_state()
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
        if save_state is not None:
            save_state(stop.state)
        raise
    if config.steps >= first:
        record_eval(config.steps)
    if save_state is not None:
        save_state(state())
    return AdaptResult(CoefficientTable(coefficients().detach().cpu(), names, row_keys), trajectory,
                       statistics.median(times) if times else 0.0, time.perf_counter() - start)
