"""Task vectors, THE merge formula, TIES selection and the coefficient tables.

Every method is  theta_j = theta_0,j + sum_t lambda[j, t] * tau_t,j  (Eq. 1-2 of the AdaMerging
paper, Task Arithmetic with per-task / per-entry coefficients), written once in `merge_entry`. Task
Arithmetic, TIES, weight averaging and AdaMerging differ only in the task vectors (plain or
TIES-selected) and in the lambdas table (fixed, or learned). The authors' published tables carry a
pretrained column, always 1; here it exists only in the JSON files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# Coefficient tables


# the one spelling of granularity (code, JSON, CLI)
TASK_WISE, LAYER_WISE = "task-wise", "layer-wise"


@dataclass
class CoefficientTable:
    """The merging coefficients lambdas [R, T]: column t is task `tasks[t]`, row j is entry
    `entries[j]`.

    R = 1 for task-wise tables (`entries` None); otherwise R = len(entries), the state-dict entries
    in canonical order (layer-wise). The JSON form adds the authors' pretrained column (always 1)
    first.
    """

    lambdas: torch.Tensor
    tasks: list[str]
    entries: list[str] | None = None

    @property
    def granularity(self) -> str:
        """'task-wise' (one row) or 'layer-wise' (one row per entry)."""
        return TASK_WISE if self.lambdas.shape[0] == 1 else LAYER_WISE

    def to_json(self) -> dict:
        """{"columns": ["pretrained", *tasks], "granularity", "entries", "values": [R][T+1] rounded
        to 1e-6}."""
        return {
            "columns": ["pretrained", *self.tasks],
            "granularity": self.granularity,
            "entries": self.entries,
            "values": [
                [1.0, *(round(float(x), 6) for x in row)] for row in self.lambdas.detach().cpu()
            ],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> CoefficientTable:
        """The inverse of `to_json`; also reads tables written before `rows` was renamed `entries`.

        Errors (ValueError, naming `source`): missing keys, a first column other than 'pretrained',
        a ragged table, a pretrained column that is not all 1 (theta_0 always enters with weight 1).
        """
        try:
            columns, values = data["columns"], data["values"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{source}: a coefficient table needs 'columns' and 'values' (as written by this"
                " repo)"
            ) from None
        if not columns or columns[0] != "pretrained":
            raise ValueError(f"{source}: first column must be 'pretrained', got {columns[:1]}")
        tensor = torch.tensor(values, dtype=torch.float32)
        if tensor.dim() != 2 or tensor.shape[1] != len(columns):
            raise ValueError(
                f"{source}: values must be a table with {len(columns)} columns, got shape"
                f" {tuple(tensor.shape)}"
            )
        return cls(
            _drop_pretrained(tensor, source),
            list(columns[1:]),
            data.get("entries", data.get("rows")),
        )

    def for_entries(
        self, tasks: Sequence[str], entries: Sequence[str], source: str = ""
    ) -> CoefficientTable:
        """This table with its columns reordered to `tasks` and rows checked against `entries`."""
        missing = [t for t in tasks if t not in self.tasks]
        if missing:
            raise ValueError(
                f"{source}: coefficient table has no column for {missing}; its columns are"
                f" {self.tasks}"
            )
        if self.lambdas.shape[0] != 1:
            if self.lambdas.shape[0] != len(entries):
                raise ValueError(
                    f"{source}: coefficient table has {self.lambdas.shape[0]} rows; this model has"
                    f" {len(entries)} entries (expected 1 or {len(entries)})"
                )
            if self.entries is not None and list(self.entries) != list(entries):
                bad = next(i for i, (a, b) in enumerate(zip(self.entries, entries)) if a != b)
                raise ValueError(
                    f"{source}: row {bad} is {self.entries[bad]!r}, the model's entry {bad} is"
                    f" {entries[bad]!r}"
                )
        index = [self.tasks.index(t) for t in tasks]
        return CoefficientTable(
            self.lambdas[:, index].clone(),
            list(tasks),
            list(entries) if self.lambdas.shape[0] != 1 else None,
        )


def _drop_pretrained(values: torch.Tensor, source: str) -> torch.Tensor:
    """[R, T+1] with the pretrained column first -> lambdas [R, T]; ValueError unless that column is
    all 1."""
    if not bool((values[:, 0] == 1).all()):
        bad = int((values[:, 0] != 1).nonzero()[0, 0])
        raise ValueError(
            f"{source}: the pretrained column must be 1 in every row (theta_0 enters with weight"
            f" 1), row {bad} has {float(values[bad, 0])}"
        )
    return values[:, 1:].contiguous()


def constant_table(
    tasks: Sequence[str], value: float, entries: Sequence[str] | None = None
) -> CoefficientTable:
    """[1 or L, T] lambdas all equal to `value` (Task Arithmetic, TIES, weight averaging, the
    init)."""
    rows = 1 if entries is None else len(entries)
    return CoefficientTable(
        torch.full((rows, len(tasks)), float(value)),
        list(tasks),
        list(entries) if entries is not None else None,
    )


def one_hot_table(tasks: Sequence[str], task: str) -> CoefficientTable:
    """[1, T] lambdas: 1 for `task`, 0 elsewhere (the individual expert theta_0 + tau_task)."""
    table = constant_table(tasks, 0.0)
    table.lambdas[0, list(tasks).index(task)] = 1.0
    return table


PAPER_TASKS = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]


def published_table(method: str, model: str) -> CoefficientTable:
    """The authors' learned table for `method` (tw/lw_adamerging[pp]) and `model`, vendored as
    JSON."""
    data = json.loads(
        resources.files("adamerging.data")
        .joinpath("published_merging_coefficients.json")
        .read_text()
    )
    key = f"{method}/{model}"
    if key not in data["data"]:
        models = sorted({k.split("/")[1] for k in data["data"] if k.startswith(method + "/")})
        raise ValueError(
            f"no published coefficients for {method} on {model}: the authors published this"
            f" method's table for {', '.join(models) or 'no model'} only"
        )
    entries = None
    values = torch.tensor(data["data"][key], dtype=torch.float32)
    if values.shape[0] > 1:
        order = json.loads(
            resources.files("adamerging.data").joinpath("canonical_entry_order.json").read_text()
        )
        entries = [e["key"] for e in order[model]]
    return CoefficientTable(
        _drop_pretrained(values, f"published {key}"), list(PAPER_TASKS), entries
    )


def load_table(path: str | Path) -> CoefficientTable:
    """A table saved by this repo: a coefficients JSON, or a results JSON holding one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a coefficient table ({e})") from e
    if isinstance(data, dict) and "coefficients" in data and isinstance(data["coefficients"], dict):
        data = data["coefficients"]
    return CoefficientTable.from_json(data, str(path))
