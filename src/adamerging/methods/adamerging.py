"""AdaMerging: learn the merging coefficients lambdas by entropy minimisation on unlabeled test
batches.

Read `adamerging_step` beside the paper (Yang et al., ICLR 2024, Sec. 3.2: merged model
theta(lambdas) = theta_0 + sum_k lambda_k tau_k, task-wise or per layer; objective
min_lambdas sum_k sum_{x in B_k} H(f(x; theta(lambdas))) over unlabeled test batches B_k; Adam):
sample, merge once, forward, entropy, backward, Adam step. `adamerge` runs it in the training loop
(`loop.Loop`: resume, the non-finite and out-of-memory guards, evaluation cadence, saving);
`Learned` is the method registry's merge of the four AdaMerging methods.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import LAYER_WISE, TASK_WISE, CoefficientTable
from adamerging.methods.feed import Feed, Part, adaptation_subset, parts_of, sample
from adamerging.methods.job import Job, Outcome
from adamerging.methods.loop import (
    SEGMENT_FIELDS,
    AdaptResult,
    Evaluate,
    Loop,
    ResumeError,
    naming,
)
from adamerging.methods.plan import Plan, measured, plan_for, smaller_step
from adamerging.models.evaluation import Normalizer
from adamerging.models.objectives import OBJECTIVES
from adamerging.reporting.run_log import TensorBoardLog
from adamerging.run.config import RunConfig
from adamerging.run.problem import TaskData
from adamerging.runtime.device import PeakMeter, autocast, free_bytes, ieee_fp32
from adamerging.runtime.distributed import Ranks


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

    merged: MergedEncoder  # or any merge with its params / streamed_params (adarank.RankMasked)
    lambdas: torch.nn.Module  # Lambdas, or any module of the learned parameters (adarank.RankMasks)
    optimizer: torch.optim.Optimizer
    tasks: Sequence[TaskData]
    normalize: Normalizer
    config: RunConfig
    generator: torch.Generator  # the sampler
    ranks: Ranks = Ranks()
    plan: Plan = field(default_factory=lambda: Plan("fused"))
    feed: Feed | None = None  # this rank's step images on the device (built on the first step)

    @property
    def mine(self) -> list[int]:
        """Indices of the tasks this rank computes the loss of."""
        return [i for i in range(len(self.tasks)) if self.ranks.owns(i)]


def adamerging_step(run: AdaMerging) -> float:
    """One AdaMerging step; returns the loss (sum over tasks of the mean batch entropy, summed over
    ranks).

    FloatingPointError (before the update) when the loss or the gradient of lambdas is not finite.
    The loss and its finiteness come to the host together: the step's one transfer.
    """
    config = run.config
    per_task = config.images_per_task
    # 1. unlabeled test batches B_k
    batches = [sample(t, per_task, run.generator) for t in run.tasks]
    if run.feed is None:  # once per run: the images' place is decided on the first step
        run.feed = Feed(run.tasks, run.mine, run.merged.device, per_task, run.generator)
    images = run.feed.images(batches)
    run.optimizer.zero_grad(set_to_none=True)
    # 2. theta(lambdas), once per step (in `backward`)
    lambdas = run.lambdas()

    def loss_of(parts: Sequence[Part], leaves: dict[str, torch.Tensor]) -> torch.Tensor:
        x = run.normalize(torch.cat([images[i][a:b] for i, a, b in parts]))
        with autocast(run.merged.device, config.precision):
            features = run.merged(leaves, x).split([b - a for _, a, b in parts])  # 3. forward
        total = 0.0
        # 4. entropy of each task's predictions
        for (i, a, b), f in zip(parts, features):
            labels = (
                run.tasks[i].labels[batches[i][a:b]].to(run.merged.device, non_blocking=True)
                if OBJECTIVES[config.objective].needs_labels
                else None
            )
            total = total + task_loss(
                run.tasks[i].head(f.float()), labels, config.batch_size_adapt, config.objective
            )
        return total

    loss = backward(run, lambdas, loss_of, per_task)  # 5. gradient of lambdas
    learned = list(run.lambdas.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in learned]
    for grad in grads:
        run.ranks.all_reduce_(grad)
    run.ranks.all_reduce_(loss)
    # the next step's images, while the device works
    run.feed.prefetch()
    finite = torch.isfinite(loss)
    for grad in grads:
        finite = finite & torch.isfinite(grad).all()
    value, ok = torch.stack([loss.float(), finite.float()]).tolist()
    if not ok:
        raise FloatingPointError("the loss or its gradient is NaN/inf")
    for p, grad in zip(learned, grads):
        p.grad = grad
    # 6. Adam update of lambdas
    run.optimizer.step()
    return value


def backward(
    run: AdaMerging,
    lambdas: torch.Tensor,
    loss_of: Callable[[Sequence[Part], dict[str, torch.Tensor]], torch.Tensor],
    per_task: int,
) -> torch.Tensor:
    """Merge at `lambdas` [R, T], backpropagate this rank's loss into them; returns the loss
    (detached, scalar).

    Plan "fused": one forward over all tasks' batches; each merged parameter's gradient is
    contracted into the lambdas gradient as soon as it exists (`MergedEncoder.streamed_params`), so
    they are never all held at once. "chunked" / "per-task": forward and backward a chunk of images
    (or one task's) at a time into detached copies of the merged parameters, their gradients
    accumulated, then one contraction from those into the lambdas: peak activation memory of one
    chunk, the same gradient up to float summation order. A plan without a chunk size measures the
    first chunk's memory per image and sets `run.plan` (`chunk_that_fits` the free device memory).
    """
    mine = run.mine
    whole = [(i, 0, per_task) for i in mine]
    total = torch.zeros((), device=run.merged.device)
    if run.plan.mode == "fused":
        params, finish = run.merged.streamed_params(lambdas)
        with run.merged.bound(params):
            loss = loss_of(whole, params) if mine else params[next(iter(params))].sum() * 0
            loss.backward()
        finish()
        return total + loss.detach()
    params = run.merged.params(lambdas)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    images, start, chunk = len(whole) * per_task, 0, run.plan.chunk
    with run.merged.bound(leaves):
        while start < images:
            # not measured yet: one batch first
            size = chunk or min(images, run.config.batch_size_adapt)
            meter = PeakMeter(run.merged.device) if not chunk else None
            loss = loss_of(parts_of(whole, per_task, start, start + size), leaves)
            loss.backward()
            total += loss.detach()
            start += size
            if meter is not None:
                run.plan = measured(
                    run.plan, images, meter.grown() / size, free_bytes(run.merged.device)
                )
                # fused from the next step on: this step's rest at once
                chunk = run.plan.chunk or images
    if mine:
        # entries no expert changed may be constants of the merge (AdaRank's origin)
        learned = [k for k in leaves if params[k].requires_grad]
        with ieee_fp32():
            torch.autograd.backward([params[k] for k in learned], [leaves[k].grad for k in learned])
    return total


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, batch_size: int, objective: str
) -> torch.Tensor:
    """One task's loss: per batch the mean of the objective's per-image loss (`OBJECTIVES`: entropy,
    or cross-entropy with labels), summed over its batches.

    logits [N, C] (batch-major, batches of `batch_size`); labels [N] (objectives that need them).
    A part of the batches (a chunk; N not a multiple of batch_size) gives its share: the sum over
    its images / batch_size, so the parts of a step add up to the step's loss.
    """
    per_sample = OBJECTIVES[objective].loss(logits.float(), labels)
    if len(per_sample) % batch_size:
        return per_sample.sum() / batch_size
    return per_sample.view(-1, batch_size).mean(dim=1).sum()


class LambdasLearner:
    """AdaMerging's lambdas as `loop.Loop` trains them: the step, and the saved state (step, tasks,
    raw lambdas, their table, Adam's state, the sampler's state)."""

    name, noun = "AdaMerging", "lambdas"

    def __init__(self, run: AdaMerging, granularity: str):
        self.run, self.granularity = run, granularity
        self.label = f"{granularity} AdaMerging"
        config = run.config
        self.steps, self.steps_flag = config.steps, "--steps"
        self.segment = {k: getattr(config, k) for k in SEGMENT_FIELDS}
        self.names = [t.name for t in run.tasks]
        rows = run.lambdas.raw.shape[0]
        self.entries = list(run.merged.entries) if rows > 1 else None
        self.sampler = run.generator.get_state()  # the sampler as it was right after the last step

    @property
    def device(self) -> torch.device:
        return self.run.merged.device

    @property
    def plan(self) -> str:
        return str(self.run.plan)

    def step(self) -> float:
        return adamerging_step(self.run)

    def commit(self) -> None:
        self.sampler = self.run.generator.get_state()

    def snapshot(self) -> tuple:
        """What a saved state needs that the run goes on changing (kept on the device)."""
        raw = self.run.lambdas.raw.detach().clone()
        return raw, copy.deepcopy(self.run.optimizer.state_dict()), self.sampler.clone()

    def saved(self, snapshot: tuple) -> dict:
        raw, adam, sampler = snapshot
        table = CoefficientTable(self.run.lambdas.of(raw).clone(), self.names, self.entries)
        return {
            "tasks": self.names,
            "raw": raw,
            "table": table,
            "optimizer": adam,
            "generator": sampler,
        }

    def check_resume(self, saved: dict) -> None:
        shape = tuple(self.run.lambdas.raw.shape)
        if tuple(saved["raw"].shape) != shape or saved["tasks"] != self.names:
            raise ResumeError(
                f"cannot resume: saved state is for tasks {saved['tasks']} with a "
                f"{tuple(saved['raw'].shape)} table; this run has {self.names}, {shape}"
            )

    def restore(self, saved: dict) -> None:
        run = self.run
        with torch.no_grad():
            run.lambdas.raw.copy_(saved["raw"])
        run.optimizer.load_state_dict(saved["optimizer"])
        for group in run.optimizer.param_groups:  # the loaded Adam state brings the saved lr back
            group["lr"] = run.config.lr
        run.generator.set_state(saved["generator"])
        self.sampler = run.generator.get_state()

    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.run.merged.encoder(self.run.lambdas().detach(), self.run.config.precision)

    def table(self) -> CoefficientTable:
        return CoefficientTable(self.run.lambdas().detach().cpu().clone(), self.names, self.entries)

    def smaller_step(self) -> str:
        images = len(self.run.mine) * self.run.config.images_per_task
        return smaller_step(self.run.plan, images, self.run.config)


def adamerge(
    merged: MergedEncoder,
    tasks: Sequence[TaskData],
    normalize: Normalizer,
    config: RunConfig,
    granularity: str,
    evaluate: Evaluate | None = None,
    resume: dict | None = None,
    save_state: Callable[[dict], None] | None = None,
    ranks: Ranks = Ranks(),
    log: TensorBoardLog | None = None,
) -> AdaptResult:
    """Run `config.steps` AdaMerging steps and return the learned lambdas table and the trajectory.

    `granularity`: "task-wise" (lambdas [1, T]) or "layer-wise" ([entries, T]). `resume` is a state
    from `save_state`: the run continues as if it had never stopped (`loop.Loop`; ResumeError if a
    setting differs that may not). Under torchrun, `ranks` splits the tasks. `log` gets each
    trajectory entry as it is made, with the lambdas as of its step (--tensorboard).
    """
    if granularity not in (TASK_WISE, LAYER_WISE):
        raise ValueError(
            f"granularity must be {TASK_WISE!r} or {LAYER_WISE!r}, got {granularity!r}"
        )
    if OBJECTIVES[config.objective].needs_labels and any(t.labels is None for t in tasks):
        raise ValueError(f"the {config.objective} objective needs labels for every task")
    rows = 1 if granularity == TASK_WISE else len(merged.entries)
    lambdas = Lambdas(rows, merged.num_tasks, config.init, config.clamp).to(merged.device)
    run = AdaMerging(
        merged,
        lambdas,
        torch.optim.Adam(lambdas.parameters(), lr=config.lr),
        tasks,
        normalize,
        config,
        torch.Generator().manual_seed(config.seed),
        ranks,
        plan_for(config, merged.device),
    )
    learner = LambdasLearner(run, granularity)
    return Loop(learner, config, evaluate, resume, save_state, ranks, log).run()


@dataclass(frozen=True)
class Learned:
    """The merge of the AdaMerging methods: a `granularity` table of lambdas learned by AdaMerging
    on the problem's test images (after the diagnostics with --diagnose); with --coefficients, the
    given table evaluated instead (`Job.reloaded`)."""

    granularity: str
    learns: bool = field(default=True, init=False)
    takes_table: bool = field(default=True, init=False)

    def __call__(self, job: Job) -> Outcome:
        if job.config.coefficients:
            return job.evaluate_table(job.reloaded())
        diagnosis = self.diagnose(job) if job.config.diagnose else None
        adaptation = self.adapt(job)
        last = adaptation.trajectory[-1] if adaptation.trajectory else {}
        table = adaptation.table
        accuracy = last.get("accuracy") or job.evaluate(
            job.merged.encoder(table.lambdas, job.config.precision)
        )
        record = (
            {}
            if diagnosis is None
            else {
                "diagnostics": {
                    k: diagnosis[k] for k in ("verdict", "checks", "spearman", "thresholds")
                }
            }
        )
        return Outcome(accuracy, table=table, adaptation=adaptation, record=record)

    def diagnose(self, job: Job) -> dict:
        # only with --diagnose: spares every other run scipy's import
        from adamerging.methods.diagnostics.run import run_diagnostics

        return run_diagnostics(
            job.problem,
            job.config,
            merged=job.merged,
            vectors=job.vectors,
            timings=job.timings,
            ranks=job.ranks,
        )

    def adapt(self, job: Job) -> AdaptResult:
        config, state = job.config, job.state_file()
        with naming(state):
            return adamerge(
                job.merged,
                adaptation_subset(job.problem.data, config.adapt_fraction, config.seed),
                job.problem.normalize,
                config,
                self.granularity,
                evaluate=job.evaluate,
                resume=state.load() if config.resume else None,
                save_state=state.save,
                ranks=job.ranks,
                log=job.log,
            )
