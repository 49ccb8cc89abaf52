"""What every method's merge works on and gives back: a `Job` (the loaded problem, its merged
encoder, the run's settings, where its state is saved) and an `Outcome` (accuracies, and the table
or parameters that made them).

A merge of the registry (`registry.Method.merge`) is a callable `Job -> Outcome`; the pipeline runs
it the same way for every method (no per-method branches) and writes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import CoefficientTable, load_table, published_table
from adamerging.methods.loop import AdaptResult, StateFile
from adamerging.models.evaluation import evaluate_accuracy
from adamerging.reporting.run_log import TensorBoardLog
from adamerging.run.config import RunConfig
from adamerging.run.problem import Problem, TaskData
from adamerging.runtime.distributed import Ranks

Encoder = Callable[[torch.Tensor], torch.Tensor]  # images [N, 3, S, S] -> features [N, D]


@dataclass
class PerTask:
    """An encoder per task (a merged model with each task's surgery modules, say); `default` for the
    tasks without one (the unseen tasks of a generalization run)."""

    encoders: dict[str, Encoder]
    default: Encoder

    def for_task(self, name: str) -> Encoder:
        return self.encoders.get(name, self.default)


def evaluate_tasks(
    encoder: Encoder | PerTask,
    problem: Problem,
    batch_size: int,
    tasks: Sequence[TaskData] | None = None,
    ranks: Ranks = Ranks(),
) -> dict[str, float]:
    """Accuracy (%) per task (default: the merged and the unseen ones) of `encoder` (or of each
    task's own, `PerTask`); under torchrun each rank evaluates its share and the results are
    gathered."""
    tasks = list(tasks or problem.all_data)
    out = {}
    for i, t in enumerate(tasks):
        if ranks.owns(i):
            own = encoder.for_task(t.name) if isinstance(encoder, PerTask) else encoder
            out[t.name] = evaluate_accuracy(
                own, t.head, t.images, t.labels, problem.normalize, batch_size
            )
    out = ranks.merge_dicts(out)
    return {t.name: out[t.name] for t in tasks}


@dataclass
class Outcome:
    """What a merge made: accuracy (%) per task, and the lambdas `table` or the merged visual
    `params` (names inside the visual tower) it was evaluated at, if any; `adaptation` for a learned
    table; `record`: extra keys of the results JSON ("merge_rule", "diagnostics", ...)."""

    accuracy: dict[str, float]
    table: CoefficientTable | None = None
    params: dict[str, torch.Tensor] | None = None
    adaptation: AdaptResult | None = None
    record: dict = field(default_factory=dict)


@dataclass
class Job:
    """One method run, loaded: what every merge works on."""

    method: str  # the registry's name (messages)
    result_name: str  # its results file stem: <result_name>.json, .state.pt
    problem: Problem
    merged: MergedEncoder
    config: RunConfig
    vectors: str  # the task-vector transform the problem was loaded with
    published: str | None = None  # key of the authors' published table, if any
    ranks: Ranks = Ranks()
    timings: dict[str, float] = field(default_factory=dict)
    log: TensorBoardLog | None = None

    def evaluate(
        self, encoder: Encoder | PerTask, tasks: Sequence[TaskData] | None = None
    ) -> dict[str, float]:
        """Accuracy (%) of `encoder` on `tasks` (default: every task of the problem)."""
        return evaluate_tasks(encoder, self.problem, self.config.batch_size, tasks, self.ranks)

    def evaluate_table(self, table: CoefficientTable) -> Outcome:
        """The outcome of the merged model at a lambdas `table`."""
        encoder = self.merged.encoder(table.lambdas, self.config.precision)
        return Outcome(self.evaluate(encoder), table=table)

    def evaluate_params(self, params: dict[str, torch.Tensor], record: dict) -> Outcome:
        """The outcome of the merged visual `params` of a merge rule (`record`: its results key)."""
        return Outcome(
            self.evaluate(self.merged.bind(params, self.config.precision)),
            params=params,
            record=record,
        )

    def reloaded(self) -> CoefficientTable:
        """The --coefficients table: the authors' published one ("published") or a JSON written by
        this repo, checked against the problem's tasks and entries (ValueError, one line)."""
        problem, source = self.problem, self.config.coefficients
        if source == "published":
            if self.published is None:
                raise ValueError(
                    f"{self.method}: the authors published coefficients only for the AdaMerging"
                    " methods"
                )
            where = f"published {self.published}/{problem.model}"
            table = published_table(self.published, problem.model)
            return table.for_entries(problem.tasks, problem.entries, where)
        return load_table(source).for_entries(problem.tasks, problem.entries, source)

    def state_file(self, suffix: str = ".state.pt", what: str = "AdaMerging") -> StateFile:
        """Where this run's learned state is saved: <output dir>/<result name><suffix>, with the
        hashes of the files it read."""
        path = self.config.output_dir / f"{self.result_name}{suffix}"
        return StateFile(path, self.ranks, what, input_hashes(self.problem.provenance))


def input_hashes(provenance: dict) -> dict[str, str]:
    """{task: its expert's sha256, "zeroshot": theta_0's} from a problem's provenance record."""
    files = provenance.get("files", {})
    out = {t: r["sha256"] for t, r in files.get("finetuned", {}).items() if "sha256" in r}
    if "sha256" in files.get("zeroshot", {}):
        out["zeroshot"] = files["zeroshot"]["sha256"]
    return out
