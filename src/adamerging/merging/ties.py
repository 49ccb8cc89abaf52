"""TIES-Merging's trim and sign election (Yadav et al. 2023, Alg. 1, as the AdaMerging repo runs
it): a dense reference (`trim_top_k`, `elect_and_select`) and the low-memory `ties_select` the
methods use."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adamerging.merging.task_vectors import TaskVectors, is_zero_view


def trim_top_k(flat: torch.Tensor, k: float) -> torch.Tensor:
    """Per row of [T, D]: keep entries with |x| >= the (D - int(k D))-th smallest |x| (ties kept),
    zero the rest."""
    if not 0 < k <= 1:
        raise ValueError(f"TIES top-k fraction must be in (0, 1], got {k}")
    d = flat.shape[1]
    kth = max(d - int(d * k), 1)  # k = 1 keeps everything (the authors' code would fail there)
    trimmed = torch.empty_like(flat)
    for t in range(flat.shape[0]):  # one row at a time: kthvalue copies its input
        magnitude = flat[t].abs()
        cutoff = magnitude.kthvalue(kth).values
        trimmed[t] = torch.where(magnitude >= cutoff, flat[t], torch.zeros_like(flat[t]))
    return trimmed


def elect_and_select(trimmed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elected sign per entry (sign of the column sum; the majority sign where that sum is 0) and
    the trimmed rows with every entry that disagrees with it zeroed."""
    sign = torch.sign(trimmed.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    return sign, trimmed * keep


def _ties_cutoff(tau: TaskVectors, keys: Sequence[str], task: int, kth: int) -> float:
    """The kth smallest |x| of task `task`'s vector over `keys` (1-based), as `trim_top_k` finds it.

    Zero views are counted, not materialised: their zeros are the smallest magnitudes, so the answer
    is 0 when kth falls among them, else the (kth - zeros)-th smallest of the stored magnitudes.
    Memory: one fp32 buffer of the stored entries of this task, partitioned in place (numpy).
    """
    implicit = sum(tau[key][task].numel() for key in keys if is_zero_view(tau[key]))
    if kth <= implicit:
        return 0.0
    stored = [key for key in keys if not is_zero_view(tau[key])]
    magnitude = torch.empty(sum(tau[key][task].numel() for key in stored), dtype=torch.float32)
    offset = 0
    for key in stored:
        row = tau[key][task].reshape(-1)
        torch.abs(row, out=magnitude[offset : offset + row.numel()])
        offset += row.numel()
    values = magnitude.numpy()
    values.partition(kth - implicit - 1)  # in place: torch.kthvalue would copy the whole buffer
    return float(values[kth - implicit - 1])


def ties_select(
    tau: TaskVectors, k: float = 0.2, combine: str = "sum", inplace: bool = False
) -> TaskVectors:
    """TIES-Merging's trim and sign election, returning per-task selected vectors ([T, *shape] per
    entry).

    As the authors' code (TIES-Merging, Yadav et al. 2023, Alg. 1, and the AdaMerging repo): all
    entries flattened (keys sorted) into one vector per task of D entries; keep the top `k` fraction
    by magnitude (the (D - int(k D))-th smallest |x| is the cut-off, ties at it kept); elected sign
    = sign of the sum over tasks of the trimmed vectors, with the majority sign (sign of the sum of
    all elected signs) where that sum is 0; zero every entry that disagrees. Summing the result
    gives "dis-sum"; `combine="mean"` divides each entry by the number of tasks that kept it
    ("dis-mean").

    Low memory, exactly equal to the dense `trim_top_k` + `elect_and_select` on the flattened [T, D]
    matrix: one task's magnitudes at a time for the cut-off, then entry by entry across tasks. With
    `inplace=True` the selected vectors overwrite `tau` (no second copy); zero views stay zero views
    and count as zeros in D. The majority count is an exact integer (the dense float32 sum of signs
    could round above 2^24 entries; it decides only entries whose trimmed sum is exactly 0).
    Raises ValueError for k outside (0, 1] or an unknown `combine`.
    """
    if not 0 < k <= 1:
        raise ValueError(f"TIES top-k fraction must be in (0, 1], got {k}")
    if combine not in ("sum", "mean"):
        raise ValueError(f"TIES combine must be 'sum' or 'mean', got {combine!r}")
    keys = sorted(tau)
    num_tasks = next(iter(tau.values())).shape[0]
    out: TaskVectors = tau if inplace else {}
    for key, t in tau.items():  # contiguous, so the reshaped views below write into out[key]
        if is_zero_view(t):
            out[key] = t
        elif not inplace:
            out[key] = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            out[key] = t.contiguous()
    stored = [key for key in keys if not is_zero_view(out[key])]
    d = sum(out[key][0].numel() for key in keys)
    kth = max(d - int(d * k), 1)  # k = 1 keeps everything (the authors' code would fail there)
    for task in range(num_tasks):  # trim: each task's cut-off is computed before its rows change
        cutoff = _ties_cutoff(out, keys, task, kth)
        for key in stored:
            row = out[key][task]
            row.masked_fill_(row.abs() < cutoff, 0.0)
    votes = 0  # elected signs summed over all D entries (zero views and zero sums add nothing)
    for key in stored:
        votes += int(torch.sign(out[key].reshape(num_tasks, -1).sum(dim=0)).sum(dtype=torch.int64))
    majority = float((votes > 0) - (votes < 0))
    for key in stored:
        trimmed = out[key].reshape(num_tasks, -1)  # a view: the writes below land in out[key]
        sign = torch.sign(trimmed.sum(dim=0))
        sign[sign == 0] = majority
        trimmed.mul_(torch.where(sign > 0, trimmed > 0, trimmed < 0))
        if combine == "mean":
            trimmed.div_((trimmed != 0).sum(dim=0).clamp(min=1))
    return {key: out[key] for key in tau}  # caller's order
