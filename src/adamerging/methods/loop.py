"""The training loop every learned merge runs in: steps, resume, the non-finite and out-of-memory
guards, evaluation and save cadence, progress, TensorBoard.

`Loop(learner, config, ...)` runs `config.steps` steps of a `Learner` (AdaMerging's lambdas; any
method whose parameters are learned by steps) and returns an `AdaptResult`. What it guarantees:
- a saved state (every `--save-every` steps, at the end, on Ctrl-C) lets `--resume` continue as if
  the run had never stopped, with this config's RESUMABLE settings (run/flags.py);
- a non-finite loss or gradient at step k stops the run (AdaptationStopped, exit 3) keeping the
  last good state: the one from before step k-1's update (the parameters step k-1 evaluated
  finitely; step k's parameters are step k-1's result), or nothing if no step of this run was;
- out of memory stops it with one line naming the setting to change, keeping the last finished
  step's state;
- nothing non-finite is ever saved (`StateFile`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from adamerging.merging.tables import CoefficientTable
from adamerging.reporting.run_log import TensorBoardLog
from adamerging.run.config import RunConfig
from adamerging.run.flags import resume_conflicts
from adamerging.runtime.device import OUT_OF_MEMORY, memory_summary
from adamerging.runtime.distributed import Ranks
from adamerging.runtime.errors import RunStopped
from adamerging.runtime.files import atomic_write, require_finite

# encoder -> accuracy (%) per task
Evaluate = Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]]

# The resumable settings that shape the learned parameters: recorded per step range ("segments")
SEGMENT_FIELDS = ("lr", "precision", "device")


class Learner(Protocol):
    """What `Loop` trains. `step` makes one update and returns its loss, raising FloatingPointError
    before the update when the loss or gradient is not finite; `commit` marks that update as
    finished (the state a save or a stop refers to). `snapshot` copies what a saved state needs that
    the run goes on changing (on the device); `saved` turns a snapshot into the state's entries (on
    the host); `restore` continues from a saved state that `check_resume` accepted."""

    label: str  # the progress bar's: "layer-wise AdaMerging"
    steps: int  # how many steps the run has
    steps_flag: str  # the flag that sets them: "--steps"
    segment: dict  # the resumable settings that shape it, recorded per step range ({"lr": ...})
    name: str  # the messages': "AdaMerging" ("AdaMerging step 3: ...")
    noun: str  # what it learns, for messages: "lambdas"
    device: torch.device
    plan: str  # how a step runs, for messages and the result

    def step(self) -> float: ...

    def commit(self) -> None: ...

    def snapshot(self) -> Any: ...

    def saved(self, snapshot: Any) -> dict: ...

    def check_resume(self, saved: dict) -> None: ...

    def restore(self, saved: dict) -> None: ...

    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor]: ...

    def table(self) -> CoefficientTable | None: ...

    def smaller_step(self) -> str: ...


@dataclass
class AdaptResult:
    """The learned table, the trajectory ({"step", "loss"}, and "accuracy" where evaluated), timings
    (s), and the settings used per step range: [{"steps": [first, last], "lr": ..., "precision":
    ..., "device": ...}]."""

    table: CoefficientTable | None
    trajectory: list[dict] = field(default_factory=list)
    step_seconds: float = 0.0  # median wall time of one optimizer step
    total_seconds: float = 0.0
    segments: list[dict] = field(default_factory=list)
    # how the steps ran: "fused", "chunked, N images per chunk", "per-task"
    plan: str = ""


class AdaptationStopped(RunStopped):
    """Adaptation stopped early (non-finite loss, out of memory); `state` holds the last good
    parameters (None: there were none, and the message says what to do); `advice` what to rerun
    with once `state` is saved."""

    def __init__(
        self, message: str, state: dict | None, advice: str = "rerun with a lower --lr and --resume"
    ):
        super().__init__(message)
        self.state = state
        self.advice = advice


class ResumeError(ValueError):
    """A saved state cannot continue this run (other settings, tasks, parameter shapes, or past
    --steps)."""


class StateFile:
    """A run's saved state, `<output dir>/<result name>.state.pt` beside its result: `load` (for
    --resume; FileNotFoundError naming the path) and `save` (atomic, on the main rank; ValueError
    rather than write a NaN/inf value)."""

    def __init__(
        self,
        path: Path,
        ranks: Ranks = Ranks(),
        what: str = "AdaMerging",
        inputs: dict[str, str] | None = None,
    ):
        self.path, self.ranks, self.what = Path(path), ranks, what
        # the sha256 of the files the run read (experts, theta_0), saved with the state:
        # `--resume` refuses to continue on other files (`run.experts.check_resume_inputs`)
        self.inputs = inputs or {}

    def load(self) -> dict:
        if not self.path.is_file():
            raise FileNotFoundError(f"--resume: no saved state at {self.path}")
        # Adam's load_state_dict moves it to the device
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict) -> None:
        if not self.ranks.is_main:
            return
        table = state.get("table")
        state = {**state, "table": table.to_json() if table is not None else None}
        if self.inputs:
            state["inputs"] = self.inputs
        require_finite(state, f"the {self.what} state {self.path}")
        with atomic_write(self.path) as f:
            torch.save(state, f)


@contextlib.contextmanager
def naming(state: StateFile) -> Iterator[None]:
    """Inside it, an interrupt, a resume error or a stop of a `Loop` saving to `state` becomes one
    line naming the state file (and what to rerun with)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; the {state.what} state is saved to {state.path}: rerun with --resume"
        ) from None
    except ResumeError as e:
        raise ResumeError(f"{state.path}: {e}") from None
    except AdaptationStopped as stop:
        if stop.state is None:
            raise
        raise AdaptationStopped(
            f"{stop}; saved to {state.path}: {stop.advice}", stop.state
        ) from None


