"""The diagnostics' four PNG plots: entropy vs loss, the cross-task effect, the lambda sweep, the
task vectors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adamerging.methods.diagnostics.measure import binned_means
from adamerging.reporting.plotting import figure, save
from adamerging.reporting.tables import fmt

# matplotlib is imported only when a figure is drawn
if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _grid(n: int, ncols: int = 4) -> tuple[int, int]:
    """(rows, columns) of a grid of n panels, at most `ncols` wide."""
    ncols = min(ncols, n)
    return math.ceil(n / ncols), ncols


def _entropy_vs_loss_figure(report: dict) -> Figure:
    """Entropy vs loss: per task scatter and binned means, and all tasks pooled."""
    tasks = report["tasks"]
    nrows, ncols = _grid(len(tasks) + 1)
    fig = figure(3.6 * ncols, 3.2 * nrows, layout=None)
    fig.suptitle(f"Per-sample entropy vs cross-entropy, {report['merged_model']}")
    for k, t in enumerate([*tasks, "pooled"]):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        names = tasks if t == "pooled" else [t]
        for j, name in enumerate(names):
            s = report["per_sample"][name]
            ax.scatter(
                s["entropy"],
                s["loss"],
                s=6,
                alpha=0.4,
                color=f"C{j % 10}" if t == "pooled" else "C0",
                label=name if t == "pooled" else "samples",
            )
        h = np.concatenate([report["per_sample"][x]["entropy"] for x in names])
        ce = np.concatenate([report["per_sample"][x]["loss"] for x in names])
        binned = binned_means(h, ce)
        if len(binned) > 1:
            ax.plot(
                [b["entropy"] for b in binned],
                [b["loss"] for b in binned],
                "k-o",
                ms=3,
                label="binned mean (entropy deciles)",
            )
        rho = report["spearman"]["pooled"] if t == "pooled" else report["spearman"]["per_task"][t]
        ax.set_title(f"{t}: Spearman {fmt(rho, '.2f')}", fontsize=9)
        ax.set_xlabel("entropy (nats)")
        ax.set_ylabel("cross-entropy loss")
        ax.legend(fontsize=6)
    return fig


def _cross_task_figure(report: dict) -> Figure:
    """Cross-task effect: each task's entropy and accuracy, alone vs merged."""
    tasks = report["tasks"]
    ct, x, w = report["cross_task"], np.arange(len(tasks)), 0.38
    fig = figure(max(6, 1.1 * len(tasks) + 2), 6.5, layout=None)
    fig.suptitle(f"Do the other tasks' vectors raise a task's entropy? (lambda {report['lam']:g})")
    for k, (key, ylabel) in enumerate(
        [("entropy", "mean entropy (nats)"), ("accuracy", "accuracy (%)")]
    ):
        ax = fig.add_subplot(2, 1, k + 1)
        ax.bar(
            x - w / 2,
            [ct[t][f"{key}_alone"] for t in tasks],
            w,
            label=f"theta_0 + {report['lam']:g} tau_task",
        )
        ax.bar(
            x + w / 2,
            [ct[t][f"{key}_merged"] for t in tasks],
            w,
            label=f"theta_0 + {report['lam']:g} sum_t tau_t",
        )
        ax.set_xticks(
            x,
            [
                t + ("" if report["checks"][t]["cross_task"]["passed"] else " (fails)")
                for t in tasks
            ],
            fontsize=8,
        )
        ax.set_ylabel(ylabel)
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def _lambda_sweep_figure(report: dict) -> Figure:
    """Entropy and accuracy along lambda, per task and averaged over tasks."""
    from matplotlib.lines import Line2D

    tasks, sw = report["tasks"], report["lambda_sweep"]
    lam = np.asarray(sw["lambdas"])
    nrows, ncols = _grid(len(tasks) + 1)
    fig = figure(3.8 * ncols, 3.2 * nrows, layout=None)
    fig.suptitle(
        "Entropy and accuracy along Task Arithmetic's lambda (theta_0 + lambda sum_t tau_t)"
    )
    for k, t in enumerate([*tasks, "mean over tasks"]):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        h = (
            np.mean([sw["entropy"][x] for x in tasks], axis=0)
            if k == len(tasks)
            else np.asarray(sw["entropy"][t])
        )
        a = (
            np.mean([sw["accuracy"][x] for x in tasks], axis=0)
            if k == len(tasks)
            else np.asarray(sw["accuracy"][t])
        )
        lines = ax.plot(lam, h, "C0-o", ms=3, label="mean entropy")
        ax.axvline(lam[np.argmin(h)], color="C0", ls="--", lw=1)
        ax2 = ax.twinx()
        lines += ax2.plot(lam, a, "C1-s", ms=3, label="accuracy")
        ax2.axvline(lam[np.argmax(a)], color="C1", ls=":", lw=1)
        ok = (
            ""
            if k == len(tasks)
            else ("" if report["checks"][t]["lambda"]["passed"] else " (fails)")
        )
        ax.set_title(f"{t}{ok}", fontsize=9)
        ax.set_xlabel("lambda")
        ax.set_ylabel("entropy (nats)", color="C0")
        ax2.set_ylabel("accuracy (%)", color="C1")
        markers = [
            Line2D([], [], color="C0", ls="--", lw=1, label="lambda at min entropy"),
            Line2D([], [], color="C1", ls=":", lw=1, label="lambda at max accuracy"),
        ]
        ax.legend(handles=lines + markers, fontsize=6)
    return fig


def _task_vectors_figure(report: dict) -> Figure:
    """Task vectors: norm ratio bars and the pairwise cosine heatmap."""
    tasks, tv = report["tasks"], report["task_vectors"]
    x = np.arange(len(tasks))
    fig = figure(6 + 0.9 * len(tasks), 4.5, layout=None)
    fig.suptitle("Task vectors (visual entries)")
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(x, [tv["norm_ratio"][t] for t in tasks], color="C2", label="|tau_t| / |theta_0|")
    ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("relative norm")
    ax.set_title("|tau_t| / |theta_0|", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    cos = np.asarray([[np.nan if c is None else c for c in row] for row in tv["cosine"]])
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(x, tasks, fontsize=8)
    if len(tasks) <= 10:
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("pairwise cosine of task vectors", fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine")
    return fig


def plot_report(report: dict, folder: Path, stem: str) -> dict[str, str]:
    """The four PNGs (Agg canvas: no display, no pyplot global state); returns {kind: file name}."""
    files = {}
    for kind, draw in (
        ("entropy_vs_loss", _entropy_vs_loss_figure),
        ("cross_task", _cross_task_figure),
        ("lambda_sweep", _lambda_sweep_figure),
        ("task_vectors", _task_vectors_figure),
    ):
        files[kind] = save(draw(report), folder / f"{stem}_{kind}.png", tight=True).name
    return files
