"""Each corruption applied to every test image; Task Arithmetic vs AdaMerging adapted and evaluated
on the corrupted images (the paper's Sec. 5 robustness test) -> robustness.{md,json}"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from adamerging.commands.experiments.common import (
    COMPARED,
    Context,
    header,
    meta,
    run_method,
    write_text,
)
from adamerging.datasets.corruptions import CORRUPTIONS
from adamerging.methods.registry import METHODS
from adamerging.reporting.paper import paper_findings
from adamerging.reporting.tables import markdown_table
from adamerging.runtime.files import write_json

ROBUSTNESS_TASKS = ("Cars", "EuroSAT", "RESISC45", "GTSRB")  # the paper's robustness tasks


def robustness_tasks(ctx: Context) -> list[str]:
    """--tasks, else the paper's Cars, EuroSAT, RESISC45, GTSRB among the model's tasks."""
    if ctx.base.tasks:
        return ctx.tasks()
    tasks = [t for t in ctx.tasks() if t in ROBUSTNESS_TASKS]
    if len(tasks) < 2:
        raise ValueError(
            f"fewer than 2 of the paper's robustness tasks ({', '.join(ROBUSTNESS_TASKS)}) among"
            f" {ctx.tasks()}: pass --tasks"
        )
    return tasks


def _run_condition(
    ctx: Context, condition: str, methods: Sequence[str], tasks: Sequence[str]
) -> tuple[list[str], dict]:
    """Run the methods on one condition: its markdown section and JSON record (table printed)."""
    corruption = condition if condition != "clean" else None
    results = {
        m: run_method(ctx, m, ctx.runs(condition), tasks=",".join(tasks), corruption=corruption)
        for m in methods
    }
    rows = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
    table = markdown_table(rows, tasks)
    record = {
        "accuracy": rows,
        "average": {METHODS[m].title: r["average"] for m, r in results.items()},
        "runs": {m: r["path"] for m, r in results.items()},
    }
    print(f"-- {condition}\n{table}")
    return [f"## {condition}", "", table, ""], record


def _run_conditions(
    ctx: Context, conditions: Sequence[str], methods: Sequence[str], tasks: Sequence[str]
) -> tuple[list[str], dict, dict[str, dict[str, float]]]:
    """Run every condition: the markdown sections, the JSON records, each method's averages."""
    md, out = [], {}
    # method -> condition -> average
    summary: dict[str, dict[str, float]] = {METHODS[m].title: {} for m in methods}
    for condition in conditions:
        lines, out[condition] = _run_condition(ctx, condition, methods, tasks)
        md += lines
        for title, avg in out[condition]["average"].items():
            summary[title][condition] = avg
    return md, out, summary


def _minus_ta(
    summary: Mapping[str, Mapping[str, float]], methods: Sequence[str], conditions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each AdaMerging method's average minus Task Arithmetic's, per condition."""
    gaps = {}
    # AdaMerging minus Task Arithmetic, per condition (the paper's comparison)
    if "task_arithmetic" in methods:
        ta = summary[METHODS["task_arithmetic"].title]
        for m in (m for m in methods if METHODS[m].granularity):
            gaps[f"{METHODS[m].title} - TA"] = {
                c: summary[METHODS[m].title][c] - ta[c] for c in conditions
            }
    return gaps


def _notes(gaps: Mapping[str, Mapping[str, float]], corruptions: Sequence[str]) -> list[str]:
    """The closing markdown lines: how the images are corrupted, the paper's gains and ours."""
    low, high = paper_findings()["robustness_gain_range"]
    notes = [
        (
            "Every test image of the tasks is corrupted once (seeded, fixed severity:"
            " `adamerging/corruptions.py`), then the methods merge, adapt (AdaMerging: on the"
            " corrupted unlabeled images) and are evaluated on the corrupted images."
        ),
        "",
        (
            f"Paper (ViT-B/32, {', '.join(ROBUSTNESS_TASKS)}): AdaMerging beats Task Arithmetic by"
            f" {low} to {high} points across corruptions."
        ),
    ]
    for name, gap in gaps.items():
        values = [gap[c] for c in corruptions]
        notes += [
            "",
            (
                f"Here, {name}: from {min(values):+.1f} to {max(values):+.1f} points across"
                f" {len(values)} corruption(s)."
            ),
        ]
    return notes


def robustness(ctx: Context) -> dict:
    """Each corruption applied to every test image; adaptation and evaluation on the corrupted
    images."""
    started = time.perf_counter()
    if ctx.base.corruption:
        raise ValueError(
            "robustness runs every corruption itself: pass --corruptions NAME,... instead of"
            " --corruption"
        )
    tasks = robustness_tasks(ctx)
    corruptions = ctx.options.corruptions or list(CORRUPTIONS)
    conditions = ["clean", *corruptions] if not ctx.options.no_clean else corruptions
    methods = ctx.options.methods or list(COMPARED)
    titles = [METHODS[m].title for m in methods]
    md, out, summary = _run_conditions(ctx, conditions, methods, tasks)
    gaps = _minus_ta(summary, methods, conditions)
    overview = markdown_table(
        {**summary, **gaps}, conditions, signed=set(gaps), average=False, label="average (%)"
    )
    text = (
        "\n".join(
            header(ctx, "Robustness to corrupted test images", started, tasks)
            + [
                f"Methods: {', '.join(titles)}; conditions: {', '.join(conditions)}.",
                "",
                "## Averages",
                "",
                overview,
                "",
            ]
            + md
            + _notes(gaps, corruptions)
        )
        + "\n"
    )
    write_text(ctx.folder / "robustness.md", text)
    write_json(
        {
            **meta(ctx, started),
            "tasks": tasks,
            "conditions": out,
            "summary": summary,
            "minus_ta": gaps,
        },
        ctx.folder / "robustness.json",
    )
    print(overview)
    print(f"wrote {ctx.folder / 'robustness'}.md, .json")
    return {"summary": summary, "minus_ta": gaps}