def segments(previous: list[dict], first: int, last: int, now: dict) -> list[dict]:
    """`previous` plus steps [first, last] run with the settings `now`; merged into the last range
    when the settings match."""
    if last < first:
        return list(previous)
    if (
        previous
        and previous[-1]["steps"][1] == first - 1
        and all(previous[-1][k] == v for k, v in now.items())
    ):
        return previous[:-1] + [{**previous[-1], "steps": [previous[-1]["steps"][0], last]}]
    return list(previous) + [{"steps": [first, last], **now}]


def check_resume(saved: dict, config: RunConfig, steps: int, flag: str = "--steps") -> None:
    """ResumeError unless `saved` was made with settings this run may continue, not past `steps`
    (the run's step budget, set by `flag`)."""
    # refused: its settings (and a NaN-stopped state's parameters) cannot be trusted
    if "config" not in saved:
        raise ResumeError(
            "cannot resume: the saved state holds no run settings (written by an older version), "
            "so they cannot be checked; rerun without --resume"
        )
    conflicts = resume_conflicts(saved["config"], config)
    if conflicts:
        raise ResumeError(conflicts)
    if steps < saved["step"]:
        raise ResumeError(
            f"cannot resume: the saved state is at step {saved['step']}, past {flag} {steps};"
            f" pass {flag} {saved['step']} or more"
        )


def to_host(x: Any) -> Any:
    """Tensors (in tuples, lists, dicts) copied to the host: a saved state (a no-op for CPU
    tensors)."""
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, (tuple, list)):
        return type(x)(to_host(v) for v in x)
    if isinstance(x, dict):
        return {k: to_host(v) for k, v in x.items()}
    return x


