"""The authors' learned coefficient tables evaluated on the checkpoints here, no training ->
published_table.{md,csv}."""

from __future__ import annotations

import time

from adamerging.commands.experiments.common import (
    PUBLISHED_METHODS,
    Context,
    run_method,
    write_table,
)
from adamerging.merging.tables import published_table
from adamerging.methods.registry import METHODS
from adamerging.reporting.paper import paper_tables
from adamerging.reporting.results import saved_individual


def check_published(model: str) -> None:
    """ValueError (one line) when the authors published no coefficient tables for `model`."""
    for m in PUBLISHED_METHODS:
        published_table(METHODS[m].published, model)


def published(ctx: Context) -> dict:
    """The authors' learned coefficient tables evaluated here (no training)."""
    started = time.perf_counter()
    check_published(ctx.model)  # a clear error before any run
    results = {m: run_method(ctx, m, coefficients="published") for m in PUBLISHED_METHODS}
    tasks = next(iter(results.values()))["tasks"]
    ours = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
    logs = paper_tables().get(f"official_logs_{ctx.model}_final_avg", {})
    notes = [
        "Each row: the authors' published coefficient table for this method, applied to the"
        " checkpoints here (`--coefficients published`); nothing is trained, so the difference to"
        " the paper measures the checkpoints, data and evaluation, not the optimisation."
    ]
    if logs:
        notes += [
            "",
            "Final averages in the authors' training logs: "
            + ", ".join(f"{k} {v}" for k, v in logs.items())
            + ".",
        ]
    write_table(
        ctx,
        "published_table",
        "The authors' published coefficients",
        ours,
        tasks,
        started,
        notes,
        individual=saved_individual(ctx.folder, next(iter(results.values()))["test_data"]),
        results=results,
    )
    return {m: r["average"] for m, r in results.items()}
