"""Task vectors, the one merge function, and the baselines' coefficient tables.

Everything is expressed as  theta_j = c[j, 0] * theta_0,j + sum_t c[j, t] * tau_t,j  over a
coefficient table c with the pretrained column first (as in the authors' published tables):
Task Arithmetic, TIES, weight averaging and AdaMerging differ only in the task vectors they use
(plain or TIES-selected) and in the table (fixed, or learned).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Sized

import torch

TaskVectors = dict[str, torch.Tensor]  # entry key -> [T, *shape], tasks stacked on dim 0


def zero_task_vectors(num_tasks: int, shape: Sequence[int]) -> torch.Tensor:
    """[T, *shape] fp32 zeros that occupy one element: a broadcast view of a single 0.

    Used for entries no expert changed (the checkpoints' text-side leftovers): they keep their rows in
    every table and their entries in TIES's D, without 4 bytes per entry and task. Read-only.
    """
    return torch.zeros((), dtype=torch.float32).expand(num_tasks, *shape)


def is_zero_view(t: torch.Tensor) -> bool:
    """True for a `zero_task_vectors` tensor (every stride 0, value 0): no storage to read or write."""
    return t.numel() > 1 and all(s == 0 for s in t.stride()) and float(t[(0,) * t.dim()]) == 0.0


def task_vectors(theta0: Mapping[str, torch.Tensor], finetuned: Iterable[Mapping[str, torch.Tensor]],
                 tasks: Sequence[str] = ()) -> TaskVectors:
    """tau_t = theta_t - theta_0 (fp32) for every floating-point entry, stacked over tasks: [T, *shape].

    `finetuned` may be a list or any iterable (e.g. a generator loading one expert at a time): each
    expert is subtracted as it arrives and released before the next is read, so peak memory is the
    task vectors plus theta_0 plus one expert. With a one-shot iterable, `tasks` gives T. Entries whose
    task vectors are exactly zero for every task are `zero_task_vectors` views (no memory).
    Raises KeyError / ValueError naming the expert and entry on a missing key, an extra key or a shape
    mismatch. Source: Ilharco et al., "Editing models with task arithmetic" (2023), eq. 1.
    """
    num_tasks = len(finetuned) if isinstance(finetuned, Sized) else len(tasks)
    if num_tasks == 0:
        raise ValueError("task_vectors needs at least one fine-tuned model (pass `tasks` with a generator)")
    floating = [key for key, base in theta0.items() if base.is_floating_point()]
    stacks: dict[str, torch.Tensor | None] = dict.fromkeys(floating)  # None: zero for every task so far
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
                raise ValueError(f"fine-tuned model {name}: entry {key!r} has shape {tuple(sd[key].shape)}, theta_0 has {tuple(base.shape)}")
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
    return {key: stack if stack is not None else zero_task_vectors(num_tasks, theta0[key].shape)
            for key, stack in stacks.items()}


def merge(theta0: dict[str, torch.Tensor], tau: TaskVectors, coefficients: torch.Tensor, keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """theta_j = c[j,0] theta_0,j + sum_t c[j,t+1] tau_t,j.

    `coefficients` is [1, T+1] (task-wise: one row for every entry) or [L, T+1] with row j for
    `keys[j]` (layer-wise; `keys` defaults to theta0's order). Differentiable in the coefficients.
    """
    keys = list(keys) if keys is not None else list(theta0)
    rows = coefficients.shape[0]
    if rows not in (1, len(keys)):
        raise ValueError(f"coefficient table has {rows} rows; expected 1 (task-wise) or {len(keys)} (one per entry)")
    out = {}
    for j, key in enumerate(keys):
        c = coefficients[0 if rows == 1 else j]
        base = theta0[key]
        if key not in tau:  # integer buffers have no task vector
            out[key] = base
            continue
        t = tau[key]
        if c.shape[0] != t.shape[0] + 1:
            raise ValueError(f"coefficient table has {c.shape[0]} columns; expected {t.shape[0] + 1} (pretrained + {t.shape[0]} tasks)")
        out[key] = c[0] * base + torch.tensordot(c[1:].to(t.dtype), t, dims=1)
    return out


def trim_top_k(flat: torch.Tensor, k: float) -> torch.Tensor:
    """Per row of [T, D]: keep entries with |x| >= the (D - int(k D))-th smallest |x| (ties kept), zero the rest."""
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
    """Elected sign per entry (sign of the column sum; the majority sign where that sum is 0) and the
    trimmed rows with every entry that disagrees with it zeroed."""
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
        torch.abs(row, out=magnitude[offset:offset + row.numel()])
        offset += row.numel()
    values = magnitude.numpy()
    values.partition(kth - implicit - 1)  # in place: torch.kthvalue would copy the whole buffer
    return float(values[kth - implicit - 1])


def ties_select(tau: TaskVectors, k: float = 0.2, combine: str = "sum", inplace: bool = False) -> TaskVectors:
    """TIES-Merging's trim and sign election, returning per-task selected vectors ([T, *shape] per entry).

    As the authors' code (TIES-Merging, Yadav et al. 2023, Alg. 1, and the AdaMerging repo): all
    entries flattened (keys sorted) into one vector per task of D entries; keep the top `k` fraction
    by magnitude (the (D - int(k D))-th smallest |x| is the cut-off, ties at it kept); elected sign =
    sign of the sum over tasks of the trimmed vectors, with the majority sign (sign of the sum of all
    elected signs) where that sum is 0; zero every entry that disagrees. Summing the result gives
    "dis-sum"; `combine="mean"` divides each entry by the number of tasks that kept it ("dis-mean").

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


@dataclass
class CoefficientTable:
    """[R, T+1] merging coefficients; column 0 is theta_0's (1), columns 1.. follow `tasks`.

    R = 1 for task-wise tables; otherwise R = len(rows) with rows = the entry keys in canonical order.
    """

    values: torch.Tensor
    tasks: list[str]
    rows: list[str] | None = None

    @property
    def granularity(self) -> str:
        return "task-wise" if self.values.shape[0] == 1 else "layer-wise"

    def to_json(self) -> dict:
        return {
            "columns": ["pretrained", *self.tasks],
            "granularity": self.granularity,
            "rows": self.rows,
            "values": [[round(float(x), 6) for x in row] for row in self.values.detach().cpu()],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> "CoefficientTable":
        try:
            columns, values = data["columns"], data["values"]
        except (KeyError, TypeError):
            raise ValueError(f"{source}: a coefficient table needs 'columns' and 'values' (as written by this repo)") from None
        if not columns or columns[0] != "pretrained":
            raise ValueError(f"{source}: first column must be 'pretrained', got {columns[:1]}")
        tensor = torch.tensor(values, dtype=torch.float32)
        if tensor.dim() != 2 or tensor.shape[1] != len(columns):
            raise ValueError(f"{source}: values must be a table with {len(columns)} columns, got shape {tuple(tensor.shape)}")
        return cls(tensor, list(columns[1:]), data.get("rows"))

    def for_entries(self, tasks: Sequence[str], keys: Sequence[str], source: str = "") -> "CoefficientTable":
        """This table with its columns reordered to `tasks` and rows checked against `keys`."""
        missing = [t for t in tasks if t not in self.tasks]
        if missing:
            raise ValueError(f"{source}: coefficient table has no column for {missing}; its columns are {self.tasks}")
        if self.values.shape[0] != 1:
            if self.values.shape[0] != len(keys):
                raise ValueError(f"{source}: coefficient table has {self.values.shape[0]} rows; this model has {len(keys)} entries (expected 1 or {len(keys)})")
            if self.rows is not None and list(self.rows) != list(keys):
                bad = next(i for i, (a, b) in enumerate(zip(self.rows, keys)) if a != b)
                raise ValueError(f"{source}: row {bad} is {self.rows[bad]!r}, the model's entry {bad} is {keys[bad]!r}")
        index = [0] + [1 + self.tasks.index(t) for t in tasks]
        rows = list(keys) if self.values.shape[0] != 1 else None
        return CoefficientTable(self.values[:, index].clone(), list(tasks), rows)


def constant_table(tasks: Sequence[str], value: float, keys: Sequence[str] | None = None) -> CoefficientTable:
    """[1 or L, T+1] table with 1 for theta_0 and `value` for every task (TA, TIES, WA, init)."""
    rows = 1 if keys is None else len(keys)
    values = torch.full((rows, len(tasks) + 1), float(value))
    values[:, 0] = 1.0
    return CoefficientTable(values, list(tasks), list(keys) if keys is not None else None)


PAPER_TASKS = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]


def published_table(method: str, model: str) -> CoefficientTable:
    """The authors' learned table for `method` (tw/lw_adamerging[pp]) and `model`, vendored as JSON."""
    data = json.loads(resources.files("adamerging.data").joinpath("published_merging_coefficients.json").read_text())
    key = f"{method}/{model}"
    if key not in data["data"]:
        available = ", ".join(sorted(data["data"]))
        raise ValueError(f"no published coefficients for {key}; the authors published: {available}")
    rows = None
    values = torch.tensor(data["data"][key], dtype=torch.float32)
    if values.shape[0] > 1:
        order = json.loads(resources.files("adamerging.data").joinpath("canonical_entry_order.json").read_text())
        rows = [e["key"] for e in order[model]]
    return CoefficientTable(values, list(PAPER_TASKS), rows)


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
