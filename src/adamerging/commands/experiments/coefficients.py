"""Layer-wise coefficients by depth (paper Sec. 5: low in shallow layers, high in deep ones; ranges
in data/paper_tables.json) and the task vectors' cosines -> coefficients.{json,md},
coefficients_*.png"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adamerging.commands.experiments.common import Context, meta, write_text
from adamerging.commands.experiments.common import mean as average
from adamerging.merging.stats import task_vector_stats
from adamerging.merging.tables import CoefficientTable, load_table, published_table
from adamerging.methods.registry import METHODS
from adamerging.models.clip import VISUAL_PREFIX, depth_group
from adamerging.reporting.paper import paper_findings
from adamerging.reporting.plotting import figure, save
from adamerging.reporting.tables import fmt, markdown_table
from adamerging.run.experts import load_task_vectors
from adamerging.runtime.errors import CheckpointError
from adamerging.runtime.files import write_json

# The four weight matrices of a transformer block: most of its parameters.
BLOCK_MATRICES = (
    "attn.in_proj_weight",
    "attn.out_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def depth_profile(table: CoefficientTable) -> dict:
    """Mean coefficient per depth group (over its entries), per task and over tasks; visual entries
    only.

    `mean_matrices`: the same over each block's four weight matrices only (where most parameters
    are; the layer norms and biases of a block are half its entries but few of its parameters).
    """
    if table.lambdas.shape[0] == 1 or table.entries is None:
        raise ValueError(
            "the coefficient analysis needs a layer-wise table with row names (a layer-wise results"
            " JSON, or 'published')"
        )
    groups: dict[tuple[int, str], list[int]] = {}
    for j, key in enumerate(table.entries):
        # text-side rows never reach the forward: they keep their initial value
        if key.startswith(VISUAL_PREFIX):
            groups.setdefault(depth_group(key), []).append(j)
    order = sorted(groups)
    values = table.lambdas.double()
    per_task = {
        t: [float(values[groups[g], i].mean()) for g in order] for i, t in enumerate(table.tasks)
    }
    mean = [float(values[groups[g]].mean()) for g in order]
    matrices = [[j for j in groups[g] if table.entries[j].endswith(BLOCK_MATRICES)] for g in order]
    mean_matrices = [float(values[m].mean()) if m else None for m in matrices]
    blocks = [k for k, g in enumerate(order) if g[1].startswith("block")]
    third = max(1, len(blocks) // 3)
    return {
        "groups": [g[1] for g in order],
        "entries": [len(groups[g]) for g in order],
        "per_task": per_task,
        "mean": mean,
        "mean_matrices": mean_matrices,
        "shallow_mean": average([mean[k] for k in blocks[:third]]),
        "deep_mean": average([mean[k] for k in blocks[-third:]]),
        "shallow_mean_matrices": average(
            [mean_matrices[k] for k in blocks[:third] if mean_matrices[k] is not None]
        ),
        "deep_mean_matrices": average(
            [mean_matrices[k] for k in blocks[-third:] if mean_matrices[k] is not None]
        ),
        "shallow_blocks": [order[k][1] for k in blocks[:third]],
        "deep_blocks": [order[k][1] for k in blocks[-third:]],
    }


def _short(key: str) -> str:
    """A short label of a visual entry for the heatmap's axis (b<i> for block i)."""
    return (
        key[len(VISUAL_PREFIX) :].replace("transformer.resblocks.", "b")
        if key.startswith(VISUAL_PREFIX)
        else key
    )


def _plot_heatmap(
    table: CoefficientTable, profile: dict, path: Path, source: str, model: str
) -> None:
    """coefficients_heatmap.png: the visual coefficients per entry and their means per block."""
    tasks = table.tasks
    visual = [j for j, k in enumerate(table.entries) if k.startswith(VISUAL_PREFIX)]
    values = table.lambdas[visual].numpy()
    fig = figure(4 + 0.6 * len(tasks) + 3, max(5.0, 0.12 * len(visual) + 1.5))
    fig.suptitle(f"Layer-wise coefficients, {model} ({source})")
    ax = fig.add_subplot(1, 2, 1)
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    labels = [_short(table.entries[j]) for j in visual]
    step = max(1, len(visual) // 60)
    ax.set_yticks(
        range(0, len(visual), step), labels[::step], fontsize=5 if len(visual) > 40 else 7
    )
    ax.set_xlabel("task")
    ax.set_ylabel("state-dict entry (input -> output)")
    ax.set_title("per entry", fontsize=9)
    fig.colorbar(im, ax=ax, label="coefficient")
    ax = fig.add_subplot(1, 2, 2)
    grid = np.asarray([profile["per_task"][t] for t in tasks]).T
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(profile["groups"])), profile["groups"], fontsize=7)
    ax.set_xlabel("task")
    ax.set_ylabel("depth (mean over the group's entries)")
    ax.set_title("per block", fontsize=9)
    fig.colorbar(im, ax=ax, label="mean coefficient")
    save(fig, path)


