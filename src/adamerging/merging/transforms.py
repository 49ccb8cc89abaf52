"""The task-vector transforms, as a registry: what a method merges instead of the plain task
vectors tau_t = theta_t - theta_0.

- "plain": tau_t itself (Task Arithmetic, AdaMerging);
- "ties": TIES-Merging's trim and sign election (`ties.ties_select`, with `--ties-k` and
  `--ties-combine`; TIES-Merging, AdaMerging++);
- "none": zero views that take no memory, for methods that read the experts themselves (Fisher
  merging, RegMean, the multi-task model): the task vectors were computed for the checks on the
  experts, then dropped.

A transform maps the stacked task vectors {entry: [T, *shape]} and the run's settings (an object
with the fields it reads, a `RunConfig`) to new ones; it may overwrite its input. A new transform
(DARE, say) is one entry here and a choice of `--vectors`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adamerging.merging.task_vectors import TaskVectors, zero_task_vectors
from adamerging.merging.ties import ties_select

Transform = Callable[[TaskVectors, Any], TaskVectors]


def _none(tau: TaskVectors, settings: Any) -> TaskVectors:
    return {k: zero_task_vectors(t.shape[0], t.shape[1:]) for k, t in tau.items()}


TRANSFORMS: dict[str, Transform] = {
    "plain": lambda tau, settings: tau,
    "ties": lambda tau, s: ties_select(tau, s.ties_k, s.ties_combine, inplace=True),
    "none": _none,
}


def transform(name: str, tau: TaskVectors, settings: Any) -> TaskVectors:
    """`TRANSFORMS[name](tau, settings)`; ValueError naming the known transforms otherwise."""
    if name not in TRANSFORMS:
        raise ValueError(f"task vectors must be one of {', '.join(TRANSFORMS)}, got {name!r}")
    return TRANSFORMS[name](tau, settings)
