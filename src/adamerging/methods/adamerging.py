"""AdaMerging: learn the merging coefficients lambdas by entropy minimisation on unlabeled test
batches.

Read `adamerging_step` beside the paper (Yang et al., ICLR 2024, Sec. 3.2: merged model
theta(lambdas) = theta_0 + sum_k lambda_k tau_k, task-wise or per layer; objective
min_lambdas sum_k sum_{x in B_k} H(f(x; theta(lambdas))) over unlabeled test batches B_k; Adam):
sample, merge once, forward, entropy, backward, Adam step. `adamerge` is the loop around it: resume,
the non-finite and out-of-memory guards, ranks, progress, evaluation cadence, saving.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import LAYER_WISE, TASK_WISE, CoefficientTable
from adamerging.models.evaluation import Normalizer
from adamerging.reporting.run_log import TensorBoardLog
from adamerging.run.config import RunConfig, resume_conflicts
from adamerging.run.problem import TaskData
from adamerging.runtime.device import (
    OUT_OF_MEMORY,
    PeakMeter,
    autocast,
    free_bytes,
    ieee_fp32,
    memory_summary,
)
from adamerging.runtime.distributed import Ranks
from adamerging.runtime.errors import RunStopped

# encoder -> accuracy (%) per task
Evaluate = Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]]


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
class Plan:
    """How a step's images pass through the encoder (`--adapt-mode`, resolved for this device).

    "fused": one forward and backward over all of this rank's images; "chunked": `chunk` images at a
    time (a task's images may span chunks), "per-task": one task's images at a time. chunk 0: not
    known yet, measured on the step's first chunk (auto on CUDA, chunked without --adapt-chunk).
    """

    mode: str
    chunk: int = 0
    auto: bool = False  # --adapt-mode auto: the measurement may choose fused

    def __str__(self) -> str:
        return f"chunked, {self.chunk} images per chunk" if self.mode == "chunked" else self.mode


def plan_for(config: RunConfig, device: torch.device) -> Plan:
    """The step plan of `config.adapt_mode` on `device`. auto: fused off CUDA (host memory is not
    planned for), else measured on the first step; chunked without --adapt-chunk: one batch
    (--batch-size-adapt images) per chunk off CUDA, else measured."""
    per_task = config.images_per_task
    cuda = free_bytes(device) is not None
    if config.adapt_mode == "auto":
        return Plan("auto", 0, auto=True) if cuda else Plan("fused")
    if config.adapt_mode == "per-task":
        return Plan("per-task", per_task)
    if config.adapt_mode == "chunked":
        return Plan("chunked", config.adapt_chunk or (0 if cuda else config.batch_size_adapt))
    return Plan("fused")


# Share of the free device memory a step's activations may plan to fill (the rest: allocator slack)
MEMORY_MARGIN = 0.85


def chunk_that_fits(
    images: int, bytes_per_image: float, free: int, margin: float = MEMORY_MARGIN
) -> int:
    """Images per chunk whose activations fit in `margin` x `free` bytes at `bytes_per_image` each:
    from 1 to `images` (all of them: the fused step fits)."""
    return max(1, min(images, int(margin * free // max(bytes_per_image, 1.0))))


@dataclass
class AdaMerging:
    """What one step works on, fixed for the run (built by `adamerge`)."""

    merged: MergedEncoder
    lambdas: Lambdas
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


# (task index, first, last + 1): a range of the task's images drawn this step
Part = tuple[int, int, int]


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
                if config.objective == "supervised"
                else None
            )
            total = total + task_loss(
                run.tasks[i].head(f.float()), labels, config.batch_size_adapt, config.objective
            )
        return total

    loss = backward(run, lambdas, loss_of, per_task)  # 5. gradient of lambdas
    grad = (
        run.lambdas.raw.grad
        if run.lambdas.raw.grad is not None
        else torch.zeros_like(run.lambdas.raw)
    )
    run.ranks.all_reduce_(grad)
    run.ranks.all_reduce_(loss)
    # the next step's images, while the device works
    run.feed.prefetch()
    value, finite = torch.stack(
        [loss.float(), (torch.isfinite(grad).all() & torch.isfinite(loss)).float()]
    ).tolist()
    if not finite:
        raise FloatingPointError("the loss or its gradient is NaN/inf")
    run.lambdas.raw.grad = grad
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
                run.plan = _measured(
                    run.plan, images, meter.grown() / size, free_bytes(run.merged.device)
                )
                # fused from the next step on: this step's rest at once
                chunk = run.plan.chunk or images
    if mine:
        with ieee_fp32():
            torch.autograd.backward([params[k] for k in leaves], [leaves[k].grad for k in leaves])
    return total


def _measured(plan: Plan, images: int, bytes_per_image: float, free: int | None) -> Plan:
    """The plan once a chunk's memory per image is known: the chunk that fits (auto: fused when all
    do)."""
    chunk = images if free is None else chunk_that_fits(images, bytes_per_image, free)
    return Plan("fused") if plan.auto and chunk == images else Plan("chunked", chunk, plan.auto)


def parts_of(whole: Sequence[Part], per_task: int, start: int, stop: int) -> list[Part]:
    """The parts of images [start, stop) of this rank's images laid end to end (`whole`, per_task
    each)."""
    out = []
    for k, (i, _, _) in enumerate(whole):
        a, b = max(start - k * per_task, 0), min(stop - k * per_task, per_task)
        if a < b:
            out.append((i, a, b))
    return out


class Feed:
    """This rank's step images (uint8) on the device, for the sampler's draws.

    Resident: when this rank's adaptation images take at most a third of the free device memory,
    they are copied there once (off CUDA they stay where they are), and each step indexes them
    there. Otherwise each step's images are gathered on the host into pinned memory and copied
    asynchronously, and `prefetch` gathers the next step's while the device computes: drawn from a
    copy of the sampler's state, so the sampler's own draws are unchanged (and a prefetch that does
    not match them, e.g. after a resume, is not used).
    """

    def __init__(
        self,
        tasks: Sequence[TaskData],
        mine: Sequence[int],
        device: torch.device,
        per_task: int,
        generator: torch.Generator,
        resident: bool | None = None,
    ):
        self.tasks, self.mine, self.device, self.per_task, self.generator = (
            tasks,
            list(mine),
            device,
            per_task,
            generator,
        )
        free = free_bytes(device)
        if resident is None:
            resident = (
                free is None
                or sum(tasks[i].images.numel() * tasks[i].images.element_size() for i in mine)
                <= free / 3
            )
        self.resident = {i: tasks[i].images.to(device) for i in mine} if resident else None
        self.pin = device.type == "cuda"
        self.next: tuple[list[torch.Tensor], dict[int, torch.Tensor]] | None = None

    def images(self, batches: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        """{task index: its images `batches[i]` on the device} for this rank's tasks."""
        if self.resident is not None:
            # no stream sync
            return {
                i: self.resident[i][batches[i].to(self.device, non_blocking=True)]
                for i in self.mine
            }
        ready, self.next = self.next, None
        if ready is not None and all(torch.equal(ready[0][i], batches[i]) for i in self.mine):
            return ready[1]
        return {i: self._stage(i, batches[i]) for i in self.mine}

    def prefetch(self) -> None:
        """Gather (and start copying) the images the sampler will draw next; nothing when
        resident."""
        if self.resident is not None:
            return
        peek = torch.Generator()
        peek.set_state(self.generator.get_state())
        batches = [sample(t, self.per_task, peek) for t in self.tasks]
        self.next = (batches, {i: self._stage(i, batches[i]) for i in self.mine})

    def _stage(self, i: int, index: torch.Tensor) -> torch.Tensor:
        source = self.tasks[i].images
        host = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=self.pin)
        torch.index_select(source, 0, index, out=host)
        return host.to(self.device, non_blocking=True)