def _plot_depth(tasks: Sequence[str], profile: dict, path: Path, source: str, model: str) -> None:
    """coefficients_depth.png: the mean coefficient per depth, per task and over tasks."""
    fig = figure(8, 4.8)
    x = np.arange(len(profile["groups"]))
    ax = fig.add_subplot(1, 1, 1)
    for i, t in enumerate(tasks):
        ax.plot(x, profile["per_task"][t], "-o", ms=3, lw=1, alpha=0.6, color=f"C{i % 10}", label=t)
    ax.plot(x, profile["mean"], "k-s", lw=2.5, ms=5, label="mean over tasks and entries")
    blocks = [k for k, m in enumerate(profile["mean_matrices"]) if m is not None]
    if blocks:
        ax.plot(
            blocks,
            [profile["mean_matrices"][k] for k in blocks],
            "k--^",
            lw=1.5,
            ms=5,
            label="mean over tasks, weight matrices only",
        )
    (s0, s1), (d0, d1) = _paper_ranges()
    ax.axhspan(s0, s1, color="C0", alpha=0.08, label=f"paper: shallow layers {s0:g}-{s1:g}")
    ax.axhspan(d0, d1, color="C3", alpha=0.08, label=f"paper: deep layers {d0:g}-{d1:g}")
    ax.axhline(0.3, color="grey", ls=":", lw=1, label="initial value 0.3")
    ax.set_xticks(x, profile["groups"], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("depth")
    ax.set_ylabel("mean coefficient")
    ax.set_title(f"Mean layer-wise coefficient per depth, {model} ({source})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    save(fig, path)


def _plot_coefficients(
    table: CoefficientTable, profile: dict, folder: Path, source: str, model: str
) -> dict[str, str]:
    """coefficients_heatmap.png (per entry and per block) and coefficients_depth.png; returns {kind:
    file name}."""
    files = {}
    _plot_heatmap(table, profile, folder / "coefficients_heatmap.png", source, model)
    files["heatmap"] = "coefficients_heatmap.png"
    _plot_depth(table.tasks, profile, folder / "coefficients_depth.png", source, model)
    files["depth"] = "coefficients_depth.png"
    return files


def _plot_cosine(cosine: list[list[float]], tasks: Sequence[str], path: Path, model: str) -> None:
    """coefficients_cosine.png: the pairwise cosine matrix of the task vectors."""
    fig = figure(2.5 + 0.7 * len(tasks), 2 + 0.6 * len(tasks))
    ax = fig.add_subplot(1, 1, 1)
    cos = np.asarray(cosine, dtype=np.float64)
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            ax.text(
                j,
                i,
                f"{cos[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(cos[i, j]) > 0.6 else "black",
            )
    ax.set_xlabel("task vector")
    ax.set_ylabel("task vector")
    ax.set_title(f"Cosine similarity of task vectors (visual entries), {model}", fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine")
    save(fig, path)


def _paper_ranges() -> tuple[list[float], list[float]]:
    """The paper's (ViT-B/32) ranges of the learned layer-wise coefficients: shallow layers, deep
    layers."""
    findings = paper_findings()
    return findings["layerwise_coefficients_shallow"], findings["layerwise_coefficients_deep"]


def _source_table(ctx: Context) -> tuple[str, CoefficientTable, str]:
    """The analysed coefficients: (source path or 'published', their table, their label)."""
    source = ctx.options.source or str(ctx.folder / f"{ctx.options.method}.json")
    if source == "published":
        table = published_table(METHODS[ctx.options.method].published, ctx.model)
        label = f"the authors' published {METHODS[ctx.options.method].title}"
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(
                f"no layer-wise result at {source}: run `python -m adamerging experiments"
                " main-table` first, or pass --source FILE (or --source published)"
            )
        table = load_table(source)
        label = Path(source).name
    return source, table, label


def _task_vector_cosines(
    ctx: Context, table: CoefficientTable, folder: Path, files: dict[str, str]
) -> dict | None:
    """The task vectors' statistics and coefficients_cosine.png (into `files`), or None."""
    cosine = None
    try:  # the task vectors come from the checkpoints, loaded as any run loads them
        # checkpoints only, no test set
        vectors = load_task_vectors(
            dataclasses.replace(ctx.base, tasks=",".join(table.tasks)), "plain"
        )
        cosine = task_vector_stats(vectors.theta0, vectors.tau, vectors.entries, table.tasks)
        _plot_cosine(cosine["cosine"], table.tasks, folder / "coefficients_cosine.png", ctx.model)
        files["cosine"] = "coefficients_cosine.png"
    except (FileNotFoundError, CheckpointError) as e:
        print(f"cosine matrix skipped: {e}", file=sys.stderr)
    return cosine


def _depth_table(table: CoefficientTable, profile: dict) -> str:
    """The table of the mean coefficient per depth group: per task, over tasks, over matrices."""
    depth_rows = {
        g: {
            **{t: profile["per_task"][t][k] for t in table.tasks},
            "mean": profile["mean"][k],
            "mean, weight matrices": profile["mean_matrices"][k],
        }
        for k, g in enumerate(profile["groups"])
    }
    return markdown_table(
        depth_rows,
        [*table.tasks, "mean", "mean, weight matrices"],
        digits=2,
        average=False,
        label="depth",
    )


def _report_lines(
    ctx: Context,
    label: str,
    profile: dict,
    table_md: str,
    files: dict[str, str],
    tasks: Sequence[str],
    cosine: dict | None,
) -> list[str]:
    """The lines of coefficients.md: the depth summary and table, the plots, the cosines."""
    (s0, s1), (d0, d1) = _paper_ranges()
    md = [
        f"# Layer-wise coefficients: `{ctx.model}`",
        "",
        f"Source: {label}.",
        "",
        (
            "Mean coefficient of the shallow third of the blocks"
            f" ({', '.join(profile['shallow_blocks'])}): {fmt(profile['shallow_mean'], '.2f')}; of"
            f" the deep third ({', '.join(profile['deep_blocks'])}):"
            f" {fmt(profile['deep_mean'], '.2f')}; over the blocks' weight matrices only:"
            f" {fmt(profile['shallow_mean_matrices'], '.2f')} and"
            f" {fmt(profile['deep_mean_matrices'], '.2f')} (paper, ViT-B/32: shallow about"
            f" {s0:g}-{s1:g}, deep about {d0:g}-{d1:g}; initial value 0.3)."
        ),
        "",
        table_md,
        "",
        f"![heatmap]({files['heatmap']})",
        "",
        f"![depth]({files['depth']})",
    ]
    if cosine is not None:
        cos_rows = {t: dict(zip(tasks, row)) for t, row in zip(tasks, cosine["cosine"])}
        md += [
            "",
            f"Task vectors: mean pairwise cosine {fmt(cosine['mean_pairwise_cosine'], '.3f')}; "
            "|tau_t| / |theta_0|: "
            + ", ".join(f"{t} {v:.3f}" for t, v in cosine["norm_ratio"].items())
            + ".",
            "",
            markdown_table(cos_rows, tasks, digits=3, average=False, label="cosine"),
            "",
            f"![cosine]({files['cosine']})",
        ]
    return md


def coefficients(ctx: Context) -> dict:
    """Layer-wise coefficients by depth (paper Sec. 5: low in shallow layers, high in deep ones) and
    task-vector cosines."""
    started = time.perf_counter()
    source, table, label = _source_table(ctx)
    profile = depth_profile(table)
    folder = ctx.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = _plot_coefficients(table, profile, folder, label, ctx.model)
    cosine = None
    if not ctx.options.no_cosine:
        cosine = _task_vector_cosines(ctx, table, folder, files)
    table_md = _depth_table(table, profile)
    md = _report_lines(ctx, label, profile, table_md, files, table.tasks, cosine)
    write_text(folder / "coefficients.md", "\n".join(md) + "\n")
    out = {
        **meta(ctx, started),
        "source": source,
        "tasks": table.tasks,
        "depth": profile,
        "plots": files,
        "rows": table.entries,
        "values": table.to_json()["values"],
        "task_vectors": cosine,
    }
    write_json(out, folder / "coefficients.json")
    print(table_md)
    print(
        f"shallow {fmt(profile['shallow_mean'], '.2f')}, deep {fmt(profile['deep_mean'], '.2f')}"
        f" (weight matrices {fmt(profile['shallow_mean_matrices'], '.2f')},"
        f" {fmt(profile['deep_mean_matrices'], '.2f')}); wrote {folder / 'coefficients'}.json,"
        " .md, " + ", ".join(files.values())
    )
    return out
