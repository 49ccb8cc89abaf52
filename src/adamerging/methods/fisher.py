"""Fisher merging: each expert's parameters weighted by its diagonal Fisher information, entry by
entry.

    theta_j = sum_t w_t,j theta_t,j / sum_t w_t,j,   w_t = (F_t + floor) / (||F_t||_2 + floor)

Matena & Raffel, "Merging Models with Fisher-Weighted Averaging" (NeurIPS 2022), Eq. 3 (isotropic
merging weighted by the diagonal Fisher), as FusionBench applies it to CLIP
(github.com/tanganke/fusion_bench, `method/fisher_merging/{fisher_merging,clip_fisher_merging}.py`
and `config/method/fisher_merging/clip_fisher_merging.yaml`, itself from
github.com/yule-BUAA/MergeLM):
- every parameter of the image encoder is merged (no exclusions); the text tower is not involved;
- F_t is estimated on 256 train images of task t with the expert's frozen zero-shot head, from the
  model's own predictive distribution (no labels): per batch of 32, the squared gradient of
  sum_x sum_y sqrt(p(y|x)) log p(y|x), with p detached; summed over batches, divided by the image
  count;
- each F_t is divided by its global L2 norm ("normalize_fisher_weight"), and a floor of 1e-6
  ("minimal_fisher_weight") is added to every entry. The norm runs over FusionBench's entries: all
  but the projection `visual.proj`, which FusionBench's CLIP vision model lacks (its classifier
  holds the pretrained one); the task-vectors experts fine-tuned theirs, so here it is merged,
  Fisher-weighted, with the same normalised weights;
- the 256 images are a seeded shuffle of the train split, batched in that order: the folder
  layouts list images class by class, and the estimator depends on which images share a batch.
The batch-level square is FusionBench's estimator, not the paper's per-example expectation:
squaring a batch's summed gradient adds cross-example terms, so the estimate depends on the batch
size (32).

Memory: the experts are read from their files one at a time (the problem holds no task vectors for
this method: loading computes them once for the checks on the experts, then drops them), and
sum_t w_t theta_t and sum_t w_t are accumulated, so besides theta_0 one expert, its gradient, its
Fisher diagonal and the two sums are held (5 model-size fp32 tensor sets), plus the activations of
one `--micro-batch-size` chunk (a batch's gradient is summed over its chunks).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch

from adamerging.merging.encoder import MergedEncoder
from adamerging.run.config import RunConfig
from adamerging.run.experts import expert_paths, load_expert
from adamerging.run.problem import Problem
from adamerging.run.train_data import train_samples

Params = dict[str, torch.Tensor]


# FusionBench's CLIP vision model has no projection (it sits in its classifier, unmerged), so its
# Fisher norm never includes it: ours leaves it out of the norm too (it is still Fisher-weighted)
OUTSIDE_NORM = ("proj",)


# (parameters, inputs [B, ...]) -> logits [B, C]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]


def fisher_diagonal(
    forward: Forward,
    params: Params,
    batches: Iterable[torch.Tensor],
    micro_batch: int | None = None,
    bound: Callable[[Params], AbstractContextManager] = lambda params: contextlib.nullcontext(),
) -> Params:
    """The diagonal Fisher of the model `forward(params, x)` on `batches`, FusionBench's estimator.

    F_j = (1/N) sum_batches (d/d params_j  sum_{x in batch} sum_y sqrt(p_y(x)) log p_y(x))^2, p =
    softmax of the logits, sqrt(p) treated as a constant; N the number of inputs. Returns one fp32
    tensor per entry of `params` (same shapes; zero where an entry gets no gradient). `params` are
    not modified. A batch's gradient is summed over chunks of `micro_batch` inputs (memory: one
    chunk's activations and one gradient per entry) before it is squared. `bound(leaves)` wraps each
    forward and backward (`MergedEncoder.bound`: activation checkpointing).
    """
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    for x in batches:
        for chunk in x.split(micro_batch) if micro_batch else [x]:
            with bound(leaves):
                logits = forward(leaves, chunk).float()
                expectation = logits.softmax(dim=-1).detach().sqrt() * logits.log_softmax(dim=-1)
                expectation.sum().backward()
        for name, leaf in leaves.items():
            if leaf.grad is not None:
                fisher[name].addcmul_(leaf.grad, leaf.grad)
                leaf.grad = None
        count += x.shape[0]
    if count == 0:
        raise ValueError("Fisher information needs at least one input")
    for f in fisher.values():
        f.div_(count)
    return fisher


class FisherAverage:
    """Streams sum_t w_t theta_t and sum_t w_t over experts, w_t = (F_t + floor) / (||F_t||_2 +
    floor).

    `add` one expert at a time; `result()` gives the merged entries. FusionBench divides each F_t by
    its norm and then normalises those scales to sum to 1 over tasks: the common factor cancels in
    the ratio.
    """

    def __init__(self, floor: float = 1e-6, outside_norm: tuple[str, ...] = OUTSIDE_NORM):
        self.floor, self.outside_norm = floor, outside_norm
        self.weighted: Params = {}
        self.total: Params = {}

    def add(self, params: Params, fisher: Params) -> float:
        """Fold one expert in; `fisher` is consumed (overwritten with its weights). Returns
        ||F_t||_2 over the entries not in `outside_norm`."""
        norm = math.sqrt(
            sum(
                float(f.double().pow(2).sum())
                for name, f in fisher.items()
                if name not in self.outside_norm
            )
        )
        scale = 1.0 / (norm + self.floor)
        for name, f in fisher.items():
            weight = f.add_(self.floor).mul_(scale)
            if name in self.total:
                self.weighted[name].addcmul_(weight, params[name])
                self.total[name].add_(weight)
            else:
                self.weighted[name] = weight * params[name]
                self.total[name] = weight
        return norm

    def result(self) -> Params:
        """theta_j = sum_t w_t,j theta_t,j / sum_t w_t,j for every entry (the sums are consumed)."""
        if not self.total:
            raise ValueError("Fisher merging needs at least one expert")
        out = {name: self.weighted[name].div_(self.total[name]) for name in self.total}
        self.weighted, self.total = {}, {}
        return out


def batches(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    """Consecutive slices of `images` of at most `batch_size` (the last may be smaller)."""
    return (images[i : i + batch_size] for i in range(0, len(images), batch_size))


def fisher_merging(
    problem: Problem, merged: MergedEncoder, config: RunConfig
) -> tuple[Params, dict]:
    """The merge rule of `fisher_merging`: merged visual parameters (names inside the visual tower)
    and a record for the results JSON (train images used per task, Fisher norms, seconds).

    The experts are read from their files one at a time (the problem holds no task vectors for this
    method). Errors: DatasetError for a missing train split, CheckpointError for an expert.
    """
    started = time.perf_counter()
    average = FisherAverage(config.fisher_floor)
    norms, used = {}, {}
    samples = train_samples(config, problem, shuffled=True)
    for sample, path in zip(samples, expert_paths(config, problem.tasks)):
        expert = merged.visual_params(load_expert(path, problem.clip, problem.theta0))

        def forward(params: Params, x: torch.Tensor, head=sample.head) -> torch.Tensor:
            return head(merged(params, problem.normalize(x)))

        fisher = fisher_diagonal(
            forward,
            expert,
            batches(sample.images, config.train_batch_size),
            config.micro_batch_size,
            merged.bound,
        )
        norms[sample.name] = average.add(expert, fisher)
        used[sample.name] = sample.record
        del expert, fisher
    record = {"train_data": used, "fisher_norms": norms, "seconds": time.perf_counter() - started}
    return average.result(), record
