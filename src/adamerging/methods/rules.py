"""The merges whose parameters come from a rule, not from lambdas over task vectors: Fisher merging
and RegMean (statistics on each task's train split) and the multi-task model (one encoder
fine-tuned on every task at once). Each reads the experts itself; the problem holds no task vectors
for them (`merging.transforms`: "none")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adamerging.merging.encoder import MergedEncoder
from adamerging.methods.job import Job, Outcome
from adamerging.run.config import RunConfig
from adamerging.run.experts import load_multitask
from adamerging.run.problem import Problem

# (problem, merged encoder, config) -> (merged visual parameters, record for the results)
MergeRule = Callable[[Problem, MergedEncoder, RunConfig], tuple[dict[str, torch.Tensor], dict]]


def multitask(
    problem: Problem, merged: MergedEncoder, config: RunConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The visual entries of the encoder fine-tuned on every task at once ("Traditional MTL")."""
    return merged.visual_params(load_multitask(config, problem.clip, problem.theta0)), {}


@dataclass(frozen=True)
class Rule:
    """The merged model at the parameters `rule` computes; `train_data`: the rule reads each task's
    train split (its settings are recorded with the result)."""

    rule: MergeRule
    train_data: bool = False
    learns: bool = field(default=False, init=False)

    takes_table: bool = field(default=False, init=False)

    def __call__(self, job: Job) -> Outcome:
        params, record = self.rule(job.problem, job.merged, job.config)
        return job.evaluate_params(params, {"merge_rule": record})
