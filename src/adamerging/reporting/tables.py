"""Per-task tables (markdown, CSV) and normalized accuracy: each task's accuracy over its individual
expert's on the same test data, as the merging literature after AdaMerging reports it."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Mapping, Sequence


def fmt(x: float | None, spec: str = ".1f") -> str:
    """A number for report text: "-" when it is missing or NaN (an undefined correlation), else
    format(x, spec)."""
    return "-" if x is None or x != x else format(x, spec)


def row_average(accs: Mapping[str, float], tasks: Sequence[str]) -> float | None:
    """The row's own "Avg" if it carries one (a paper's printed average), else the mean over `tasks`
    (None if one is missing)."""
    if accs.get("Avg") is not None:
        return float(accs["Avg"])
    present = [accs[t] for t in tasks if accs.get(t) is not None]
    return sum(present) / len(present) if present and len(present) == len(tasks) else None


def _cell(value: float | None, digits: int, signed: bool) -> str:
    if value is None:
        return "-"
    value = round(float(value), digits) + 0.0  # no "-0.0" for a difference that rounds to zero
    return f"{value:{'+' if signed else ''}.{digits}f}"


def markdown_table(
    rows: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    digits: int = 1,
    *,
    signed: Collection[str] = (),
    average: bool = True,
    label: str = "method",
    extra: Sequence[str] = (),
) -> str:
    """One row per method: per-task accuracy and the average (computed over `tasks`).

    A row that carries an "Avg" entry shows it instead of the computed mean (the paper's printed
    averages); rows named in `signed` print with a sign (differences); `average=False` drops the
    column; `extra` columns (e.g. NORMALIZED) follow the average, read from each row as they are.
    """
    header = f"| {label} | " + " | ".join([*tasks, *(["Avg"] if average else []), *extra]) + " |"
    lines = [header, "|" + "---|" * (len(tasks) + 1 + average + len(extra))]
    for name, accs in rows.items():
        sign = name in signed
        cells = [_cell(accs.get(t), digits, sign) for t in tasks]
        if average:
            cells.append(_cell(row_average(accs, tasks), digits, sign))
        cells += [_cell(accs.get(c), digits, sign) for c in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(
    rows: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    digits: int = 2,
    average: bool = True,
    label: str = "method",
    extra: Sequence[str] = (),
) -> str:
    """The same rows as CSV (empty cell where a value is missing), for spreadsheets and plotting."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([label, *tasks, *(["Avg"] if average else []), *extra])
    for name, accs in rows.items():
        values = (
            [accs.get(t) for t in tasks]
            + ([row_average(accs, tasks)] if average else [])
            + [accs.get(c) for c in extra]
        )
        writer.writerow([name, *("" if v is None else round(float(v), digits) for v in values)])
    return out.getvalue()


NORMALIZED = "Norm."  # the column: average normalized accuracy (%)


INDIVIDUAL = "Individual"


def normalized(
    accs: Mapping[str, float], individual: Mapping[str, float], tasks: Sequence[str]
) -> dict[str, float] | None:
    """Normalized accuracy (%): 100 * accs[t] / individual[t] per task, and their mean as "Avg".

    The individual experts' accuracies must be on the same test data; None when a task is missing
    from either row. (The merging literature after AdaMerging reports it; the paper's tables are
    absolute.)
    """
    if any(accs.get(t) is None or not individual.get(t) for t in tasks):
        return None
    out = {t: 100.0 * accs[t] / individual[t] for t in tasks}
    return {**out, "Avg": sum(out.values()) / len(tasks)}


def with_normalized(
    rows: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    individual: Mapping[str, Mapping[str, float] | None],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Each row with its NORMALIZED average added, and the per-task normalized rows (the
    `individual` rows left out).

    `individual[title]` is the expert row that `rows[title]` is normalized by (ours for our rows,
    the paper's for the paper's rows); a title absent there (a difference row) gets no value.
    """
    out, per_task = {}, {}
    for title, accs in rows.items():
        norm = normalized(accs, individual[title], tasks) if individual.get(title) else None
        out[title] = {**accs, **({NORMALIZED: norm["Avg"]} if norm else {})}
        if norm and title not in (INDIVIDUAL, f"{INDIVIDUAL} (paper)"):
            per_task[title] = norm
    return out, per_task


def normalized_column(
    rows: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    individual: Mapping[str, float] | None,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """`rows` with their NORMALIZED average over `tasks` where `individual` (the experts' accuracies
    on the same test data) covers them, and the extra column to show ([] where it does not)."""
    if not individual:
        return dict(rows), []
    out, per_task = with_normalized(rows, tasks, {title: individual for title in rows})
    return out, [NORMALIZED] if per_task else []


NORMALIZED_TEXT = (
    "Normalized accuracy: each task's accuracy over its individual expert's on the same test data,"
    f" in %; `{NORMALIZED}` is their mean (as the merging literature after AdaMerging reports it;"
    " the paper's tables are absolute accuracies)."
)
