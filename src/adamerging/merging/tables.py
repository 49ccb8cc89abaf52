"""The coefficient tables lambdas [R, T]: task-wise (R = 1) or layer-wise (one row per entry),
their JSON form, and the authors' published tables. The published tables carry a pretrained
column, always 1; here it exists only in the JSON files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from adamerging.datasets.tasks import PAPER_TASKS

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
