"""Every method on the same tasks: the paper's Table 2 (ViT-B/32) / Table 3 (ViT-L/14) -> main_table.{md,csv}."""
from __future__ import annotations

import time

from .common import MAIN_METHODS, METHODS, Context, run_method, write_table


def main_table(ctx: Context) -> dict:
    """Every method on the same tasks: the paper's Table 2 (ViT-B/32) / 3 (ViT-L/14)."""
    started = time.perf_counter()
    methods = ctx.options.methods or MAIN_METHODS
    results = {m: run_method(ctx, m) for m in methods}
    tasks = next(iter(results.values()))["tasks"]
    ours = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
    adapted = [f"{METHODS[m].title} {r['config']['steps']} steps" for m, r in results.items() if METHODS[m].granularity]
    notes = [f"AdaMerging rows: {', '.join(adapted)}."] if adapted else []
    write_table(ctx, "main_table", "Main table: every method", ours, tasks, started, notes)
    return {m: r["average"] for m, r in results.items()}
