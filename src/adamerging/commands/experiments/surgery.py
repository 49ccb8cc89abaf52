"""Representation Surgery on each base merge, v1 and deep, beside the plain merge and the authors'
logged numbers -> surgery.{md,csv,json}."""

from __future__ import annotations

import time

from adamerging.commands.experiments.common import (
    Context,
    header,
    meta,
    run_method,
    write_text,
)
from adamerging.methods.registry import METHODS
from adamerging.methods.surgery_training import TITLE
from adamerging.reporting.paper import surgery_logged
from adamerging.reporting.tables import csv_table, markdown_table
from adamerging.runtime.files import write_json

# the base merges the authors' logs cover, in their order
BASES = ("weight_averaging", "task_arithmetic", "ties_merging", "layer_wise_adamerging")
LOG_SOURCE = (
    "Authors' log: the Representation Surgery repository's logs at iteration 500"
    " (github.com/EnnengYang/RepresentationSurgery, src/logs/result-<model>.md), with the"
    ' authors\' coefficients and experts (`paper_tables.json` "surgery_logs").'
)


def _runs(ctx: Context, method: str) -> dict[str, dict]:
    """The plain merge (the main result; `--skip-existing` reuses it) and its v1 and deep surgery
    beside it (their own result names); a learned table is learned once and reloaded for the
    surgery runs (the same table)."""
    plain = run_method(ctx, method)
    table = {"coefficients": plain["path"]} if METHODS[method].merge.learns else {}
    return {
        "plain": plain,
        **{v: run_method(ctx, method, surgery=v, **table) for v in ("v1", "deep")},
    }


def _rows(ctx: Context, results: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per base: its plain row, with surgery v1 and deep, and the authors' logged row."""
    rows: dict[str, dict] = {}
    for method, runs in results.items():
        title = METHODS[method].title
        rows[title] = runs["plain"]["accuracy"]
        for variant in ("v1", "deep"):
            rows[title + TITLE[variant]] = runs[variant]["accuracy"]
        logged = surgery_logged(ctx.model, title + TITLE["v1"])
        if logged:
            rows[f"{title} + Surgery (authors' log)"] = logged
    return rows


def surgery(ctx: Context) -> dict:
    """Each base merge with and without Representation Surgery (v1, deep), and the authors' logs."""
    started = time.perf_counter()
    results = {m: _runs(ctx, m) for m in (ctx.options.methods or BASES)}
    first = next(iter(results.values()))["plain"]
    tasks = first["tasks"]
    rows = _rows(ctx, results)
    table = markdown_table(rows, tasks)
    notes = [
        "Each base merge as the main table has it; `+ Surgery`: its per-task surgery modules"
        " trained for --surgery-steps iterations on the unlabeled test images against each task's"
        " expert (docs/surgery.md); `(deep)`: also after every block (SurgeryV2). A learned table"
        " is learned once and reloaded for its surgery runs.",
        "",
    ]
    seconds = [
        f"{METHODS[m].title} {v} {runs[v]['surgery']['seconds']:.0f} s"
        for m, runs in results.items()
        for v in ("v1", "deep")
    ]
    notes += ["Each surgery's own time (features, training, evaluation): " + ", ".join(seconds), ""]
    if any("authors' log" in r for r in rows):
        notes += [LOG_SOURCE, ""]
    md = header(ctx, "Representation Surgery", started, tasks) + [table, ""] + notes
    write_text(ctx.folder / "surgery.md", "\n".join(md).rstrip() + "\n")
    write_text(ctx.folder / "surgery.csv", csv_table(rows, tasks))
    summary = {m: {k: r["average"] for k, r in runs.items()} for m, runs in results.items()}
    write_json(
        {**meta(ctx, started), "averages": summary, "rows": rows}, ctx.folder / "surgery.json"
    )
    print(table)
    print(f"wrote {ctx.folder / 'surgery'}.md, .csv, .json")
    return summary
