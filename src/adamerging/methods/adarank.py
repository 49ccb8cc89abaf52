"""AdaRank and CART: task vectors merged in singular components, a mask per component.

AdaRank (Lee et al., arXiv 2503.22178; code david3684/AdaRank) is AdaMerging's loop (`adamerging
_step`: unlabeled test batches, entropy, Adam) over two learned tensors: the layer-wise lambdas
(unclamped) and one mask logit per singular component of every task's 2-D attention and MLP task
vector, applied with a straight-through estimator (`svd.ste_gates`). Its base is Task Arithmetic
(origin theta_0, tau_t) or CART (origin theta_bar = the experts' mean, tau_t - mean tau). CART
(Choi et al., arXiv 2412.12153) alone is the static merge AdaRank's CART run starts from: each
centred task vector kept to its top `--rank-fraction` of singular components, scaled by the prior.
The final model is one ordinary merged model: hard masks and the learned table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from adamerging.merging import svd
from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.task_vectors import (
    coefficient_row,
    is_zero_view,
    merge_entry,
    merge_entry_lambdas_grad,
)
from adamerging.methods.adamerging import Lambdas
from adamerging.run.config import RunConfig
from adamerging.runtime.device import ieee_fp32

# the experts' mean as origin (CART); Task Arithmetic's is theta_0
BASE_TA, BASE_CART = "ta", "cart"
# rho: the fraction of each task vector's singular components a run starts with (AdaRank's configs)
RANK_FRACTION = {BASE_TA: 1.0, BASE_CART: 0.16}
# CART's prior lambda per model (AdaRank's configs: 2.3 on ViT-B/32, 3.0 on ViT-L/14); 2.3 elsewhere
CART_PRIOR = {"ViT-L-14": 3.0}
CART_PRIOR_DEFAULT = 2.3


def rank_fraction(config: RunConfig, base: str) -> float:
    """rho: --rank-fraction, else the base's default."""
    return RANK_FRACTION[base] if config.rank_fraction is None else config.rank_fraction


def prior(config: RunConfig, base: str) -> float:
    """Every lambda at the start: --init for the Task Arithmetic base (0.3), CART's prior for
    CART (--cart-prior, else the model's)."""
    if base == BASE_TA:
        return config.init
    if config.cart_prior is not None:
        return config.cart_prior
    return CART_PRIOR.get(config.model, CART_PRIOR_DEFAULT)


