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
from typing import Sequence

import torch

TaskVectors = dict[str, torch.Tensor]  # entry key -> [T, *shape], tasks stacked on dim 0


def task_vectors(theta0: dict[str, torch.Tensor], finetuned: Sequence[dict[str, torch.Tensor]], tasks: Sequence[str] = ()) -> TaskVectors:
    """tau_t = theta_t - theta_0 for every floating-point entry, stacked over tasks."""
    out: TaskVectors = {}
    for key, base in theta0.items():
        if not base.is_floating_point():
            continue
        rows = []
        for i, sd in enumerate(finetuned):
            name = tasks[i] if i < len(tasks) else f"#{i}"
            if key not in sd:
                raise KeyError(f"fine-tuned model {name} has no entry {key!r} (theta_0 has it)")
            if sd[key].shape != base.shape:
                raise ValueError(f"fine-tuned model {name}: entry {key!r} has shape {tuple(sd[key].shape)}, theta_0 has {tuple(base.shape)}")
            rows.append(sd[key].float() - base.float())
        out[key] = torch.stack(rows)
    for i, sd in enumerate(finetuned):
        extra = [k for k in sd if k not in theta0]
        if extra:
            name = tasks[i] if i < len(tasks) else f"#{i}"
            raise KeyError(f"fine-tuned model {name} has entries theta_0 lacks: {extra[:5]}")
    return out


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


def ties_select(tau: TaskVectors, k: float = 0.2, combine: str = "sum") -> TaskVectors:
    """TIES-Merging's trim and sign election, returning per-task selected vectors.

    As the authors' code: all entries flattened (keys sorted) into one vector per task; keep the top
    `k` fraction by magnitude (k-th smallest |x| with k = D - int(k D) as the cut-off, ties kept);
    elected sign = sign of the sum of trimmed vectors, with the majority sign where that sum is 0;
    zero every entry that disagrees. Summing the result gives "dis-sum"; `combine="mean"` divides each
    entry by the number of tasks that kept it, so the sum gives TIES's "dis-mean".
    """
    if combine not in ("sum", "mean"):
        raise ValueError(f"TIES combine must be 'sum' or 'mean', got {combine!r}")
    keys = sorted(tau)
    num_tasks = next(iter(tau.values())).shape[0]
    flat = torch.cat([tau[key].reshape(num_tasks, -1) for key in keys], dim=1)
    _, selected = elect_and_select(trim_top_k(flat, k))
    del flat
    if combine == "mean":
        selected = selected / (selected != 0).sum(dim=0).clamp(min=1)
    out: TaskVectors = {}
    offset = 0
    for key in keys:
        n = tau[key][0].numel()
        out[key] = selected[:, offset:offset + n].reshape(tau[key].shape)
        offset += n
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
