"""Ablations of layer-wise AdaMerging (the paper's Sec. 5): supervised vs entropy objective, the
fraction of test data adapted on, and the accuracy along the steps -> ablations.{md,json},
trajectory.png"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from adamerging.commands.experiments.common import Context, header, meta, run_method, write_text
from adamerging.methods.registry import METHODS
from adamerging.reporting.paper import paper_findings, paper_row, paper_tables
from adamerging.reporting.plotting import figure, save
from adamerging.reporting.results import saved_individual
from adamerging.reporting.tables import NORMALIZED_TEXT, markdown_table, normalized_column
from adamerging.runtime.files import write_json

# The paper's ablation numbers reported beside ours (keys of the "findings_ViT-B-32" entry of
# paper_tables.json).
PAPER_KEYS = ("entropy", "supervised", "gain_over_ta_at_0.1_percent", "robustness_gain_range")


def trajectory(result: dict) -> list[tuple[int, float]]:
    """(step, average accuracy) wherever the run evaluated (step 0 = the initial table)."""
    points = result.get("adaptation", {}).get("trajectory", []) if result.get("adaptation") else []
    return [(r["step"], r["avg_accuracy"]) for r in points if "avg_accuracy" in r]


def _plot_trajectory(
    curves: Mapping[str, list[tuple[int, float]]], path: Path, model: str, title: str
) -> None:
    """trajectory.png: average accuracy along the steps, absolute and relative to step 0, beside the
    authors' log."""
    paper = {
        int(k): v
        for k, v in paper_tables()["official_logs_ViT-B-32_layerwise_avg_trajectory"].items()
    }
    # step 0 = the init 0.3 = Task Arithmetic
    paper_ta = paper_row("ViT-B-32", "Task Arithmetic")["Avg"]
    paper_curve = [(0, paper_ta), *sorted(paper.items())]
    fig = figure(12, 4.8)
    fig.suptitle(
        f"Average accuracy during {title}: {model} vs the authors' layer-wise ViT-B/32 run"
    )
    for k, relative in enumerate((False, True)):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, (label, points) in enumerate(curves.items()):
            if points:
                s, a = zip(*points)
                ax.plot(
                    s,
                    [x - a[0] for x in a] if relative else a,
                    "-o",
                    ms=3,
                    color=f"C{j}",
                    label=f"{label} ({model})",
                )
        s, a = zip(*paper_curve)
        ax.plot(
            s,
            [x - a[0] for x in a] if relative else a,
            "k--s",
            ms=4,
            label="authors' log, layer-wise, ViT-B/32 (step 0 = paper TA)",
        )
        ax.set_xlabel("AdaMerging step")
        ax.set_ylabel(
            "change in average accuracy since step 0 (points)"
            if relative
            else "average accuracy (%)"
        )
        ax.set_title(
            "gain over the initial table (= Task Arithmetic)" if relative else "average accuracy",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    save(fig, path)


def _fraction_run(runs: Mapping[str, dict], f: float) -> dict:
    """The entropy run adapted on a fraction f of the test images (f = 1: the main entropy run)."""
    return runs["entropy"] if f == 1.0 else runs[f"fraction {f:g}"]


def _run_variants(
    ctx: Context, method: str, fractions: list[float], eval_every: int
) -> dict[str, dict]:
    """The method runs: entropy, supervised, Task Arithmetic, and one per fraction below 1."""
    runs = {
        "entropy": run_method(ctx, method, ctx.runs("entropy"), eval_every=eval_every),
        "supervised": run_method(
            ctx, method, ctx.runs("supervised"), eval_every=eval_every, objective="supervised"
        ),
        "ta": run_method(ctx, "task_arithmetic", ctx.runs("baseline")),
    }
    for f in fractions:
        if f != 1.0:
            runs[f"fraction {f:g}"] = run_method(
                ctx, method, ctx.runs(f"fraction_{f:g}"), adapt_fraction=f
            )
    return runs


def _objective_table(
    runs: Mapping[str, dict],
    title: str,
    tasks: list[str],
    individual: Mapping[str, float] | None,
) -> tuple[str, list[str]]:
    """The table of Task Arithmetic, entropy and supervised runs, and its extra columns."""
    objective_rows = {
        "Task Arithmetic": runs["ta"]["accuracy"],
        f"{title}, entropy (unlabeled)": runs["entropy"]["accuracy"],
        f"{title}, supervised (labels)": runs["supervised"]["accuracy"],
    }
    objective_rows, extra = normalized_column(objective_rows, tasks, individual)
    return markdown_table(objective_rows, tasks, label="objective", extra=extra), extra


def _fraction_table(
    runs: Mapping[str, dict],
    fractions: list[float],
    tasks: list[str],
    individual: Mapping[str, float] | None,
    extra: list[str],
) -> tuple[str, dict[str, float]]:
    """The table of the adaptation-data fractions, and each one's gain over Task Arithmetic."""
    fraction_rows, gains = {}, {}
    for f in fractions:
        r = _fraction_run(runs, f)
        label = f"{f * 100:g} % of the test images"
        fraction_rows[label] = r["accuracy"]
        gains[label] = r["average"] - runs["ta"]["average"]
    fraction_rows, _ = normalized_column(fraction_rows, tasks, individual)
    return markdown_table(fraction_rows, tasks, label="adaptation data", extra=extra), gains


def _trajectory_table(curves: Mapping[str, list[tuple[int, float]]], paper: Mapping) -> str:
    """The table of the average accuracy per evaluated step, with the authors' log at those."""
    steps = sorted({s for c in curves.values() for s, _ in c})
    traj_rows = {label: {str(s): a for s, a in c} for label, c in curves.items()}
    if any(int(k) in steps for k in paper):
        traj_rows["authors' log, layer-wise, ViT-B/32"] = {
            k: v for k, v in paper.items() if int(k) in steps
        }
    return markdown_table(traj_rows, [str(s) for s in steps], average=False, label="step")


def _report_lines(
    runs: Mapping[str, dict],
    findings: Mapping[str, object],
    tables: tuple[str, str, str],
    gains: Mapping[str, float],
    extra: list[str],
    eval_every: int,
) -> list[str]:
    """The markdown lines below the header: objective, fraction and trajectory sections."""
    objective_md, fraction_md, traj_md = tables
    paper_note = (
        f"Paper (ViT-B/32, layer-wise): supervised {findings['supervised']} vs entropy"
        f" {findings['entropy']}; with 0.1 % of the test data AdaMerging still beats Task"
        f" Arithmetic by {findings['gain_over_ta_at_0.1_percent']} points."
    )
    return [
        (
            "## Objective: entropy (unlabeled, AdaMerging) vs cross-entropy with the test labels"
            " (oracle)"
        ),
        "",
        objective_md,
        "",
        (
            "Supervised minus entropy:"
            f" {runs['supervised']['average'] - runs['entropy']['average']:+.1f} points (paper,"
            f" ViT-B/32: {findings['supervised'] - findings['entropy']:+.1f})."
        ),
        "",
        (
            "## Fraction of each task's test images the adaptation may draw from (evaluation: all"
            " of them)"
        ),
        "",
        fraction_md,
        "",
        "Average minus Task Arithmetic: "
        + "; ".join(f"{k}: {v:+.1f}" for k, v in gains.items())
        + ". A fraction f of a task's N test images is max(1, round(f N)) images, drawn once"
        " (seeded); each step still draws its batches from them.",
        "",
        *([NORMALIZED_TEXT, ""] if extra else []),
        f"## Average accuracy along the steps (evaluated every {eval_every})",
        "",
        traj_md,
        "",
        "![trajectory](trajectory.png)",
        "",
        paper_note,
    ]


def ablations(ctx: Context) -> dict:
    """Supervised vs entropy objective, fraction of test data for adaptation, and the step
    trajectory."""
    started = time.perf_counter()
    method, tasks = ctx.options.method, ctx.tasks()
    eval_every = ctx.base.eval_every or max(1, ctx.base.steps // 10)
    fractions = sorted(set(ctx.options.fractions))
    runs = _run_variants(ctx, method, fractions, eval_every)
    title, ta = METHODS[method].title, runs["ta"]["average"]

    individual = saved_individual(ctx.folder, runs["entropy"]["test_data"])
    objective_md, extra = _objective_table(runs, title, tasks, individual)
    fraction_md, gains = _fraction_table(runs, fractions, tasks, individual, extra)
    curves = {
        "entropy": trajectory(runs["entropy"]),
        "supervised (oracle)": trajectory(runs["supervised"]),
    }
    _plot_trajectory(curves, ctx.folder / "trajectory.png", ctx.model, title)
    paper = paper_tables()["official_logs_ViT-B-32_layerwise_avg_trajectory"]
    traj_md = _trajectory_table(curves, paper)

    findings = {k: paper_findings()[k] for k in PAPER_KEYS}
    md = header(ctx, f"Ablations of {title}", started) + _report_lines(
        runs, findings, (objective_md, fraction_md, traj_md), gains, extra, eval_every
    )
    write_text(ctx.folder / "ablations.md", "\n".join(md) + "\n")
    out = {
        **meta(ctx, started),
        "method": method,
        "tasks": tasks,
        "task_arithmetic_average": ta,
        "objective": {k: runs[k]["average"] for k in ("entropy", "supervised")},
        "fractions": {f"{f:g}": _fraction_run(runs, f)["average"] for f in fractions},
        "gain_over_ta": gains,
        "trajectory": curves,
        "paper": findings,
        "paper_trajectory_ViT-B-32": paper,
    }
    write_json(out, ctx.folder / "ablations.json")
    print("\n\n".join([objective_md, fraction_md, traj_md]))
    print(f"wrote {ctx.folder / 'ablations'}.md, .json, trajectory.png")
    return out
