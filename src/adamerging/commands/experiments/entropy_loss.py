"""Does the entropy of the Task Arithmetic model's predictions rank the test samples as their loss
does (the paper's Sec. 3.2 observation)? -> entropy_vs_loss.{json,png}"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from adamerging.commands.experiments.common import Context, mean, meta
from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import constant_table
from adamerging.methods.diagnostics.measure import correlation_report, measure, sample_tasks
from adamerging.reporting.paper import paper_findings
from adamerging.reporting.plotting import figure, save
from adamerging.reporting.tables import fmt, markdown_table
from adamerging.run.config import DEFAULT_LAM, RunConfig
from adamerging.run.problem import Problem, load_problem
from adamerging.runtime.distributed import Ranks, setup
from adamerging.runtime.files import write_json


def _plot_entropy_loss(
    values: Mapping[str, tuple[np.ndarray, np.ndarray]], report: dict, path: Path, title: str
) -> None:
    """Per-sample scatter (Spearman per task in the legend) and the decile-binned means, per task
    and pooled."""
    fig = figure(12, 5)
    fig.suptitle(title)
    ax = fig.add_subplot(1, 2, 1)
    rng = np.random.default_rng(0)
    for j, (t, (h, ce)) in enumerate(values.items()):
        keep = rng.permutation(len(h))[:1500]  # readable scatter: at most 1500 points per task
        ax.scatter(
            h[keep],
            ce[keep],
            s=5,
            alpha=0.35,
            color=f"C{j % 10}",
            label=f"{t} ({fmt(report['per_task'][t], '.2f')})",
        )
    ax.set_xlabel("entropy of the prediction (nats)")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(
        f"per test sample; Spearman per task in the legend, pooled {fmt(report['pooled'], '.2f')}",
        fontsize=9,
    )
    ax.legend(fontsize=7, markerscale=2)
    ax = fig.add_subplot(1, 2, 2)
    for j, t in enumerate(values):
        b = report["binned"][t]
        ax.plot(
            [x["entropy"] for x in b],
            [x["loss"] for x in b],
            "-o",
            ms=3,
            color=f"C{j % 10}",
            label=t,
        )
    b = report["binned"]["pooled"]
    ax.plot([x["entropy"] for x in b], [x["loss"] for x in b], "k-s", lw=2, ms=4, label="all tasks")
    ax.set_xlabel("mean entropy in the bin (nats)")
    ax.set_ylabel("mean cross-entropy loss in the bin")
    ax.set_title(
        "binned by entropy deciles (paper, ViT-B/32: Spearman"
        f" {paper_findings()['entropy_loss_spearman']})",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    save(fig, path)


def _measure_tasks(
    problem: Problem, config: RunConfig, lam: float, samples: int, ranks: Ranks
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Per task: (per-sample entropy, loss) of Task Arithmetic, and its accuracy (all ranks')."""
    merged = MergedEncoder(
        problem.clip.visual, problem.theta0, problem.tau, problem.entries, config.device
    )
    encoder = merged.encoder(constant_table(problem.tasks, lam).lambdas, config.precision)
    data = sample_tasks(problem.data, samples, config.seed) if samples else problem.data
    values, accs = {}, {}
    for i, t in enumerate(data):
        if ranks.owns(i):
            outcome = measure(encoder, t, problem.normalize, config.batch_size)
            values[t.name] = (
                outcome.entropy.numpy().astype(np.float64),
                outcome.loss.numpy().astype(np.float64),
            )
            accs[t.name] = outcome.accuracy
    values, accs = ranks.merge_dicts(values), ranks.merge_dicts(accs)
    return {t.name: values[t.name] for t in data}, {t.name: accs[t.name] for t in data}


def _summary_table(
    values: Mapping[str, tuple[np.ndarray, np.ndarray]], accs: Mapping[str, float], report: dict
) -> str:
    """The table of the Spearman correlation and the accuracy, per task and pooled."""
    return markdown_table(
        {
            "Spearman(entropy, loss)": {**report["per_task"], "pooled": report["pooled"]},
            "accuracy (%)": {**accs, "pooled": mean(list(accs.values()))},
        },
        [*values, "pooled"],
        digits=2,
        average=False,
        label="",
    )


def entropy_loss(ctx: Context) -> dict:
    """Does the entropy of the Task Arithmetic model's predictions rank the test samples as their
    loss does?"""
    started = time.perf_counter()
    # under torchrun: each rank measures its tasks
    ranks, device, numerics = setup(ctx.base.device, ctx.base.precision)
    config = replace(ctx.base, device=device)
    lam = DEFAULT_LAM if config.lam is None else config.lam
    problem = load_problem(config, "plain")
    values, accs = _measure_tasks(problem, config, lam, ctx.options.samples, ranks)
    if not ranks.is_main:
        return {}
    report = correlation_report(values)
    folder = ctx.folder
    _plot_entropy_loss(
        values,
        report,
        folder / "entropy_vs_loss.png",
        f"Entropy vs cross-entropy of Task Arithmetic (lambda {lam:g}), {ctx.model}",
    )
    table = _summary_table(values, accs, report)
    out = {
        **meta(ctx, started),
        "merged_model": f"Task Arithmetic, lambda {lam:g}",
        "tasks": list(values),
        "samples": {t: len(h) for t, (h, _) in values.items()},
        "spearman": {"per_task": report["per_task"], "pooled": report["pooled"]},
        "paper_spearman": paper_findings()["entropy_loss_spearman"],
        "accuracy": accs,
        "binned": report["binned"],
        "test_data": problem.test_data,
        "per_sample": {
            t: {"entropy": np.round(h, 5).tolist(), "loss": np.round(ce, 5).tolist()}
            for t, (h, ce) in values.items()
        },
        "numerics": numerics,
    }
    write_json(out, folder / "entropy_vs_loss.json")
    print(table)
    print(
        f"pooled Spearman {fmt(report['pooled'], '.3f')} (paper"
        f" {paper_findings()['entropy_loss_spearman']}); wrote {folder / 'entropy_vs_loss'}.json,"
        " .png"
    )
    return out
