"""Printing per-task tables and writing results JSON atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from collections.abc import Collection, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .checkpoints import atomic_write
from .cli import command_name
from .provenance import QUICK_BUILD_NOTE


def package_versions() -> dict[str, str]:
    """Versions of python, torch, open_clip and numpy, recorded with every result."""
    import numpy
    import open_clip
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": numpy.__version__,
    }


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


# normalized accuracy ------------------------------------------------------------------------------

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


def saved_individual(folder: str | Path, test_data: Mapping[str, Any]) -> dict[str, float] | None:
    """The individual experts' accuracies of <folder>/individual.json (folder: results/<model>) for
    the tasks of `test_data` (a run's `test_data` record) that it measured on the same test data;
    None when there is none."""
    path = Path(folder) / "individual.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    recorded = saved.get("test_data") or {}
    same = {
        t: saved["accuracy"][t]
        for t, record in test_data.items()
        if t in saved["accuracy"] and recorded.get(t) == record
    }
    return same or None


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


# the paper's numbers ------------------------------------------------------------------------------

# Our row titles that the paper spells differently.
PAPER_TITLES = {"Zero-shot": "Pretrained"}


def paper_tables() -> dict:
    """The vendored paper_tables.json (Tables 2-4, the authors' logs)."""
    return json.loads(resources.files("adamerging.data").joinpath("paper_tables.json").read_text())


def paper_findings(model: str = "ViT-B-32") -> dict:
    """The numbers the paper states in its text for `model` (Sec. 3.2 and 5: the entropy-loss
    Spearman, the ablations, the coefficient ranges), without the "_" explanation keys; {} if it
    states none."""
    return {
        k: v
        for k, v in paper_tables().get(f"findings_{model}", {}).items()
        if not k.startswith("_")
    }


def paper_row(
    model: str, title: str, tasks: Sequence[str] | None = None
) -> dict[str, float] | None:
    """The paper's row `title` (our spelling) for `model`, restricted to `tasks`, or None if not
    reported.

    "Avg" is the paper's printed average when `tasks` are all 8 of its tasks, else the mean over
    `tasks`.
    """
    tables = paper_tables()
    row = tables.get(model, {}).get(PAPER_TITLES.get(title, title))
    if row is None:
        return None
    tasks = list(tasks) if tasks is not None else list(tables["task_order"])
    if not any(t in row for t in tasks):
        return None
    out = {t: row[t] for t in tasks if t in row}
    if set(tasks) == set(tables["task_order"]) and "Avg" in row:
        out["Avg"] = row["Avg"]
    return out


def with_paper(
    ours: Mapping[str, Mapping[str, float] | None],
    paper: Mapping[str, Mapping[str, float] | None],
    columns: Sequence[str],
    average: bool = True,
) -> tuple[dict[str, dict[str, float]], set[str]]:
    """Each of our rows, then the paper's row `<title> (paper)` and `<title> (ours - paper)` where
    the paper has one.

    An entry of `ours` that is None is a row we only quote: the paper's row alone. Returns the rows
    and the names of the difference rows (for `markdown_table(signed=...)`). With `average`, every
    row gets an "Avg" (ours: the mean over `columns`; the paper: its own when given).
    """

    def averaged(row: Mapping[str, float]) -> dict[str, float]:
        out = dict(row)
        if average and row_average(row, columns) is not None:
            out["Avg"] = row_average(row, columns)
        return out

    rows: dict[str, dict[str, float]] = {}
    signed: set[str] = set()
    for title, accs in ours.items():
        if accs is not None:
            rows[title] = averaged({c: accs[c] for c in columns if accs.get(c) is not None})
        if not paper.get(title):
            continue
        theirs = rows[f"{title} (paper)"] = averaged(paper[title])
        if accs is not None:
            mine = rows[title]
            rows[f"{title} (ours - paper)"] = {
                c: mine[c] - theirs[c]
                for c in [*columns, "Avg"]
                if mine.get(c) is not None and theirs.get(c) is not None
            }
            signed.add(f"{title} (ours - paper)")
    return rows, signed


def require_finite(data: Any, what: str) -> None:
    """ValueError naming the first NaN/inf number in `data` (nested dicts, lists, tuples, floats,
    tensors): results and states are never written with non-finite values."""

    def walk(x: Any, where: str) -> None:
        if isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
        elif (isinstance(x, float) and not math.isfinite(x)) or (
            isinstance(x, torch.Tensor)
            and x.is_floating_point()
            and not bool(torch.isfinite(x).all())
        ):
            raise ValueError(f"refusing to write {what}: {where} is NaN/inf")

    walk(data, "")


def write_json(data: dict, path: str | Path) -> None:
    """`data` as JSON (indent 1, trailing newline), written atomically (temporary file, then
    rename)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def results_path(folder: Path, method: str, overwrite: bool) -> Path:
    """<folder>/<method>.json; an existing result is kept and the new one written beside it unless
    `overwrite`."""
    path = Path(folder) / f"{method}.json"
    if path.exists() and not overwrite:
        path = path.with_name(f"{method}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return path


# Row order of the paper's tables; `<method>.json` files found under results/<model>/ fill them.
TABLE_ORDER = [
    ("zeroshot", "Zero-shot"),
    ("individual", "Individual"),
    ("multitask", "Traditional MTL"),
    ("weight_averaging", "Weight Averaging"),
    ("fisher_merging", "Fisher Merging"),
    ("regmean", "RegMean"),
    ("task_arithmetic", "Task Arithmetic"),
    ("ties_merging", "Ties-Merging"),
    ("task_wise_adamerging", "Task-wise AdaMerging"),
    ("task_wise_adamergingpp", "Task-wise AdaMerging++"),
    ("layer_wise_adamerging", "Layer-wise AdaMerging"),
    ("layer_wise_adamergingpp", "Layer-wise AdaMerging++"),
    ("layer_wise_adamerging_supervised", "Layer-wise AdaMerging, supervised oracle"),
]


def collect_results(
    results_dir: str | Path, model: str
) -> tuple[dict[str, dict[str, float]], list[str], dict[str, Any], list[str]]:
    """{row title: per-task accuracy} for every method result present, the task order, {row title:
    its test data}, and the titles of the rows made on a quick mini build (provenance
    "mini_build")."""
    folder = Path(results_dir) / model
    rows, tasks, test_data, quick = {}, [], {}, []
    for name, title in TABLE_ORDER:
        path = folder / f"{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            rows[title], test_data[title] = data["accuracy"], data.get("test_data")
            tasks = tasks or list(data["tasks"])
            if ((data.get("provenance") or {}).get("mini_build") or {}).get("quick"):
                quick.append(title)
    return rows, tasks, test_data, quick


def normalized_section(
    rows: Mapping[str, Mapping[str, float]], tasks: Sequence[str], test_data: Mapping[str, Any]
) -> tuple[dict, list[str]]:
    """Our rows with the NORMALIZED column where the Individual row exists on the same test data,
    and the markdown lines of the per-task normalized table ([] without an Individual row)."""
    individual = rows.get(INDIVIDUAL)
    if individual is None:
        return dict(rows), []
    same = {
        title: individual for title in rows if test_data.get(title) == test_data.get(INDIVIDUAL)
    }
    rows, per_task = with_normalized(rows, tasks, same)
    return rows, (
        [
            NORMALIZED_TEXT,
            "",
            markdown_table(per_task, tasks, label="normalized accuracy (%)"),
        ]
        if per_task
        else []
    )


NORMALIZED_TEXT = (
    "Normalized accuracy: each task's accuracy over its individual expert's on the same test data,"
    f" in %; `{NORMALIZED}` is their mean (as the merging literature after AdaMerging reports it;"
    " the paper's tables are absolute accuracies)."
)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m adamerging.reporting`: print the markdown table of results/<model>/<method>.json
    and write it to results/<model>/table.md (with normalized accuracy where the Individual result
    is there). Exits with a message when no result is found."""
    import argparse

    p = argparse.ArgumentParser(
        prog=command_name("adamerging.reporting"),
        description="Collect results/<model>/<method>.json into one table (markdown).",
    )
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    rows, tasks, test_data, quick = collect_results(args.results_dir, args.model)
    if not rows:
        raise SystemExit(f"no results under {Path(args.results_dir) / args.model}")
    rows, section = normalized_section(rows, tasks, test_data)
    table = markdown_table(rows, tasks, extra=[NORMALIZED] if section else [])
    warning = [f"**Warning**: {', '.join(quick)}: {QUICK_BUILD_NOTE}.", ""] if quick else []
    print("\n".join([table, *warning]).rstrip())
    text = "\n".join(
        [
            f"# Results: {args.model}",
            "",
            *warning,
            "Accuracy (%) on each task's test split.",
            "",
            table,
            "",
            *section,
        ]
    ).rstrip()
    with atomic_write(Path(args.results_dir) / args.model / "table.md", "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