class RankMasked:
    """The merged encoder of AdaRank and CART: `params((lambdas, gates))` is theta_j = origin_j +
    sum_t lambda_t,j U diag(g s) V^T for the decomposed entries (`svd.decomposed`), origin_j +
    sum_t lambda_t,j tau_t,j for the others.

    Built on a `MergedEncoder` (its module, theta_0 and task vectors on the device). lambdas:
    [R, T] (R = 1 or len(entries)); gates: [T, K], K = the decomposed entries' ranks side by side
    (`spans`). The SVDs are computed once, here (`svd_seconds`).
    """

    def __init__(self, merged: MergedEncoder, base: str):
        self.merged, self.base = merged, base
        self.device, self.entries, self.num_tasks = merged.device, merged.entries, merged.num_tasks
        started = time.perf_counter()
        self.origin: dict[str, torch.Tensor] = {}
        self.dense: dict[str, torch.Tensor] = {}
        self.factors: dict[str, svd.Factors] = {}
        self.spans: dict[str, tuple[int, int]] = {}
        for name, tau in merged.tau.items():
            origin, vectors = self._base(merged.theta0[name], tau)
            self.origin[name] = origin
            if vectors is not None and svd.decomposed(name, vectors):
                with ieee_fp32():
                    self.factors[name] = svd.factorize(vectors)
                start = sum(b - a for a, b in self.spans.values())
                self.spans[name] = (start, start + self.factors[name].rank)
            elif vectors is not None:
                self.dense[name] = vectors
        self.width = sum(b - a for a, b in self.spans.values())
        self.svd_seconds = time.perf_counter() - started

    def _base(
        self, theta0: torch.Tensor, tau: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(origin, task vectors) of one entry: theta_0 and tau (TA), or the experts' mean (as
        weight averaging merges it) and tau - mean (CART); None for an entry no expert changed."""
        if is_zero_view(tau):
            return theta0, None
        if self.base == BASE_TA:
            return theta0, tau
        with ieee_fp32():
            mean = torch.full((self.num_tasks,), 1.0 / self.num_tasks, device=tau.device)
            origin = merge_entry(theta0, mean, tau)
            return origin, tau - (origin - theta0)

    @property
    def factor_bytes(self) -> int:
        """Bytes of U, s, V of every decomposed entry and task."""
        return sum(f.bytes for f in self.factors.values())

    def initial_logits(self, rho: float) -> torch.Tensor:
        """[T, K]: +0.1 on each task's first floor(rho * r) components of every decomposed entry,
        -0.1 on the rest (AdaRank's initialisation)."""
        logits = torch.full((self.num_tasks, self.width), -0.1, device=self.device)
        for a, b in self.spans.values():
            logits[:, a : a + math.floor(rho * (b - a))] = 0.1
        return logits

    def _parts(self, learned: tuple[torch.Tensor, torch.Tensor]) -> dict[str, tuple]:
        """Each merged entry's (row lambdas [T], gates [T, r] or None)."""
        lambdas, gates = learned
        rows = self.merged._rows(lambdas)
        return {
            name: (row, gates[:, slice(*self.spans[name])] if name in self.spans else None)
            for name, row in rows.items()
        }

    def params(self, learned: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Merged visual parameters at (lambdas, gates); differentiable in both."""
        out = {}
        with ieee_fp32():
            for name, (row, gates) in self._parts(learned).items():
                out[name] = self._merge(name, row, gates)
        return out

    def _merge(self, name: str, row: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
        origin = self.origin[name]
        if name in self.factors:
            factors = self.factors[name]
            return svd.merge_svd_entry(origin, svd.svd_scale(row, gates, factors), factors)
        if name in self.dense:
            return merge_entry(origin, row, self.dense[name])
        return origin

    def streamed_params(
        self, learned: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
        """As `MergedEncoder.streamed_params`: leaves whose gradients G_j are contracted as they
        arrive, into dL/d scale_j = diag(U^T G_j V) (`svd.svd_scale_grad`) or dL/d lambdas_j, and
        `finish()` sends those into the graph of (lambdas, gates)."""
        inputs: dict[str, torch.Tensor] = {}  # per entry: its scale [T*r] or coefficient row
        grads: dict[str, torch.Tensor] = {}
        params = {}
        for name, (row, gates) in self._parts(learned).items():
            if name in self.factors:
                inputs[name] = svd.svd_scale(row, gates, self.factors[name])
            elif name in self.dense:
                inputs[name] = coefficient_row(row, self.dense[name])
            with torch.no_grad(), ieee_fp32():
                leaf = self._merged_leaf(name, inputs.get(name))
            if name in inputs:
                leaf.requires_grad_(True)
                leaf.register_post_accumulate_grad_hook(self._contract(name, inputs, grads))
            params[name] = leaf

        def finish() -> None:
            got = [name for name in inputs if name in grads]
            if got:
                with ieee_fp32():
                    torch.autograd.backward(
                        [inputs[name] for name in got], [grads.pop(name) for name in got]
                    )

        return params, finish

    def _merged_leaf(self, name: str, given: torch.Tensor | None) -> torch.Tensor:
        """Entry `name` merged at its scale / coefficient row `given` (no graph)."""
        origin = self.origin[name]
        if name in self.factors:
            return svd.merge_svd_entry(origin, given, self.factors[name])
        if name in self.dense:
            return merge_entry(origin, given, self.dense[name])
        return origin.clone()

    def _contract(self, name: str, inputs: dict, grads: dict) -> Callable[[torch.Tensor], None]:
        def contract(leaf: torch.Tensor) -> None:
            with ieee_fp32():
                if name in self.factors:
                    grads[name] = svd.svd_scale_grad(leaf.grad, self.factors[name])
                else:
                    grads[name] = merge_entry_lambdas_grad(
                        leaf.grad, inputs[name], self.dense[name]
                    )
            leaf.grad = None

        return contract

    def __call__(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return self.merged(params, images)

    def bound(self, params: dict[str, torch.Tensor]):
        return self.merged.bound(params)

    def encoder(
        self, learned: tuple[torch.Tensor, torch.Tensor], precision: str = "fp32"
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """images [N, 3, S, S] -> features [N, D] at fixed (lambdas, gates)."""
        with torch.no_grad():
            return self.merged.bind(self.params(learned), precision)


class RankMasks(torch.nn.Module):
    """AdaRank's learned tensors: `raw` lambdas [R, T] (unclamped) and `logits` [T, K].

    forward() = (lambdas, straight-through gates); hard() = (lambdas, hard masks), the final model.
    """

    def __init__(self, lambdas: Lambdas, logits: torch.Tensor, temperature: float):
        super().__init__()
        self.lambdas = lambdas
        self.logits = torch.nn.Parameter(logits.detach().clone().float())
        self.temperature = temperature

    @property
    def raw(self) -> torch.nn.Parameter:
        return self.lambdas.raw

    def of(self, raw: torch.Tensor) -> torch.Tensor:
        """The lambdas raw values stand for (unclamped: themselves)."""
        return self.lambdas.of(raw)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lambdas(), svd.ste_gates(self.logits, self.temperature)

    def hard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambdas, 1[p > 0.5]) without gradients."""
        return self.lambdas().detach(), svd.hard_gates(self.logits.detach())
