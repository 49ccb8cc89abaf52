"""The merges with a fixed lambdas table (no learning): zero-shot (0), weight averaging (1/T), Task
Arithmetic and TIES-Merging (--lam, 0.3 by default; TIES over TIES-selected task vectors), and each
expert alone (theta_0 + tau_t, on its own task). With --coefficients, the given table instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from adamerging.merging.tables import CoefficientTable, constant_table, one_hot_table
from adamerging.methods.job import Job, Outcome
from adamerging.run.config import DEFAULT_LAM, RunConfig

TableRule = Callable[[RunConfig, list[str]], CoefficientTable]  # (config, tasks) -> lambdas


def zero(config: RunConfig, tasks: list[str]) -> CoefficientTable:
    """theta_0 itself: every lambda 0."""
    return constant_table(tasks, 0.0)


def average(config: RunConfig, tasks: list[str]) -> CoefficientTable:
    """The mean of the experts: every lambda 1/T (or --lam)."""
    return constant_table(tasks, 1.0 / len(tasks) if config.lam is None else config.lam)


def scaled(config: RunConfig, tasks: list[str]) -> CoefficientTable:
    """Task Arithmetic's lambda for every task: --lam, else the authors' 0.3."""
    return constant_table(tasks, DEFAULT_LAM if config.lam is None else config.lam)


@dataclass(frozen=True)
class FixedTable:
    """The merged model at the table `rule` gives (or the --coefficients table)."""

    rule: TableRule
    learns: bool = field(default=False, init=False)
    takes_table: bool = field(default=True, init=False)

    def __call__(self, job: Job) -> Outcome:
        coefficients = job.config.coefficients
        table = job.reloaded() if coefficients else self.rule(job.config, job.problem.tasks)
        return job.evaluate_table(table)


@dataclass(frozen=True)
class EachExpert:
    """Each expert theta_0 + tau_t evaluated on its own task; under torchrun, on the rank that owns
    the task. No single merged model (--coefficients does not apply)."""

    learns: bool = field(default=False, init=False)
    takes_table: bool = field(default=False, init=False)

    def __call__(self, job: Job) -> Outcome:
        problem, accuracy = job.problem, {}
        for i, t in enumerate(problem.data):
            if job.ranks.owns(i):
                alone = one_hot_table(problem.tasks, t.name).lambdas
                encoder = job.merged.encoder(alone, job.config.precision)
                accuracy.update(job.evaluate(encoder, [t]))
        return Outcome(job.ranks.merge_dicts(accuracy))
