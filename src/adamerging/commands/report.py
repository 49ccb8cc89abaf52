"""`python -m adamerging report` (installed: `adamerging-report`): every method's results JSON under
results/<model>/ collected into one table, printed and written to results/<model>/table.md."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adamerging.methods.registry import report_rows
from adamerging.reporting.tables import (
    INDIVIDUAL,
    NORMALIZED,
    NORMALIZED_TEXT,
    markdown_table,
    with_normalized,
)
from adamerging.run.provenance import QUICK_BUILD_NOTE
from adamerging.runtime.cli import command_name
from adamerging.runtime.files import atomic_write


def collect_results(
    results_dir: str | Path, model: str
) -> tuple[dict[str, dict[str, float]], list[str], dict[str, Any], list[str], list[str]]:
    """{row title: per-task accuracy} for every method result present, the task order, {row title:
    its test data}, the titles of the rows made on a quick mini build (provenance "mini_build"),
    and the results left out because they merged other tasks than the first one found (one table
    holds one task set: an 8-task and a 20-task run belong in separate --results-dir folders)."""
    folder = Path(results_dir) / model
    rows, tasks, test_data, quick, other = {}, [], {}, [], []
    for name, title in report_rows():
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if tasks and list(data["tasks"]) != tasks:
            other.append(f"{path.name} ({len(data['tasks'])} tasks)")
            continue
        rows[title], test_data[title] = data["accuracy"], data.get("test_data")
        tasks = tasks or list(data["tasks"])
        if ((data.get("provenance") or {}).get("mini_build") or {}).get("quick"):
            quick.append(title)
    return rows, tasks, test_data, quick, other


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


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m adamerging report`: print the markdown table of results/<model>/<method>.json
    and write it to results/<model>/table.md (with normalized accuracy where the Individual result
    is there). Exits with a message when no result is found."""
    import argparse

    p = argparse.ArgumentParser(
        prog=command_name("adamerging report"),
        description="Collect results/<model>/<method>.json into one table (markdown).",
    )
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    rows, tasks, test_data, quick, other = collect_results(args.results_dir, args.model)
    if not rows:
        raise SystemExit(f"no results under {Path(args.results_dir) / args.model}")
    rows, section = normalized_section(rows, tasks, test_data)
    table = markdown_table(rows, tasks, extra=[NORMALIZED] if section else [])
    warning = [f"**Warning**: {', '.join(quick)}: {QUICK_BUILD_NOTE}.", ""] if quick else []
    if other:
        warning += [
            f"**Left out** (other tasks than these {len(tasks)}): {', '.join(other)}; keep each"
            " task set in its own --results-dir.",
            "",
        ]
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
