"""AdaRank and CART beside Task Arithmetic and layer-wise AdaMerging, at AdaMerging's 500 steps and
at the official budget -> adarank_table.{md,csv,json}."""

from __future__ import annotations

import time

from adamerging.commands.experiments.common import Context, run_method, write_table
from adamerging.methods.registry import METHODS
from adamerging.runtime.files import write_json

STEM = "adarank_table"  # not "adarank": that is the method's result
# the rows at the main results' settings (--steps, 500 by default): the main results themselves
ROWS = ("task_arithmetic", "layer_wise_adamerging", "cart", "adarank", "cart_adarank")
LEARNED = ("adarank", "cart_adarank")
# the official code's protocol: 10,000 steps of one batch of 16 images per task
OFFICIAL = {"batches_per_step": 1, "batch_size_adapt": 16}


def _official(ctx: Context, method: str) -> dict:
    """The run at the official budget, in runs/adarank/official/ (it never replaces the main
    result); evaluated every 500 steps for the oracle record."""
    steps = ctx.options.official_steps
    changes = {**OFFICIAL, "steps": steps, "eval_every": min(500, steps)}
    return run_method(ctx, method, ctx.runs("official"), **changes)


def adarank(ctx: Context) -> dict:
    """TA, layer-wise AdaMerging, CART, TA + AdaRank and CART + AdaRank as the main results have
    them (500 steps), then the AdaRank rows at the official budget (--official-steps, 1 x 16 images
    per task and step); the best evaluation by test labels is quoted as an oracle, never as a row.
    """
    started = time.perf_counter()
    results = {m: run_method(ctx, m) for m in ROWS}
    steps = ctx.options.official_steps
    official = {m: _official(ctx, m) for m in LEARNED} if steps else {}
    tasks = next(iter(results.values()))["tasks"]
    ours = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
    budget = f"{steps:,} steps x 1 batch"
    for m, r in official.items():
        ours[f"{METHODS[m].title} ({budget})"] = r["accuracy"]
    main_steps = results["adarank"]["config"]["steps"]
    notes = [
        f"Learned rows: {main_steps} steps of {results['adarank']['config']['batches_per_step']}"
        f" batches of 16 images per task (the main results); `({budget})`: the official code's"
        " budget and protocol (runs/adarank/official/). The final step is reported.",
        "",
    ]
    oracle = {}
    for m, r in [*((m, results[m]) for m in LEARNED), *official.items()]:
        best = r["adarank"].get("oracle_best_evaluation")
        if best:
            oracle[f"{METHODS[m].title}, {r['config']['steps']} steps"] = best
    if oracle:
        notes.append(
            "Oracle, not a result (the best of the evaluations, chosen by test labels, as the"
            " official code reports): "
            + "; ".join(f"{k}: {v['average']:.1f} at step {v['step']}" for k, v in oracle.items())
            + "."
        )
    write_table(ctx, STEM, "AdaRank and CART", ours, tasks, started, notes, results=results)
    summary = {title: sum(a.values()) / len(a) for title, a in ours.items()}
    write_json({"averages": summary, "oracle": oracle}, ctx.folder / f"{STEM}.json")
    return summary