def out_of_memory(
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


class Loop:
    """`config.steps` steps of `learner`, resumed from `resume` (a saved state) if given.

    `evaluate` scores the learner's encoder at the start, every `--eval-every` steps and at the end;
    `save_state` gets the state every `--save-every` steps, at the end, on Ctrl-C and on a stop;
    `log` gets each trajectory entry as it is made, with the table as of its step.
    """

    def __init__(
        self,
        learner: Learner,
        config: RunConfig,
        evaluate: Evaluate | None = None,
        resume: dict | None = None,
        save_state: Callable[[dict], None] | None = None,
        ranks: Ranks = Ranks(),
        log: TensorBoardLog | None = None,
    ):
        self.learner, self.config, self.evaluate = learner, config, evaluate
        self.resume, self.save_state, self.ranks, self.log = resume, save_state, ranks, log
        self.trajectory: list[dict] = []
        self.segments: list[dict] = []
        self.first = 1
        if resume is not None:
            check_resume(resume, config, learner.steps, learner.steps_flag)
            learner.check_resume(resume)
            learner.restore(resume)
            self.trajectory, self.segments = list(resume["trajectory"]), list(resume["segments"])
            self.first = resume["step"] + 1
        self.completed = self.first - 1  # last step whose update is applied
        self.good: tuple | None = None  # the last snapshot whose parameters gave a finite step
        self.times: list[float] = []

    def snapshot(self) -> tuple:
        """(step, the learner's snapshot, trajectory length): what a saved state refers to."""
        return self.completed, self.learner.snapshot(), len(self.trajectory)

    def state(self, snap: tuple | None = None) -> dict:
        """The saved state as of `snap` (default: now), on the host; nothing in it changes when the
        run goes on."""
        step, learned, recorded = snap or self.snapshot()
        return {
            "step": step,
            **self.learner.saved(to_host(learned)),
            "trajectory": self.trajectory[:recorded],
            "config": self.config.to_json(),
            "segments": segments(self.segments, self.first, step, self.learner.segment),
        }

    def run(self) -> AdaptResult:
        """Run the remaining steps; the result at the last step."""
        if self.resume is None:
            self.record_eval(0)
        start = time.perf_counter()
        try:
            self._steps()
        except KeyboardInterrupt:
            self._save(self.state())
            raise
        except AdaptationStopped as stop:
            if stop.state is not None:
                self._save(stop.state)
            raise
        self._save(self.state())
        return AdaptResult(
            self.learner.table(),
            self.trajectory,
            statistics.median(self.times) if self.times else 0.0,
            time.perf_counter() - start,
            segments(self.segments, self.first, self.completed, self.learner.segment),
            self.learner.plan,
        )

    def _steps(self) -> None:
        config, steps = self.config, self.learner.steps
        bar = tqdm(
            range(self.first, steps + 1),
            desc=self.learner.label,
            dynamic_ncols=True,
            disable=not config.progress or not self.ranks.is_main,
            initial=self.first - 1,
            total=steps,
        )
        for step in bar:
            value = self._step(step)
            bar.set_postfix(loss=f"{value:.4f}")
            if config.eval_every and step % config.eval_every == 0 and step != steps:
                self.record_eval(step)
            if config.save_every and step % config.save_every == 0:
                self._save(self.state())
        if steps >= self.first:
            self.record_eval(steps)

    def _step(self, step: int) -> float:
        """One step, guarded: a non-finite step or running out of memory stops the run."""
        before = self.snapshot()
        t0 = time.perf_counter()
        try:
            value = self.learner.step()
        except FloatingPointError as e:
            raise self._non_finite(step, e) from None
        except OUT_OF_MEMORY:
            value = None
        if value is None:  # the last finished step's state (none when no step of this run finished)
            keep = self.good is not None or self.resume is not None
            raise out_of_memory(
                f"at {self.learner.name} step {step} ({self.learner.plan})",
                self.learner.device,
                self.learner.smaller_step(),
                self.state(before) if keep else None,
            )
        self.good = before
        self.times.append(time.perf_counter() - t0)
        self._record({"step": step, "loss": value})
        self.learner.commit()
        self.completed = step
        return value

    def _non_finite(self, step: int, error: Exception) -> AdaptationStopped:
        where = f"{self.learner.name} step {step}: {error}"
        if self.good is None:  # not even the parameters this run started from were finite
            noun = self.learner.noun
            advice = (
                f"at the resumed {noun}; stopped, nothing saved: rerun without --resume, with a"
                " lower --lr"
                if self.resume is not None
                else (
                    f"at the initial {noun}; stopped, nothing saved: check the inputs (models,"
                    " heads, images)"
                )
            )
            return AdaptationStopped(f"{where} {advice}", None)
        return AdaptationStopped(
            f"{where}; stopped, keeping the state of step {self.good[0]}, the last whose loss and"
            " gradient were finite",
            self.state(self.good),
        )

    def record_eval(self, step: int) -> None:
        """Evaluate the learner's encoder and record it in the trajectory (out of memory: a stop
        naming a smaller evaluation batch)."""
        if self.evaluate is None:
            return
        try:
            accs = self.evaluate(self.learner.encoder())
        except OUT_OF_MEMORY:
            # raised below, outside this handler: the error's frames (device tensors) are gone then
            accs = None
        if accs is None:
            raise out_of_memory(
                f"evaluating at step {step}",
                self.learner.device,
                f"--batch-size {max(1, self.config.batch_size // 2)}",
                self.state() if self.completed else None,
            )
        average = sum(accs.values()) / len(accs)
        self._record({"step": step, "accuracy": accs, "avg_accuracy": average})

    def _record(self, entry: dict) -> None:
        self.trajectory.append(entry)
        if self.log is not None:
            self.log.record(entry, self.learner.table())

    def _save(self, state: dict) -> None:
        if self.save_state is not None:
            self.save_state(state)
