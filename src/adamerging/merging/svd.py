"""Task vectors in singular components, and the merge over them with a gate per component.

AdaRank (Lee et al., arXiv 2503.22178, Sec. 3; code david3684/AdaRank) and CART (Choi et al.,
"Revisiting weight averaging for model merging", arXiv 2412.12153) merge each 2-D attention and MLP
matrix j as

    theta_j = origin_j + sum_t lambda_t,j U_t,j diag(g_t,j * s_t,j) V_t,j^T

with tau_t,j = U diag(s) V^T the thin SVD of task t's vector and g a gate (0/1 mask) per singular
component. `merge_svd_entry` writes it once, as one GEMM over the tasks' factors concatenated:
U_cat diag(concat lambda_t g_t s_t) V_cat^T. `svd_scale_grad` is its backward as each merged
parameter's gradient G_j arrives: dL/d(scale) = diag(U_cat^T G_j V_cat).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# the matrices AdaRank decomposes: each residual block's attention and MLP weights (2-D), by their
# names in open_clip's visual tower; LayerNorms, biases, embeddings and the projection stay dense
SVD_ENTRY_PREFIX = "transformer.resblocks."


def decomposed(name: str, tau: torch.Tensor) -> bool:
    """Whether entry `name` (inside the visual tower) with task vectors `tau` [T, *shape] is merged
    in singular components: a 2-D weight of a residual block (in_proj_weight as one stacked q/k/v
    matrix, out_proj.weight, c_fc.weight, c_proj.weight)."""
    return name.startswith(SVD_ENTRY_PREFIX) and tau.dim() == 3


@dataclass
class Factors:
    """The thin SVDs of one entry's T task vectors [T, m, n], concatenated over tasks.

    u: [m, T*r] (task t's columns t*r..(t+1)*r), s: [T, r] (descending per task), vh: [T*r, n];
    r = min(m, n). u diag(s.flatten()) vh = sum_t tau_t up to the SVD's float32 round-off.
    """

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    @property
    def rank(self) -> int:
        """r: singular components per task."""
        return self.s.shape[1]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.u, self.s, self.vh))


def factorize(tau: torch.Tensor) -> Factors:
    """The thin SVD (float32, `torch.linalg.svd`, batched over tasks) of task vectors [T, m, n]."""
    num_tasks, m, n = tau.shape
    u, s, vh = torch.linalg.svd(tau.float(), full_matrices=False)
    rank = s.shape[1]
    return Factors(
        u.permute(1, 0, 2).reshape(m, num_tasks * rank).contiguous(),
        s.contiguous(),
        vh.reshape(num_tasks * rank, n).contiguous(),
    )


def svd_scale(lambdas_j: torch.Tensor, gates_j: torch.Tensor, factors: Factors) -> torch.Tensor:
    """The diagonal of the merge, [T*r]: lambda_t,j * g_t,j,k * s_t,j,k for task t, component k.

    lambdas_j: [T]; gates_j: [T, r] (1 keeps a component, 0 drops it; the straight-through gates of
    `ste_gates` while learning)."""
    return (lambdas_j.reshape(-1, 1) * gates_j * factors.s).reshape(-1)


def merge_svd_entry(origin_j: torch.Tensor, scale: torch.Tensor, factors: Factors) -> torch.Tensor:
    """theta_j = origin_j + U_cat diag(scale) V_cat^T: one GEMM (AdaRank's merge; `svd_scale`
    gives `scale` [T*r]). origin_j: [m, n]. Differentiable in `scale`."""
    return torch.addmm(origin_j, factors.u * scale, factors.vh)


def svd_scale_grad(grad_j: torch.Tensor, factors: Factors) -> torch.Tensor:
    """dL/d scale [T*r] from dL/d theta_j [m, n]: diag(U_cat^T G V_cat^T^T), without the [T*r, T*r]
    product (the same value as autograd through `merge_svd_entry`, up to summation order)."""
    return (grad_j @ factors.vh.t()).mul_(factors.u).sum(0)


def ste_gates(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """AdaRank's straight-through mask: forward the hard mask 1[p > 0.5], backward through
    p = sigmoid(logits / temperature) (AdaRank Sec. 3.2). Same shape as `logits`."""
    p = torch.sigmoid(logits / temperature)
    return p + (hard_gates(logits) - p).detach()


def hard_gates(logits: torch.Tensor) -> torch.Tensor:
    """The hard mask 1[sigmoid(logits / T) > 0.5] = 1[logits > 0] (any T > 0), float."""
    return (logits > 0).to(logits.dtype)
