"""Measuring a merged model on labeled test samples: per-sample entropy and loss, accuracy, their
correlation and decile-binned means (task-vector statistics: `stats.task_vector_stats`). Used
by the diagnostics and by the entropy-vs-loss and coefficients experiments (the one place Task
Arithmetic's entropy and loss are measured).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adamerging.merging.encoder import MergedEncoder
from adamerging.methods.diagnostics.checks import spearman
from adamerging.models.evaluation import Normalizer, accuracy, predict
from adamerging.models.objectives import softmax_entropy
from adamerging.run.problem import TaskData


def entropy_and_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Shannon entropy of softmax(logits) [N] (nats) and cross-entropy with the labels
    [N]."""
    logits = logits.float()
    return softmax_entropy(logits), F.cross_entropy(
        logits, torch.as_tensor(labels), reduction="none"
    )


@dataclass
class Outcome:
    """One merged model evaluated on one task's labeled sample."""

    entropy: torch.Tensor  # per sample [N], nats
    loss: torch.Tensor  # per-sample cross-entropy [N]
    accuracy: float  # %

    @property
    def mean_entropy(self) -> float:
        """Mean entropy over the sample (nats)."""
        return float(self.entropy.mean())


def measure(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    task: TaskData,
    normalize: Normalizer,
    batch_size: int,
) -> Outcome:
    """Entropy, loss and accuracy of `encoder` (images -> features) with the task's head on its
    labeled images."""
    logits = predict(encoder, task.head, task.images, normalize, batch_size)
    entropy, loss = entropy_and_loss(logits, task.labels)
    return Outcome(entropy, loss, accuracy(logits, task.labels))


def sample_tasks(data: Sequence[TaskData], samples: int, seed: int) -> list[TaskData]:
    """A seeded subset of each task's test split, with labels (per task name, so it does not depend
    on the task list)."""
    out = []
    for t in data:
        if t.labels is None:
            raise ValueError(f"{t.name}: the diagnostics need the test labels")
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(t.name.encode()))
        n = len(t.images)
        index = (
            torch.randperm(n, generator=generator)[:samples].sort().values
            if samples < n
            else torch.arange(n)
        )
        out.append(TaskData(t.name, t.images[index], t.head, torch.as_tensor(t.labels)[index]))
    return out


class Evaluator:
    """Outcome of a task-wise lambdas row [T] on a task, memoised; keeps one merged encoder at a
    time (memory)."""

    def __init__(
        self,
        merged: MergedEncoder,
        sample: Sequence[TaskData],
        normalize: Normalizer,
        batch_size: int,
    ):
        self.merged, self.sample, self.normalize, self.batch_size = (
            merged,
            sample,
            normalize,
            batch_size,
        )
        self.cache: dict[tuple, Outcome] = {}
        self._row: tuple | None = None
        self._encoder: Callable | None = None

    def __call__(self, lambdas: Sequence[float], task_index: int) -> Outcome:
        """The outcome of theta_0 + sum_t lambdas[t] tau_t on task `task_index` of the sample."""
        row = tuple(round(float(c), 9) for c in lambdas)
        if (row, task_index) not in self.cache:
            if row != self._row:
                self._encoder = None  # free the previous merged parameters first
                self._encoder = self.merged.encoder(torch.tensor([row]))
                self._row = row
            self.cache[(row, task_index)] = measure(
                self._encoder, self.sample[task_index], self.normalize, self.batch_size
            )
        return self.cache[(row, task_index)]


def binned_means(entropy: np.ndarray, loss: np.ndarray, bins: int = 10) -> list[dict]:
    """Mean entropy and loss per entropy quantile bin (deciles by default), lowest entropy first.

    Bin b holds the values in (q_b, q_b+1] (`right=True`: a value equal to a quantile edge belongs
    to the bin below it, as the quantile's definition "at least b/10 of the values are <= q_b"
    says); ties stay in one bin, and empty bins (repeated edges) are dropped. Returns [{"entropy",
    "loss", "count"}].
    """
    edges = np.unique(np.quantile(entropy, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return (
            [
                {
                    "entropy": float(entropy.mean()),
                    "loss": float(loss.mean()),
                    "count": int(len(entropy)),
                }
            ]
            if len(entropy)
            else []
        )
    which = np.clip(np.digitize(entropy, edges[1:-1], right=True), 0, len(edges) - 2)
    return [
        {
            "entropy": float(entropy[which == b].mean()),
            "loss": float(loss[which == b].mean()),
            "count": int((which == b).sum()),
        }
        for b in range(len(edges) - 1)
        if (which == b).any()
    ]


def correlation_report(per_task: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict:
    """Spearman(entropy, loss) per task and pooled over all samples, and the binned means.

    `per_task`: task -> (entropy [N], loss [N]). Returns {"per_task", "pooled", "binned": {task...,
    "pooled"}}.
    """
    pooled_h = np.concatenate([np.asarray(h, dtype=np.float64) for h, _ in per_task.values()])
    pooled_l = np.concatenate([np.asarray(ce, dtype=np.float64) for _, ce in per_task.values()])
    return {
        "per_task": {t: spearman(h, ce) for t, (h, ce) in per_task.items()},
        "pooled": spearman(pooled_h, pooled_l),
        "binned": {
            **{
                t: binned_means(np.asarray(h, np.float64), np.asarray(ce, np.float64))
                for t, (h, ce) in per_task.items()
            },
            "pooled": binned_means(pooled_h, pooled_l),
        },
    }
