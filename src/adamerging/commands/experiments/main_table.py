"""Every method on the same tasks: the paper's Table 2 (ViT-B/32) / Table 3 (ViT-L/14) ->
main_table.{md,csv}."""

from __future__ import annotations

import time

from adamerging.commands.experiments.common import MAIN_METHODS, Context, run_method, write_table
from adamerging.methods.registry import METHODS
from adamerging.run.experts import multitask_checkpoint


def main_table(ctx: Context) -> dict:
    """Every method on the same tasks: the paper's Table 2 (ViT-B/32) / 3 (ViT-L/14).

    Traditional MTL runs where a multi-task encoder exists (the mini benchmark builds one);
    elsewhere the paper's row is quoted (we do not train CLIP).
    """
    started = time.perf_counter()
    has_multitask = multitask_checkpoint(ctx.base) is not None
    methods = ctx.options.methods or [m for m in MAIN_METHODS if m != "multitask" or has_multitask]
    results = {m: run_method(ctx, m) for m in methods}
    tasks = next(iter(results.values()))["tasks"]
    ours = {
        METHODS[m].title: results[m]["accuracy"] if m in results else None
        for m in ctx.options.methods or MAIN_METHODS
    }
    adapted = [
        f"{METHODS[m].title} {r['config']['steps']} steps"
        for m, r in results.items()
        if METHODS[m].merge.learns
    ]
    notes = [f"Learned rows: {', '.join(adapted)}."] if adapted else []
    data_based = [
        r["config"] for m, r in results.items() if getattr(METHODS[m].merge, "train_data", False)
    ]
    if data_based:
        c = data_based[0]
        notes += [
            f"Fisher Merging and RegMean: {c['train_images']} seeded images of each task's train"
            f" split, batches of {c['train_batch_size']}, Fisher floor {c['fisher_floor']:g},"
            f" RegMean non-diagonal ratio {c['regmean_ratio']:g}."
        ]
    if "Traditional MTL" in ours and ours["Traditional MTL"] is None:
        notes += [
            "Traditional MTL: the paper's row, quoted (no multi-task encoder for this model here)."
        ]
    write_table(
        ctx, "main_table", "Main table: every method", ours, tasks, started, notes, results=results
    )
    return {m: r["average"] for m, r in results.items()}