def sample(task: TaskData, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` image indices of `task`: the first of a fresh shuffle.

    What re-creating a shuffled DataLoader every step (the authors' code) draws, without re-creating
    anything. With fewer images than `count` (a small --adapt-fraction), shuffles are chained so
    every batch stays full.
    """
    n = len(task.images)
    rounds = -(-count // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:count]


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, batch_size: int, objective: str
) -> torch.Tensor:
    """One task's loss: per batch the mean entropy (or cross-entropy with labels), summed over its
    batches.

    logits [N, C] (batch-major, batches of `batch_size`); labels [N] (objective "supervised" only).
    A part of the batches (a chunk; N not a multiple of batch_size) gives its share: the sum over
    its images / batch_size, so the parts of a step add up to the step's loss.
    """
    logits = logits.float()
    per_sample = (
        softmax_entropy(logits)
        if objective == "entropy"
        else F.cross_entropy(logits, labels, reduction="none")
    )
    if len(per_sample) % batch_size:
        return per_sample.sum() / batch_size
    return per_sample.view(-1, batch_size).mean(dim=1).sum()


def adaptation_subset(data: Sequence[TaskData], fraction: float, seed: int) -> list[TaskData]:
    """Each task restricted to a seeded `fraction` of its test images (at least one) for
    adaptation."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--adapt-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(data)
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in data:
        keep = (
            torch.randperm(len(t.images), generator=g)[: max(1, round(fraction * len(t.images)))]
            .sort()
            .values
        )
        out.append(
            TaskData(
                t.name, t.images[keep], t.head, t.labels[keep] if t.labels is not None else None
            )
        )
    return out


# The resumable settings that shape the learned lambdas: recorded per step range ("segments")
SEGMENT_FIELDS = ("lr", "precision", "device")


@dataclass
class AdaptResult:
    """The learned table, the trajectory ({"step", "loss"}, and "accuracy" where evaluated), timings
    (s), and the settings used per step range: [{"steps": [first, last], "lr": ..., "precision":
    ..., "device": ...}]."""

    table: CoefficientTable
    trajectory: list[dict] = field(default_factory=list)
    step_seconds: float = 0.0  # median wall time of one optimizer step
    total_seconds: float = 0.0
    segments: list[dict] = field(default_factory=list)
    # how the steps ran: "fused", "chunked, N images per chunk", "per-task"
    plan: str = ""


class AdaptationStopped(RunStopped):
    """Adaptation stopped early (non-finite loss, out of memory); `state` holds the last good
    lambdas (None: there were none, and the message says what to do); `advice` what to rerun with
    once `state` is saved."""

    def __init__(
        self, message: str, state: dict | None, advice: str = "rerun with a lower --lr and --resume"
    ):
        super().__init__(message)
        self.state = state
        self.advice = advice


class ResumeError(ValueError):
    """A saved state cannot continue this run (other settings, tasks, table shape, or past
    --steps)."""


def _check_resume(
    resume: dict, config: RunConfig, names: list[str], shape: tuple[int, ...]
) -> None:
    # refused: its settings (and a NaN-stopped state's lambdas) cannot be trusted
    if "config" not in resume:
        raise ResumeError(
            "cannot resume: the saved state holds no run settings (written by an older version), "
            "so they cannot be checked; rerun without --resume"
        )
    conflicts = resume_conflicts(resume["config"], config)
    if conflicts:
        raise ResumeError(conflicts)
    if tuple(resume["raw"].shape) != shape or resume["tasks"] != names:
        raise ResumeError(
            f"cannot resume: saved state is for tasks {resume['tasks']} with a "
            f"{tuple(resume['raw'].shape)} table; this run has {names}, {shape}"
        )
    if config.steps < resume["step"]:
        raise ResumeError(
            f"cannot resume: the saved state is at step {resume['step']}, past --steps"
            f" {config.steps}; pass --steps {resume['step']} or more"
        )


def _segments(previous: list[dict], first: int, last: int, config: RunConfig) -> list[dict]:
    """`previous` plus steps [first, last] run with `config`; merged into the last range when the
    settings match."""
    if last < first:
        return list(previous)
    now = {k: getattr(config, k) for k in SEGMENT_FIELDS}
    if (
        previous
        and previous[-1]["steps"][1] == first - 1
        and all(previous[-1][k] == v for k, v in now.items())
    ):
        return previous[:-1] + [{**previous[-1], "steps": [previous[-1]["steps"][0], last]}]
    return list(previous) + [{"steps": [first, last], **now}]


def _check(config: RunConfig, granularity: str, tasks: Sequence[TaskData]) -> None:
    if granularity not in (TASK_WISE, LAYER_WISE):
        raise ValueError(
            f"granularity must be {TASK_WISE!r} or {LAYER_WISE!r}, got {granularity!r}"
        )
    if config.objective == "supervised" and any(t.labels is None for t in tasks):
        raise ValueError("the supervised objective needs labels for every task")


def adamerge(  # noqa: C901
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
    from `save_state` (lambdas, Adam, sampler, trajectory, config, segments): the run continues as
    if it had never stopped, with this config's RESUMABLE settings (config.py; a new --lr replaces
    the one the Adam state brings back, more --steps continue); ResumeError if another setting
    differs. `save_state` gets the state every `config.save_every` steps, at the end, on Ctrl-C, and
    on a non-finite loss or gradient at step k: then the last good state, the one from before step
    k-1's update (the lambdas step k-1 evaluated finitely; step k's lambdas are step k-1's result),
    or nothing if no step of this run was finite. Out of memory (AdaptationStopped naming the
    setting to change): the state of the last finished step. Under torchrun, `ranks` splits the
    tasks. `log` gets each trajectory entry as it is made, with the lambdas as of its step (run_log:
    --tensorboard).
    """
    _check(config, granularity, tasks)
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
    per_task = config.images_per_task
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

    completed = first - 1  # last step whose update is applied
    sampler_state = run.generator.get_state()  # the sampler as it was right after that step

    def table() -> CoefficientTable:
        return CoefficientTable(lambdas().detach().cpu().clone(), names, entries)

    def snapshot() -> tuple:
        """What a saved state needs that the run goes on changing (taken every step, kept on the
        device; the rest is derived in `state`)."""
        return (
            completed,
            lambdas.raw.detach().clone(),
            copy.deepcopy(run.optimizer.state_dict()),
            sampler_state.clone(),
            len(trajectory),
        )

    def state(snap: tuple | None = None) -> dict:
        """The saved state as of `snap` (default: now), on the host; nothing in it changes when the
        run goes on."""
        step, raw, adam, sampler, recorded = _to_host(snap or snapshot())
        return {
            "step": step,
            "tasks": names,
            "raw": raw,
            "table": CoefficientTable(lambdas.of(raw).clone(), names, entries),
            "optimizer": adam,
            "generator": sampler,
            "trajectory": trajectory[:recorded],
            "config": config.to_json(),
            "segments": _segments(segments, first, step, config),
        }

    def record_eval(step: int) -> None:
        if evaluate is None:
            return
        try:
            accs = evaluate(merged.encoder(lambdas().detach(), config.precision))
        except OUT_OF_MEMORY:
            # raised below, outside this handler: the error's frames (device tensors) are gone by
            # then
            accs = None
        if accs is None:
            raise _out_of_memory(
                f"evaluating at step {step}",
                merged.device,
                f"--batch-size {max(1, config.batch_size // 2)}",
                state() if completed else None,
            )
        trajectory.append(
            {"step": step, "accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs)}
        )
        if log is not None:
            log.record(trajectory[-1], table())

    if resume is None:
        record_eval(0)
    good = None  # the last state whose lambdas gave a finite loss and gradient
    times = []
    start = time.perf_counter()
    bar = tqdm(
        range(first, config.steps + 1),
        desc=f"{granularity} AdaMerging",
        dynamic_ncols=True,
        disable=not config.progress or not ranks.is_main,
        initial=first - 1,
        total=config.steps,
    )
    try:
        for step in bar:
            before = snapshot()
            t0 = time.perf_counter()
            try:
                value = adamerging_step(run)
            except FloatingPointError as e:
                if good is None:  # not even the lambdas this run started from were finite
                    advice = (
                        "at the resumed lambdas; stopped, nothing saved: rerun without --resume,"
                        " with a lower --lr"
                        if resume is not None
                        else (
                            "at the initial lambdas; stopped, nothing saved: check the inputs"
                            " (models, heads, images)"
                        )
                    )
                    raise AdaptationStopped(f"AdaMerging step {step}: {e} {advice}", None) from None
                raise AdaptationStopped(
                    f"AdaMerging step {step}: {e}; stopped, keeping the state of step {good[0]}, "
                    "the last whose loss and gradient were finite",
                    state(good),
                ) from None
            except OUT_OF_MEMORY:
                value = None
            # the last finished step's state (none when no step of this run finished)
            if value is None:
                raise _out_of_memory(
                    f"at AdaMerging step {step} ({run.plan})",
                    merged.device,
                    _smaller_step(run, per_task),
                    state(before) if good is not None or resume is not None else None,
                )
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
        if config.steps >= first:
            record_eval(config.steps)
    except KeyboardInterrupt:
        if save_state is not None:
            save_state(state())
        raise
    except AdaptationStopped as stop:
        if save_state is not None and stop.state is not None:
            save_state(stop.state)
        raise
    if save_state is not None:
        save_state(state())
    return AdaptResult(
        table(),
        trajectory,
        statistics.median(times) if times else 0.0,
        time.perf_counter() - start,
        _segments(segments, first, completed, config),
        str(run.plan),
    )


def _to_host(x):
    """Tensors (in tuples, lists, dicts) copied to the host: a saved state (a no-op for CPU
    tensors)."""
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, (tuple, list)):
        return type(x)(_to_host(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_host(v) for k, v in x.items()}
    return x


def _smaller_step(run: AdaMerging, per_task: int) -> str:
    """The setting that lowers a step's memory below the plan that ran out of it."""
    images = len(run.mine) * per_task
    fused = run.plan.mode == "fused"
    # the chunk that ran
    chunk = images if fused else run.plan.chunk or min(images, run.config.batch_size_adapt)
    if chunk <= 1:
        return "--checkpointing" if not run.config.checkpointing else "--precision bf16"
    return f"--adapt-mode chunked --adapt-chunk {max(1, images // 4 if fused else chunk // 2)}"


def _out_of_memory(
    where: str, device: torch.device, setting: str, state: dict | None
) -> AdaptationStopped:
    """The one-line stop for an out-of-memory error `where` (with the last finished step's `state`,
    if any)."""
    if state is None:
        return AdaptationStopped(
            f"out of memory on {memory_summary(device)} {where}; stopped, nothing saved: rerun with"
            f" {setting}",
            None,
        )
    return AdaptationStopped(
        f"out of memory on {memory_summary(device)} {where}; stopped, keeping the state of step"
        f" {state['step']}",
        state,
        advice=f"rerun with {setting} and --resume",
    )
