"""Task vectors and THE merge formula.

Every method is  theta_j = theta_0,j + sum_t lambda[j, t] * tau_t,j  (Eq. 1-2 of the AdaMerging
paper, Task Arithmetic with per-task / per-entry coefficients), written once in `merge_entry`. Task
Arithmetic, TIES, weight averaging and AdaMerging differ only in the task vectors (plain or
TIES-selected) and in the lambdas table (fixed, or learned).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized

import torch

TaskVectors = dict[str, torch.Tensor]  # entry key -> [T, *shape], tasks stacked on dim 0


def zero_task_vectors(num_tasks: int, shape: Sequence[int]) -> torch.Tensor:
    """[T, *shape] fp32 zeros that occupy one element: a broadcast view of a single 0.

    Used for entries no expert changed (the checkpoints' text-side leftovers): they keep their rows
    in every table and their entries in TIES's D, without 4 bytes per entry and task. Read-only.
    """
    return torch.zeros((), dtype=torch.float32).expand(num_tasks, *shape)


def is_zero_view(t: torch.Tensor) -> bool:
    """True for a `zero_task_vectors` tensor (every stride 0, value 0): no storage to read or
    write."""
    return t.numel() > 1 and all(s == 0 for s in t.stride()) and float(t[(0,) * t.dim()]) == 0.0


def task_vectors(
    theta0: Mapping[str, torch.Tensor],
    finetuned: Iterable[Mapping[str, torch.Tensor]],
    tasks: Sequence[str] = (),
) -> TaskVectors:
    """tau_t = theta_t - theta_0 (fp32) for every floating-point entry, stacked over tasks: [T,
    *shape].

    `finetuned` may be a list or any iterable (e.g. a generator loading one expert at a time): each
    expert is subtracted as it arrives and released before the next is read, so peak memory is the
    task vectors plus theta_0 plus one expert. With a one-shot iterable, `tasks` gives T. Entries
    whose task vectors are exactly zero for every task are `zero_task_vectors` views (no memory).
    Raises KeyError / ValueError naming the expert and entry on a missing key, an extra key or a
    shape mismatch. Source: Ilharco et al., "Editing models with task arithmetic" (2023), eq. 1.
    """
    num_tasks = len(finetuned) if isinstance(finetuned, Sized) else len(tasks)
    if num_tasks == 0:
        raise ValueError(
            "task_vectors needs at least one fine-tuned model (pass `tasks` with a generator)"
        )
    floating = [key for key, base in theta0.items() if base.is_floating_point()]
    # None: zero for every task so far
    stacks: dict[str, torch.Tensor | None] = dict.fromkeys(floating)
    seen = 0
    for i, sd in enumerate(finetuned):
        name = tasks[i] if i < len(tasks) else f"#{i}"
        if i >= num_tasks:
            raise ValueError(f"more fine-tuned models than tasks ({num_tasks}): {name}")
        extra = [k for k in sd if k not in theta0]
        if extra:
            raise KeyError(f"fine-tuned model {name} has entries theta_0 lacks: {extra[:5]}")
        for key in floating:
            base = theta0[key]
            if key not in sd:
                raise KeyError(f"fine-tuned model {name} has no entry {key!r} (theta_0 has it)")
            if sd[key].shape != base.shape:
                raise ValueError(
                    f"fine-tuned model {name}: entry {key!r} has shape {tuple(sd[key].shape)},"
                    f" theta_0 has {tuple(base.shape)}"
                )
            diff = sd[key].float() - base.float()
            if stacks[key] is None:
                if not bool(diff.any()):
                    continue
                stacks[key] = torch.zeros((num_tasks, *base.shape), dtype=torch.float32)
            stacks[key][i] = diff
        seen += 1
        del sd  # release this expert before the next one is loaded
    if seen != num_tasks:
        raise ValueError(f"expected {num_tasks} fine-tuned models, got {seen}")
    return {
        key: stack if stack is not None else zero_task_vectors(num_tasks, theta0[key].shape)
        for key, stack in stacks.items()
    }


def merge_entry(
    theta0_j: torch.Tensor, lambdas_j: torch.Tensor, tau_j: torch.Tensor
) -> torch.Tensor:
    """THE merge of one state-dict entry j: theta_j = theta_0,j + sum_t lambda_t,j tau_t,j.

    theta0_j: [*shape]; lambdas_j: [T] (this entry's merging coefficients); tau_j: [T, *shape] (the
    T task vectors of this entry, stacked). Differentiable in `lambdas_j`. Source: AdaMerging paper,
    Sec. 3 (task-wise Eq. and layer-wise Eq.); the authors' tables' pretrained column is always 1,
    and theta_0 + ... is bit-identical to 1 * theta_0 + ... while saving a multiply per entry.
    """
    n = theta0_j.numel()
    # One [1, T] x [T, n] product, theta_0 added into its output in place: bit-identical to theta_0
    # + tensordot(...), one full-size temporary fewer (on the CPU mostly page faults of fresh
    # memory, a third of the merge's cost). Legal for autograd: mm's backward does not read its
    # output. The add_ is on the product itself, not on a view of it, so backward needs no
    # CopySlices.
    mixed = coefficient_row(lambdas_j, tau_j) @ tau_j.reshape(tau_j.shape[0], n)
    return mixed.add_(theta0_j.reshape(1, n)).view(theta0_j.shape)


def coefficient_row(lambdas_j: torch.Tensor, tau_j: torch.Tensor) -> torch.Tensor:
    """The left factor of `merge_entry`'s product: entry j's lambdas [T] as a [1, T] row in tau's
    dtype."""
    return lambdas_j.to(tau_j.dtype).reshape(1, tau_j.shape[0])


def merge_entry_lambdas_grad(
    grad_j: torch.Tensor, row_j: torch.Tensor, tau_j: torch.Tensor
) -> torch.Tensor:
    """dL/d row_j [1, T] from dL/d theta_j [*shape]: the lambdas gradient of one entry, sum(grad_j *
    tau_t,j) per task.

    `row_j` is `coefficient_row(lambdas_j, tau_j)` (its layout picks the product, as in autograd),
    `tau_j` [T, *shape]. Computed exactly as autograd's backward of `merge_entry`'s mm (torch's
    `mm_mat1_backward`, FunctionsManual.cpp), so the numbers are bit-identical to backpropagating
    through `merge_entry`; lets a caller contract each entry's gradient as soon as it exists instead
    of holding every entry's gradient until autograd reaches the merge (it runs the merge's nodes
    last).
    """
    num_tasks, n = tau_j.shape[0], grad_j.numel()
    grad, mat2 = grad_j.reshape(1, n), tau_j.reshape(num_tasks, n)
    # mm's branch for a column-major input
    if row_j.stride(0) == 1 and row_j.stride(1) == row_j.shape[0]:
        return mat2.mm(grad.t()).t()
    return grad.mm(mat2.t())


def merge(
    theta0: dict[str, torch.Tensor],
    tau: TaskVectors,
    lambdas: torch.Tensor,
    entries: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The merged state dict: `merge_entry` for every entry with a task vector, theta_0 elsewhere.

    `lambdas` is [1, T] (task-wise: one row for every entry) or [L, T] with row j for `entries[j]`
    (layer-wise; `entries` defaults to theta0's order). Errors: ValueError on a wrong row/column
    count.
    """
    entries = list(entries) if entries is not None else list(theta0)
    rows = lambdas.shape[0]
    if rows not in (1, len(entries)):
        raise ValueError(
            f"lambdas table has {rows} rows; expected 1 (task-wise) or {len(entries)} (one per"
            " entry)"
        )
    out = {}
    for j, key in enumerate(entries):
        # integer buffers; entries no expert changed (theta_0 + 0)
        if key not in tau or is_zero_view(tau[key]):
            out[key] = theta0[key]
            continue
        lambdas_j = lambdas[0 if rows == 1 else j]
        if lambdas_j.shape[0] != tau[key].shape[0]:
            raise ValueError(
                f"lambdas table has {lambdas_j.shape[0]} columns; expected {tau[key].shape[0]} (one"
                " per task)"
            )
        out[key] = merge_entry(theta0[key], lambdas_j, tau[key])
    return out
