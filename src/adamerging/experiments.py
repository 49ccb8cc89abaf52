"""The paper's experiments, one command each, rendered beside the paper's numbers.

    python -m adamerging.experiments EXPERIMENT --model MODEL [experiment flags] [pipeline flags]

EXPERIMENT is one of

    main-table      every method (Table 2/3 rows) -> results/<model>/main_table.{md,csv}
    published       the authors' coefficient tables, no training -> published_table.{md,csv}
    entropy-loss    per-sample entropy vs cross-entropy of Task Arithmetic -> entropy_vs_loss.{json,png}
    coefficients    layer-wise coefficients by depth, task-vector cosines -> coefficients.{json,md}, coefficients_*.png
    generalization  adapt on seen tasks, evaluate unseen ones (Table 4; --eval-tasks: your own split) -> generalization.{md,json}
    robustness      7 test-image corruptions, TA vs AdaMerging -> robustness.{md,json}
    ablations       supervised vs entropy, adaptation-data fraction, steps -> ablations.{md,json}, trajectory.png
    all             each of the above in turn (published is skipped where the authors published no table)

Every flag the experiment does not define goes to each method run unchanged (`--checkpoints`,
`--data-location`, `--steps`, `--device`, ...: see `python -m adamerging task_arithmetic --help`).
The main-table and published runs write the pipeline's usual results/<model>/<method>.json; the other
experiments keep their method runs apart, under results/<model>/runs/<experiment>/<variant>/<method>.json,
so they never replace the main results. `--skip-existing` reuses a run's JSON when it was made with
the same tasks and settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from . import datasets as ds
from . import pipeline
from .adaptation import MergedEncoder
from .checkpoints import CheckpointError, atomic_write
from .corruptions import CORRUPTIONS
from .diagnostics import entropy_and_loss, sample_tasks, spearman, task_vector_stats
from .evaluation import accuracy, predict
from .merging import CoefficientTable, constant_table, load_table, published_table
from .models import VISUAL_PREFIX
from .reporting import (TABLE_ORDER, csv_table, markdown_table, package_versions, paper_row, paper_tables, row_average,
                        with_paper, write_json)

METHODS = pipeline.METHODS
MAIN_METHODS = [name for name, _ in TABLE_ORDER if name in METHODS]        # paper row order
PUBLISHED_METHODS = [name for name in MAIN_METHODS if METHODS[name].published]
ADAPTIVE = ("layer_wise_adamerging", "layer_wise_adamergingpp")
PAPER_SPEARMAN = 0.87                      # paper, Sec. 3.2: entropy vs loss of the merged ViT-B/32
ROBUSTNESS_TASKS = ("Cars", "EuroSAT", "RESISC45", "GTSRB")
# Paper, Sec. 5 (ViT-B/32, layer-wise): supervised 81.6 vs entropy 80.1; with 0.1 % of the test data
# AdaMerging still beats Task Arithmetic by 4.9 points; under corruptions it beats TA by 5.8 to 11.2.
PAPER_ABLATIONS = {"entropy": 80.1, "supervised": 81.6, "gain_over_ta_at_0.1_percent": 4.9, "robustness_gain_range": [5.8, 11.2]}


# ---------------------------------------------------------------------------------------------- running methods


@dataclass
class Context:
    """One experiment invocation: its own flags, the pipeline flags forwarded to every run, and those parsed."""

    experiment: str
    options: argparse.Namespace
    passthrough: list[str]
    base: argparse.Namespace      # the pipeline flags as the Task Arithmetic parser reads them (defaults filled)

    @property
    def model(self) -> str:
        return self.base.model

    @property
    def folder(self) -> Path:
        return Path(self.base.results_dir) / self.base.model

    def tasks(self) -> list[str]:
        """The merged tasks: --tasks, or <checkpoints>/<model>/tasks.txt, or the paper's 8."""
        return pipeline.parse_tasks(self.base.tasks, Path(self.base.checkpoints) / self.base.model)

    def runs(self, *parts: str) -> Path:
        return self.folder.joinpath("runs", self.experiment, *parts)


# Settings that must agree for --skip-existing to reuse a run (tasks are compared resolved); the
# second group matters only where the method learns its table.
_SAME_SETTINGS = ("model", "corruption", "coefficients", "seed", "lam", "ties_k", "ties_combine", "test_split")
_SAME_ADAPT_SETTINGS = ("objective", "adapt_fraction", "steps", "lr", "init", "eval_every", "batch_size_adapt",
                        "batches_per_step", "no_clamp")


def _reusable(saved: dict, method: str, args: argparse.Namespace) -> bool:
    model_dir = Path(args.checkpoints) / args.model
    tasks = pipeline.parse_tasks(args.tasks, model_dir)
    unseen = [t for t in pipeline.parse_tasks(args.eval_tasks, model_dir) if t not in tasks] if args.eval_tasks else []
    keys = _SAME_SETTINGS + (_SAME_ADAPT_SETTINGS if METHODS[method].adapt and not args.coefficients else ())
    config = saved.get("config", {})
    return saved.get("tasks") == tasks and saved.get("eval_tasks", []) == unseen and \
        all(config.get(k) == getattr(args, k, None) for k in keys)


def run_method(ctx: Context, method: str, extra: Sequence[str] = (), save_as: Path | None = None) -> dict:
    """One pipeline run with the forwarded flags plus `extra`; returns its results dict.

    Without `save_as` the pipeline writes its usual results/<model>/<name>.json (replacing it). With
    it, the run writes to a scratch folder and its JSON is kept at `save_as` only, so variants of one
    method (a corruption, a fraction) never replace each other or the main results.
    """
    argv = [*ctx.passthrough, *extra, "--overwrite"]
    args = pipeline.build_parser(METHODS[method]).parse_args(argv)
    target = save_as or Path(args.results_dir) / args.model / f"{pipeline.result_name(METHODS[method], args)}.json"
    if ctx.options.skip_existing and target.is_file():
        saved = json.loads(target.read_text())
        if _reusable(saved, method, args):
            print(f"== {method}: reusing {target}")
            return saved
    print(f"== {method}" + (f" {' '.join(extra)}" if extra else ""), flush=True)
    if save_as is None:
        return pipeline.run(method, argv)
    with tempfile.TemporaryDirectory(prefix="adamerging-run-") as scratch:   # the pipeline's state file goes too
        result = pipeline.run(method, [*argv, "--results-dir", scratch])
    result["config"]["results_dir"] = str(save_as.parent)
    write_json(result, save_as)
    print(f"kept {save_as}")
    return result


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _header(ctx: Context, title: str, started: float, tasks: Sequence[str] | None = None) -> list[str]:
    return [f"# {title}: `{ctx.model}`", "",
            f"Command: `python -m adamerging.experiments {ctx.experiment} {' '.join(ctx.passthrough)}`".rstrip() + "  ",
            f"Tasks: {', '.join(tasks or ctx.tasks())}. Wall time {time.perf_counter() - started:.0f} s. "
            "Accuracy (%) on each task's full test split.", ""]


def _meta(ctx: Context, started: float) -> dict:
    return {"experiment": ctx.experiment, "model": ctx.model, "argv": ctx.passthrough, "options": vars(ctx.options),
            "wall_seconds": round(time.perf_counter() - started, 2), "versions": package_versions()}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or x != x else format(x, spec)


# ---------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")   # leaves room for suptitles and colorbars
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------- 1-2. tables


def comparison(model: str, ours: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> tuple[dict, set[str]]:
    """Our rows with the paper's row and the difference beside each, when the paper reports `model`."""
    return with_paper(ours, {title: paper_row(model, title, tasks) for title in ours}, tasks)


def ordering_table(ours: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> str:
    """For a model the paper does not report: our averages beside the paper's, to compare the methods' order."""
    columns = ["ours"] + [f"paper {m}" for m in ("ViT-B-32", "ViT-L-14")]
    rows = {}
    for title, accs in ours.items():
        row = {"ours": row_average(accs, tasks)}
        for m in ("ViT-B-32", "ViT-L-14"):
            paper = paper_row(m, title)
            row[f"paper {m}"] = paper.get("Avg") if paper else None
        rows[title] = row
    return markdown_table(rows, columns, average=False, label="method (average %)")


def write_table(ctx: Context, stem: str, title: str, ours: Mapping[str, Mapping[str, float]], tasks: Sequence[str],
                started: float, notes: Sequence[str] = ()) -> str:
    """results/<model>/<stem>.{md,csv}: our rows, with the paper's and the differences where it reports the model."""
    rows, signed = comparison(ctx.model, ours, tasks)
    table = markdown_table(rows, tasks, signed=signed)
    md = _header(ctx, title, started) + [table, ""]
    if signed:
        md += [f"`(paper)`: the paper's Table {'2' if ctx.model == 'ViT-B-32' else '3'} for {ctx.model} (`Pretrained` = our "
               "Zero-shot); `(ours - paper)`: our value minus the paper's, in points.", ""]
    else:
        md += [f"The paper reports no {ctx.model} results; its averages for the same methods, to compare the methods' order:", "",
               ordering_table(ours, tasks), ""]
    md += list(notes)
    _write_text(ctx.folder / f"{stem}.md", "\n".join(md).rstrip() + "\n")
    _write_text(ctx.folder / f"{stem}.csv", csv_table(rows, tasks))
    print(table)
    print(f"wrote {ctx.folder / stem}.md, .csv")
    return table


def main_table(ctx: Context) -> dict:
    """Every method on the same tasks: the paper's Table 2 (ViT-B/32) / 3 (ViT-L/14)."""
    started = time.perf_counter()
    methods = ctx.options.methods or MAIN_METHODS
    results = {m: run_method(ctx, m) for m in methods}
    tasks = next(iter(results.values()))["tasks"]
    ours = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
    adapted = [f"{METHODS[m].title} {r['config']['steps']} steps" for m, r in results.items() if METHODS[m].adapt]
    notes = [f"AdaMerging rows: {', '.join(adapted)}."] if adapted else []
    write_table(ctx, "main_table", "Main table: every method", ours, tasks, started, notes)
    return {m: r["average"] for m, r in results.items()}


def published(ctx: Context) -> dict:
    """The authors' learned coefficient tables evaluated here (no training)."""
    started = time.perf_counter()
    for m in PUBLISHED_METHODS:   # a clear error before any run
        published_table(METHODS[m].published, ctx.model)
    results = {m: run_method(ctx, m, ["--coefficients", "published"]) for m in PUBLISHED_METHODS}
    tasks = next(iter(results.values()))["tasks"]
    ours = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
    logs = paper_tables().get(f"official_logs_{ctx.model}_final_avg", {})
    notes = ["Each row: the authors' published coefficient table for this method, applied to the checkpoints here "
             "(`--coefficients published`); nothing is trained, so the difference to the paper measures the "
             "checkpoints, data and evaluation, not the optimisation."]
    if logs:
        notes += ["", "Final averages in the authors' training logs: " + ", ".join(f"{k} {v}" for k, v in logs.items()) + "."]
    write_table(ctx, "published_table", "The authors' published coefficients", ours, tasks, started, notes)
    return {m: r["average"] for m, r in results.items()}


# ---------------------------------------------------------------------------------------------- 3. entropy vs loss


def binned_means(entropy: np.ndarray, loss: np.ndarray, bins: int = 10) -> list[dict]:
    """Mean entropy and loss per entropy quantile bin (ties kept together), lowest entropy first."""
    edges = np.unique(np.quantile(entropy, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return [{"entropy": float(entropy.mean()), "loss": float(loss.mean()), "count": int(len(entropy))}] if len(entropy) else []
    which = np.clip(np.digitize(entropy, edges[1:-1], right=True), 0, len(edges) - 2)
    return [{"entropy": float(entropy[which == b].mean()), "loss": float(loss[which == b].mean()), "count": int((which == b).sum())}
            for b in range(len(edges) - 1) if (which == b).any()]


def correlation_report(per_task: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict:
    """Spearman(entropy, loss) per task and pooled over all samples, and the binned means."""
    pooled_h = np.concatenate([np.asarray(h, dtype=np.float64) for h, _ in per_task.values()])
    pooled_l = np.concatenate([np.asarray(l, dtype=np.float64) for _, l in per_task.values()])
    return {
        "per_task": {t: spearman(h, l) for t, (h, l) in per_task.items()},
        "pooled": spearman(pooled_h, pooled_l),
        "binned": {**{t: binned_means(np.asarray(h, np.float64), np.asarray(l, np.float64)) for t, (h, l) in per_task.items()},
                   "pooled": binned_means(pooled_h, pooled_l)},
    }


def _plot_entropy_loss(values: Mapping[str, tuple[np.ndarray, np.ndarray]], report: dict, path: Path, title: str) -> None:
    fig = _figure(12, 5)
    fig.suptitle(title)
    ax = fig.add_subplot(1, 2, 1)
    rng = np.random.default_rng(0)
    for j, (t, (h, l)) in enumerate(values.items()):
        keep = rng.permutation(len(h))[:1500]  # readable scatter: at most 1500 points per task
        ax.scatter(h[keep], l[keep], s=5, alpha=0.35, color=f"C{j % 10}", label=f"{t} ({_fmt(report['per_task'][t], '.2f')})")
    ax.set_xlabel("entropy of the prediction (nats)")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"per test sample; Spearman per task in the legend, pooled {_fmt(report['pooled'], '.2f')}", fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    ax = fig.add_subplot(1, 2, 2)
    for j, t in enumerate(values):
        b = report["binned"][t]
        ax.plot([x["entropy"] for x in b], [x["loss"] for x in b], "-o", ms=3, color=f"C{j % 10}", label=t)
    b = report["binned"]["pooled"]
    ax.plot([x["entropy"] for x in b], [x["loss"] for x in b], "k-s", lw=2, ms=4, label="all tasks")
    ax.set_xlabel("mean entropy in the bin (nats)")
    ax.set_ylabel("mean cross-entropy loss in the bin")
    ax.set_title(f"binned by entropy deciles (paper, ViT-B/32: Spearman {PAPER_SPEARMAN})", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def entropy_loss(ctx: Context) -> dict:
    """Does the entropy of the Task Arithmetic model's predictions rank the test samples as their loss does?"""
    started = time.perf_counter()
    args = pipeline.build_parser(METHODS["task_arithmetic"]).parse_args(ctx.passthrough)
    pipeline.seed_everything(args.seed)
    problem = pipeline.load_problem(args, METHODS["task_arithmetic"], {})
    merged = MergedEncoder(problem.clip.visual, problem.theta0, problem.tau, problem.keys, args.device)
    encoder = merged.encoder(constant_table(problem.tasks, args.lam).values, args.precision)
    data = sample_tasks(problem.data, ctx.options.samples, args.seed) if ctx.options.samples else problem.data
    values, accs = {}, {}
    for t in data:
        logits = predict(encoder, t.head, t.images, problem.normalize, args.batch_size)
        h, l = entropy_and_loss(logits, t.labels)
        values[t.name] = (h.numpy().astype(np.float64), l.numpy().astype(np.float64))
        accs[t.name] = accuracy(logits, t.labels)
    report = correlation_report(values)
    folder = ctx.folder
    _plot_entropy_loss(values, report, folder / "entropy_vs_loss.png",
                       f"Entropy vs cross-entropy of Task Arithmetic (lambda {args.lam:g}), {ctx.model}")
    table = markdown_table({"Spearman(entropy, loss)": {**report["per_task"], "pooled": report["pooled"]},
                            "accuracy (%)": {**accs, "pooled": _mean(list(accs.values()))}},
                           [*values, "pooled"], digits=2, average=False, label="")
    out = {**_meta(ctx, started), "merged_model": f"Task Arithmetic, lambda {args.lam:g}", "tasks": list(values),
           "samples": {t: len(h) for t, (h, _) in values.items()}, "spearman": {"per_task": report["per_task"], "pooled": report["pooled"]},
           "paper_spearman": PAPER_SPEARMAN, "accuracy": accs, "binned": report["binned"], "test_data": problem.test_data,
           "per_sample": {t: {"entropy": np.round(h, 5).tolist(), "loss": np.round(l, 5).tolist()} for t, (h, l) in values.items()}}
    write_json(out, folder / "entropy_vs_loss.json")
    print(table)
    print(f"pooled Spearman {_fmt(report['pooled'], '.3f')} (paper {PAPER_SPEARMAN}); wrote {folder / 'entropy_vs_loss'}.json, .png")
    return out


# ---------------------------------------------------------------------------------------------- 4. coefficients


def depth_group(key: str) -> tuple[int, str]:
    """(order, label) of a visual entry: the input stem, transformer block i, or the output head (ln_post, proj)."""
    name = key[len(VISUAL_PREFIX):] if key.startswith(VISUAL_PREFIX) else key
    parts = name.split(".")
    if parts[0] == "transformer" and len(parts) > 2 and parts[2].isdigit():
        return int(parts[2]) + 1, f"block {parts[2]}"
    if parts[0] in ("ln_post", "proj"):
        return 10_000, "output"
    return 0, "input"


# The four weight matrices of a transformer block: most of its parameters.
BLOCK_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def depth_profile(table: CoefficientTable) -> dict:
    """Mean coefficient per depth group (over its entries), per task and over tasks; visual entries only.

    `mean_matrices`: the same over each block's four weight matrices only (where most parameters are;
    the layer norms and biases of a block are half its entries but few of its parameters).
    """
    if table.values.shape[0] == 1 or table.rows is None:
        raise ValueError("the coefficient analysis needs a layer-wise table with row names (a layer-wise results JSON, or 'published')")
    groups: dict[tuple[int, str], list[int]] = {}
    for j, key in enumerate(table.rows):
        if key.startswith(VISUAL_PREFIX):   # text-side rows never reach the forward: they keep their initial value
            groups.setdefault(depth_group(key), []).append(j)
    order = sorted(groups)
    values = table.values[:, 1:].double()
    per_task = {t: [float(values[groups[g], i].mean()) for g in order] for i, t in enumerate(table.tasks)}
    mean = [float(values[groups[g]].mean()) for g in order]
    matrices = [[j for j in groups[g] if table.rows[j].endswith(BLOCK_MATRICES)] for g in order]
    mean_matrices = [float(values[m].mean()) if m else None for m in matrices]
    blocks = [k for k, g in enumerate(order) if g[1].startswith("block")]
    third = max(1, len(blocks) // 3)
    return {"groups": [g[1] for g in order], "entries": [len(groups[g]) for g in order], "per_task": per_task, "mean": mean,
            "mean_matrices": mean_matrices,
            "shallow_mean": _mean([mean[k] for k in blocks[:third]]), "deep_mean": _mean([mean[k] for k in blocks[-third:]]),
            "shallow_mean_matrices": _mean([mean_matrices[k] for k in blocks[:third] if mean_matrices[k] is not None]),
            "deep_mean_matrices": _mean([mean_matrices[k] for k in blocks[-third:] if mean_matrices[k] is not None]),
            "shallow_blocks": [order[k][1] for k in blocks[:third]], "deep_blocks": [order[k][1] for k in blocks[-third:]]}


def _short(key: str) -> str:
    return key[len(VISUAL_PREFIX):].replace("transformer.resblocks.", "b") if key.startswith(VISUAL_PREFIX) else key


def _plot_coefficients(table: CoefficientTable, profile: dict, folder: Path, source: str, model: str) -> dict[str, str]:
    tasks = table.tasks
    visual = [j for j, k in enumerate(table.rows) if k.startswith(VISUAL_PREFIX)]
    values = table.values[visual, 1:].numpy()
    files = {}

    fig = _figure(4 + 0.6 * len(tasks) + 3, max(5.0, 0.12 * len(visual) + 1.5))
    fig.suptitle(f"Layer-wise coefficients, {model} ({source})")
    ax = fig.add_subplot(1, 2, 1)
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    labels = [_short(table.rows[j]) for j in visual]
    step = max(1, len(visual) // 60)
    ax.set_yticks(range(0, len(visual), step), labels[::step], fontsize=5 if len(visual) > 40 else 7)
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
    _save(fig, folder / "coefficients_heatmap.png")
    files["heatmap"] = "coefficients_heatmap.png"

    fig = _figure(8, 4.8)
    x = np.arange(len(profile["groups"]))
    ax = fig.add_subplot(1, 1, 1)
    for i, t in enumerate(tasks):
        ax.plot(x, profile["per_task"][t], "-o", ms=3, lw=1, alpha=0.6, color=f"C{i % 10}", label=t)
    ax.plot(x, profile["mean"], "k-s", lw=2.5, ms=5, label="mean over tasks and entries")
    blocks = [k for k, m in enumerate(profile["mean_matrices"]) if m is not None]
    if blocks:
        ax.plot(blocks, [profile["mean_matrices"][k] for k in blocks], "k--^", lw=1.5, ms=5, label="mean over tasks, weight matrices only")
    ax.axhspan(0.2, 0.3, color="C0", alpha=0.08, label="paper: shallow layers 0.2-0.3")
    ax.axhspan(0.6, 0.8, color="C3", alpha=0.08, label="paper: deep layers 0.6-0.8")
    ax.axhline(0.3, color="grey", ls=":", lw=1, label="initial value 0.3")
    ax.set_xticks(x, profile["groups"], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("depth")
    ax.set_ylabel("mean coefficient")
    ax.set_title(f"Mean layer-wise coefficient per depth, {model} ({source})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, folder / "coefficients_depth.png")
    files["depth"] = "coefficients_depth.png"
    return files


def _plot_cosine(cosine: list[list[float]], tasks: Sequence[str], path: Path, model: str) -> None:
    fig = _figure(2.5 + 0.7 * len(tasks), 2 + 0.6 * len(tasks))
    ax = fig.add_subplot(1, 1, 1)
    cos = np.asarray(cosine, dtype=np.float64)
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if abs(cos[i, j]) > 0.6 else "black")
    ax.set_xlabel("task vector")
    ax.set_ylabel("task vector")
    ax.set_title(f"Cosine similarity of task vectors (visual entries), {model}", fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine")
    _save(fig, path)


def coefficients(ctx: Context) -> dict:
    """Layer-wise coefficients by depth (paper: shallow about 0.2-0.3, deep 0.6-0.8) and task-vector cosines."""
    started = time.perf_counter()
    source = ctx.options.source or str(ctx.folder / f"{ctx.options.method}.json")
    if source == "published":
        table = published_table(METHODS[ctx.options.method].published, ctx.model)
        label = f"the authors' published {METHODS[ctx.options.method].title}"
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"no layer-wise result at {source}: run `python -m adamerging.experiments main-table` "
                                    f"first, or pass --source FILE (or --source published)")
        table = load_table(source)
        label = Path(source).name
    profile = depth_profile(table)
    folder = ctx.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = _plot_coefficients(table, profile, folder, label, ctx.model)
    cosine = None
    if not ctx.options.no_cosine:
        try:   # the task vectors come from the checkpoints, loaded as any run loads them
            args = pipeline.build_parser(METHODS["task_arithmetic"]).parse_args([*ctx.passthrough, "--tasks", ",".join(table.tasks)])
            vectors = pipeline.load_task_vectors(args, METHODS["task_arithmetic"])  # checkpoints only, no test set
            cosine = task_vector_stats(vectors.theta0, vectors.tau, vectors.keys, table.tasks)
            _plot_cosine(cosine["cosine"], table.tasks, folder / "coefficients_cosine.png", ctx.model)
            files["cosine"] = "coefficients_cosine.png"
        except (FileNotFoundError, CheckpointError) as e:
            print(f"cosine matrix skipped: {e}", file=sys.stderr)
    depth_rows = {g: {**{t: profile["per_task"][t][k] for t in table.tasks}, "mean": profile["mean"][k],
                      "mean, weight matrices": profile["mean_matrices"][k]} for k, g in enumerate(profile["groups"])}
    table_md = markdown_table(depth_rows, [*table.tasks, "mean", "mean, weight matrices"], digits=2, average=False, label="depth")
    md = [f"# Layer-wise coefficients: `{ctx.model}`", "", f"Source: {label}.", "",
          f"Mean coefficient of the shallow third of the blocks ({', '.join(profile['shallow_blocks'])}): "
          f"{_fmt(profile['shallow_mean'], '.2f')}; of the deep third ({', '.join(profile['deep_blocks'])}): "
          f"{_fmt(profile['deep_mean'], '.2f')}; over the blocks' weight matrices only: {_fmt(profile['shallow_mean_matrices'], '.2f')} "
          f"and {_fmt(profile['deep_mean_matrices'], '.2f')} (paper, ViT-B/32: shallow about 0.2-0.3, deep about 0.6-0.8; "
          "initial value 0.3).", "",
          table_md, "", f"![heatmap]({files['heatmap']})", "", f"![depth]({files['depth']})"]
    if cosine is not None:
        cos_rows = {t: dict(zip(table.tasks, row)) for t, row in zip(table.tasks, cosine["cosine"])}
        md += ["", f"Task vectors: mean pairwise cosine {_fmt(cosine['mean_pairwise_cosine'], '.3f')}; "
               "|tau_t| / |theta_0|: " + ", ".join(f"{t} {v:.3f}" for t, v in cosine["norm_ratio"].items()) + ".", "",
               markdown_table(cos_rows, table.tasks, digits=3, average=False, label="cosine"), "", f"![cosine]({files['cosine']})"]
    _write_text(folder / "coefficients.md", "\n".join(md) + "\n")
    out = {**_meta(ctx, started), "source": source, "tasks": table.tasks, "depth": profile, "plots": files,
           "rows": table.rows, "values": table.to_json()["values"], "task_vectors": cosine}
    write_json(out, folder / "coefficients.json")
    print(table_md)
    print(f"shallow {_fmt(profile['shallow_mean'], '.2f')}, deep {_fmt(profile['deep_mean'], '.2f')} (weight matrices "
          f"{_fmt(profile['shallow_mean_matrices'], '.2f')}, {_fmt(profile['deep_mean_matrices'], '.2f')}); wrote {folder / 'coefficients'}.json, .md, "
          + ", ".join(files.values()))
    return out


# ---------------------------------------------------------------------------------------------- 5. generalization


def generalization_splits(available: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """The paper's Table 4 splits (exp1, exp2), restricted to the available tasks (the mini benchmark
    lacks some of the 8); a split keeps at least 2 seen and 1 unseen task, else it is dropped."""
    out = {}
    for name, split in paper_tables()["generalization_ViT-B-32"].items():
        if not isinstance(split, dict) or "seen" not in split:
            continue
        seen = [t for t in split["seen"] if t in available]
        unseen = [t for t in split["unseen"] if t in available]
        if len(seen) >= 2 and unseen:
            out[name] = (seen, unseen)
    return out


def _seen_unseen_row(accs: Mapping[str, float], seen: Sequence[str], unseen: Sequence[str]) -> dict[str, float]:
    row = {t: accs[t] for t in [*seen, *unseen] if t in accs}
    row["Seen avg"] = _mean([accs[t] for t in seen])
    row["Unseen avg"] = _mean([accs[t] for t in unseen])
    return row


def _paper_generalization(model: str, split: str, seen: Sequence[str], unseen: Sequence[str]) -> dict[str, dict]:
    """The paper's Table 4 rows of `split`, if our split is the paper's (ViT-B/32 only)."""
    paper = paper_tables()["generalization_ViT-B-32"].get(split)
    if model != "ViT-B-32" or not paper or list(paper["seen"]) != list(seen) or list(paper["unseen"]) != list(unseen):
        return {}
    return {title: {**dict(zip(seen, r["seen"])), **dict(zip(unseen, r["unseen"])), "Seen avg": r["seen_avg"], "Unseen avg": r["unseen_avg"]}
            for title, r in paper["rows"].items()}


def generalization(ctx: Context) -> dict:
    """Merge and adapt on seen tasks, evaluate on unseen ones too (the paper's Table 4)."""
    started = time.perf_counter()
    if ctx.base.eval_tasks:   # the user's own split: --eval-tasks are unseen, the other tasks seen
        unseen = pipeline.parse_tasks(ctx.base.eval_tasks, Path(ctx.base.checkpoints) / ctx.model)
        seen = [t for t in ctx.tasks() if t not in unseen]
        if not seen:
            raise ValueError(f"generalization: no seen task left once the unseen ones ({', '.join(unseen)}) are taken out of {ctx.tasks()}")
        splits = {"custom": (seen, unseen)}
    else:
        splits = generalization_splits(ctx.tasks())
        if not splits:
            raise ValueError(f"none of the paper's generalization splits has 2 seen and 1 unseen task among {ctx.tasks()}: pass --eval-tasks UNSEEN (the other tasks are the seen ones)")
    methods = ctx.options.methods or ["task_arithmetic", "ties_merging", *ADAPTIVE]
    md, out = [], {}
    for split, (seen, unseen) in splits.items():
        results = {m: run_method(ctx, m, ["--tasks", ",".join(seen), "--eval-tasks", ",".join(unseen)], ctx.runs(split, f"{m}.json"))
                   for m in methods}
        ours = {METHODS[m].title: _seen_unseen_row(r["accuracy"], seen, unseen) for m, r in results.items()}
        columns = [*seen, "Seen avg", *unseen, "Unseen avg"]
        rows, signed = with_paper(ours, _paper_generalization(ctx.model, split, seen, unseen), columns, average=False)
        table = markdown_table(rows, columns, signed=signed, average=False)
        md += [f"## {split}: seen {', '.join(seen)}; unseen {', '.join(unseen)}", "", table, ""]
        out[split] = {"seen": seen, "unseen": unseen, "rows": ours, "runs": {m: str(ctx.runs(split, f"{m}.json")) for m in methods}}
        print(table)
    notes = ["Seen tasks are merged and adapted on; unseen tasks are evaluated with the same merged encoder and their own "
             "zero-shot heads, never merged or adapted on (`--tasks SEEN --eval-tasks UNSEEN`)."]
    if ctx.model != "ViT-B-32" or any(not _paper_generalization(ctx.model, s, *splits[s]) for s in splits if s != "custom"):
        notes += ["", "Splits: the paper's Table 4 (ViT-B/32) exp1 (seen SUN397, Cars, RESISC45, DTD, SVHN, GTSRB; unseen MNIST, EuroSAT) "
                  "and exp2 (seen SUN397, Cars, GTSRB, EuroSAT, DTD, MNIST; unseen RESISC45, SVHN), each restricted to the tasks "
                  "this model has. Paper (ViT-B/32) unseen averages: " + "; ".join(
                      f"{s}: " + ", ".join(f"{t} {r['unseen_avg']}" for t, r in paper_tables()["generalization_ViT-B-32"][s]["rows"].items())
                      for s in ("exp1", "exp2")) + "."]
    else:
        notes += ["", "`(paper)`: the paper's Table 4. " + paper_tables()["generalization_ViT-B-32"].get("note", "")]
    text = "\n".join(_header(ctx, "Generalization to unseen tasks", started, sorted({t for s in splits.values() for t in s[0] + s[1]})) + md + notes) + "\n"
    _write_text(ctx.folder / "generalization.md", text)
    write_json({**_meta(ctx, started), "splits": out}, ctx.folder / "generalization.json")
    print(f"wrote {ctx.folder / 'generalization'}.md, .json")
    return out


# ---------------------------------------------------------------------------------------------- 6. robustness


def robustness_tasks(ctx: Context) -> list[str]:
    """--tasks, else the paper's Cars, EuroSAT, RESISC45, GTSRB among the model's tasks."""
    if ctx.base.tasks:
        return ctx.tasks()
    tasks = [t for t in ctx.tasks() if t in ROBUSTNESS_TASKS]
    if len(tasks) < 2:
        raise ValueError(f"fewer than 2 of the paper's robustness tasks ({', '.join(ROBUSTNESS_TASKS)}) among {ctx.tasks()}: pass --tasks")
    return tasks


def robustness(ctx: Context) -> dict:
    """Each corruption applied to every test image; adaptation and evaluation on the corrupted images."""
    started = time.perf_counter()
    if ctx.base.corruption:
        raise ValueError("robustness runs every corruption itself: pass --corruptions NAME,... instead of --corruption")
    tasks = robustness_tasks(ctx)
    corruptions = ctx.options.corruptions or list(CORRUPTIONS)
    conditions = ["clean", *corruptions] if not ctx.options.no_clean else corruptions
    methods = ctx.options.methods or ["task_arithmetic", "ties_merging", *ADAPTIVE]
    titles = [METHODS[m].title for m in methods]
    md, out = [], {}
    summary: dict[str, dict[str, float]] = {title: {} for title in titles}   # method -> condition -> average
    for condition in conditions:
        extra = ["--tasks", ",".join(tasks)] + (["--corruption", condition] if condition != "clean" else [])
        results = {m: run_method(ctx, m, extra, ctx.runs(condition, f"{m}.json")) for m in methods}
        rows = {METHODS[m].title: r["accuracy"] for m, r in results.items()}
        table = markdown_table(rows, tasks)
        md += [f"## {condition}", "", table, ""]
        out[condition] = {"accuracy": rows, "average": {METHODS[m].title: r["average"] for m, r in results.items()},
                          "runs": {m: str(ctx.runs(condition, f"{m}.json")) for m in methods}}
        for title, avg in out[condition]["average"].items():
            summary[title][condition] = avg
        print(f"-- {condition}\n{table}")
    gaps = {}
    if "task_arithmetic" in methods:   # AdaMerging minus Task Arithmetic, per condition (the paper's comparison)
        ta = summary[METHODS["task_arithmetic"].title]
        for m in (m for m in methods if METHODS[m].adapt):
            gaps[f"{METHODS[m].title} - TA"] = {c: summary[METHODS[m].title][c] - ta[c] for c in conditions}
    overview = markdown_table({**summary, **gaps}, conditions, signed=set(gaps), average=False, label="average (%)")
    notes = ["Every test image of the tasks is corrupted once (seeded, fixed severity: `adamerging/corruptions.py`), then the "
             "methods merge, adapt (AdaMerging: on the corrupted unlabeled images) and are evaluated on the corrupted images.", "",
             f"Paper (ViT-B/32, Cars, EuroSAT, RESISC45, GTSRB): AdaMerging beats Task Arithmetic by "
             f"{PAPER_ABLATIONS['robustness_gain_range'][0]} to {PAPER_ABLATIONS['robustness_gain_range'][1]} points across corruptions."]
    for name, gap in gaps.items():
        values = [gap[c] for c in corruptions]
        notes += ["", f"Here, {name}: from {min(values):+.1f} to {max(values):+.1f} points across {len(values)} corruption(s)."]
    text = "\n".join(_header(ctx, "Robustness to corrupted test images", started, tasks) +
                     [f"Methods: {', '.join(titles)}; conditions: {', '.join(conditions)}.", "", "## Averages", "", overview, ""] + md + notes) + "\n"
    _write_text(ctx.folder / "robustness.md", text)
    write_json({**_meta(ctx, started), "tasks": tasks, "conditions": out, "summary": summary, "minus_ta": gaps}, ctx.folder / "robustness.json")
    print(overview)
    print(f"wrote {ctx.folder / 'robustness'}.md, .json")
    return {"summary": summary, "minus_ta": gaps}


# ---------------------------------------------------------------------------------------------- 7. ablations


def trajectory(result: dict) -> list[tuple[int, float]]:
    """(step, average accuracy) wherever the run evaluated (step 0 = the initial table)."""
    points = result.get("adaptation", {}).get("trajectory", []) if result.get("adaptation") else []
    return [(r["step"], r["avg_accuracy"]) for r in points if "avg_accuracy" in r]


def _plot_trajectory(curves: Mapping[str, list[tuple[int, float]]], path: Path, model: str, title: str) -> None:
    paper = {int(k): v for k, v in paper_tables()["official_logs_ViT-B-32_layerwise_avg_trajectory"].items()}
    paper_ta = paper_row("ViT-B-32", "Task Arithmetic")["Avg"]   # step 0 = the init 0.3 = Task Arithmetic
    paper_curve = [(0, paper_ta), *sorted(paper.items())]
    fig = _figure(12, 4.8)
    fig.suptitle(f"Average accuracy during {title}: {model} vs the authors' layer-wise ViT-B/32 run")
    for k, relative in enumerate((False, True)):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, (label, points) in enumerate(curves.items()):
            if points:
                s, a = zip(*points)
                ax.plot(s, [x - a[0] for x in a] if relative else a, "-o", ms=3, color=f"C{j}", label=f"{label} ({model})")
        s, a = zip(*paper_curve)
        ax.plot(s, [x - a[0] for x in a] if relative else a, "k--s", ms=4, label="authors' log, layer-wise, ViT-B/32 (step 0 = paper TA)")
        ax.set_xlabel("AdaMerging step")
        ax.set_ylabel("change in average accuracy since step 0 (points)" if relative else "average accuracy (%)")
        ax.set_title("gain over the initial table (= Task Arithmetic)" if relative else "average accuracy", fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, path)


def ablations(ctx: Context) -> dict:
    """Supervised vs entropy objective, fraction of test data for adaptation, and the step trajectory."""
    started = time.perf_counter()
    method, tasks = ctx.options.method, ctx.tasks()
    eval_every = ctx.base.eval_every or max(1, ctx.base.steps // 10)
    every = ["--eval-every", str(eval_every)]
    runs = {"entropy": run_method(ctx, method, every, ctx.runs("entropy", f"{method}.json")),
            "supervised": run_method(ctx, method, [*every, "--objective", "supervised"], ctx.runs("supervised", f"{method}_supervised.json")),
            "ta": run_method(ctx, "task_arithmetic", [], ctx.runs("baseline", "task_arithmetic.json"))}
    fractions = sorted(set(ctx.options.fractions))
    for f in fractions:
        if f != 1.0:
            runs[f"fraction {f:g}"] = run_method(ctx, method, ["--adapt-fraction", str(f)], ctx.runs(f"fraction_{f:g}", f"{method}.json"))
    title, ta = METHODS[method].title, runs["ta"]["average"]

    objective_rows = {"Task Arithmetic": runs["ta"]["accuracy"], f"{title}, entropy (unlabeled)": runs["entropy"]["accuracy"],
                      f"{title}, supervised (labels)": runs["supervised"]["accuracy"]}
    objective_md = markdown_table(objective_rows, tasks, label="objective")
    fraction_rows, gains = {}, {}
    for f in fractions:
        r = runs["entropy"] if f == 1.0 else runs[f"fraction {f:g}"]
        label = f"{f * 100:g} % of the test images"
        fraction_rows[label] = r["accuracy"]
        gains[label] = r["average"] - ta
    fraction_md = markdown_table(fraction_rows, tasks, label="adaptation data")
    curves = {"entropy": trajectory(runs["entropy"]), "supervised (oracle)": trajectory(runs["supervised"])}
    _plot_trajectory(curves, ctx.folder / "trajectory.png", ctx.model, title)
    steps = sorted({s for c in curves.values() for s, _ in c})
    paper = paper_tables()["official_logs_ViT-B-32_layerwise_avg_trajectory"]
    traj_rows = {label: {str(s): a for s, a in c} for label, c in curves.items()}
    if any(int(k) in steps for k in paper):
        traj_rows["authors' log, layer-wise, ViT-B/32"] = {k: v for k, v in paper.items() if int(k) in steps}
    traj_md = markdown_table(traj_rows, [str(s) for s in steps], average=False, label="step")

    paper_note = (f"Paper (ViT-B/32, layer-wise): supervised {PAPER_ABLATIONS['supervised']} vs entropy {PAPER_ABLATIONS['entropy']}; "
                  f"with 0.1 % of the test data AdaMerging still beats Task Arithmetic by {PAPER_ABLATIONS['gain_over_ta_at_0.1_percent']} points.")
    md = _header(ctx, f"Ablations of {title}", started) + [
        "## Objective: entropy (unlabeled, AdaMerging) vs cross-entropy with the test labels (oracle)", "", objective_md, "",
        f"Supervised minus entropy: {runs['supervised']['average'] - runs['entropy']['average']:+.1f} points "
        f"(paper, ViT-B/32: {PAPER_ABLATIONS['supervised'] - PAPER_ABLATIONS['entropy']:+.1f}).", "",
        "## Fraction of each task's test images the adaptation may draw from (evaluation: all of them)", "", fraction_md, "",
        "Average minus Task Arithmetic: " + "; ".join(f"{k}: {v:+.1f}" for k, v in gains.items()) + ". "
        "A fraction f of a task's N test images is max(1, round(f N)) images, drawn once (seeded); each step still "
        "draws its batches from them.", "",
        f"## Average accuracy along the steps (evaluated every {eval_every})", "", traj_md, "", "![trajectory](trajectory.png)", "", paper_note]
    _write_text(ctx.folder / "ablations.md", "\n".join(md) + "\n")
    out = {**_meta(ctx, started), "method": method, "tasks": tasks, "task_arithmetic_average": ta,
           "objective": {k: runs[k]["average"] for k in ("entropy", "supervised")},
           "fractions": {f"{f:g}": (runs["entropy"] if f == 1.0 else runs[f"fraction {f:g}"])["average"] for f in fractions},
           "gain_over_ta": gains, "trajectory": curves, "paper": PAPER_ABLATIONS,
           "paper_trajectory_ViT-B-32": paper}
    write_json(out, ctx.folder / "ablations.json")
    print("\n\n".join([objective_md, fraction_md, traj_md]))
    print(f"wrote {ctx.folder / 'ablations'}.md, .json, trajectory.png")
    return out


# ---------------------------------------------------------------------------------------------- command line


EXPERIMENTS: dict[str, Callable[[Context], dict]] = {
    "main-table": main_table, "published": published, "entropy-loss": entropy_loss, "coefficients": coefficients,
    "generalization": generalization, "robustness": robustness, "ablations": ablations,
}


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _choices(text: str, allowed, what: str) -> list[str]:
    names = _names(text)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; expected some of {', '.join(allowed)}")
    return names


def _methods(text: str) -> list[str]:
    return _choices(text, METHODS, "method")


def _corruptions(text: str) -> list[str]:
    return _choices(text, CORRUPTIONS, "corruption")


def _fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated numbers expected, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def build_parser(experiment: str) -> argparse.ArgumentParser:
    """The experiment's own flags; every other flag is forwarded to the pipeline (allow_abbrev off, so
    a pipeline flag is never mistaken for a prefix of one of these)."""
    p = argparse.ArgumentParser(prog=f"python -m adamerging.experiments {experiment}", allow_abbrev=False,
                                description=(EXPERIMENTS[experiment].__doc__ or "").strip() if experiment in EXPERIMENTS else "every experiment",
                                epilog="Every other flag goes to each method run: python -m adamerging task_arithmetic --help lists them.")
    p.add_argument("--skip-existing", action="store_true", help="reuse a method run's JSON when it exists with the same tasks and settings")
    if experiment in ("main-table", "generalization", "robustness", "all"):
        p.add_argument("--methods", type=_methods, default=None, help="comma-separated methods instead of the experiment's default set")
    if experiment in ("entropy-loss", "all"):
        p.add_argument("--samples", type=int, default=0, help="entropy-loss: labeled test samples per task (seeded subset; 0 = all)")
    if experiment in ("coefficients", "ablations", "all"):
        p.add_argument("--method", default="layer_wise_adamerging", choices=list(ADAPTIVE),
                       help="the layer-wise method analysed (coefficients) or ablated (ablations)")
    if experiment in ("coefficients", "all"):
        p.add_argument("--source", default=None, help="coefficients: a layer-wise results/coefficients JSON, or 'published' "
                                                      "(default: results/<model>/<method>.json)")
        p.add_argument("--no-cosine", action="store_true", help="coefficients: skip the task-vector cosine matrix (needs the checkpoints)")
    if experiment in ("robustness", "all"):
        p.add_argument("--corruptions", type=_corruptions, default=None, help=f"comma-separated subset of {', '.join(CORRUPTIONS)}")
        p.add_argument("--no-clean", action="store_true", help="robustness: skip the uncorrupted reference runs")
    if experiment in ("ablations", "all"):
        p.add_argument("--fractions", type=_fractions, default=[0.001, 0.01, 0.05, 1.0], help="ablations: adaptation-data fractions")
    return p


def parse(argv: Sequence[str]) -> Context:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    if not argv or argv[0] not in [*EXPERIMENTS, "all"]:
        raise SystemExit(f"usage: python -m adamerging.experiments {{{','.join([*EXPERIMENTS, 'all'])}}} [flags]  (--help for details)")
    experiment, rest = argv[0], list(argv[1:])
    options, passthrough = build_parser(experiment).parse_known_args(rest)
    base = pipeline.build_parser(METHODS["task_arithmetic"]).parse_args(passthrough)   # rejects unknown flags early
    return Context(experiment, options, passthrough, base)


def run_all(ctx: Context) -> dict:
    """Every experiment in turn; published only where the authors published tables for this model."""
    out = {}
    for name, fn in EXPERIMENTS.items():
        sub = Context(name, ctx.options, ctx.passthrough, ctx.base)
        if name == "published":
            try:
                published_table(METHODS[PUBLISHED_METHODS[0]].published, ctx.model)
            except ValueError as e:
                print(f"== published: skipped ({e})")
                continue
        if name == "coefficients" and ctx.options.source is None and not (ctx.folder / f"{ctx.options.method}.json").is_file():
            print(f"== coefficients: skipped (no {ctx.options.method} result)")
            continue
        print(f"\n######## {name}", flush=True)
        out[name] = fn(sub)
    return out


def run(argv: Sequence[str]) -> dict:
    """Parse, run one experiment (or all), return what it wrote (JSON-ready)."""
    ctx = parse(argv)
    return run_all(ctx) if ctx.experiment == "all" else EXPERIMENTS[ctx.experiment](ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """User mistakes print one line and exit 2, as the method scripts do."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except (FileNotFoundError, CheckpointError, ds.DatasetError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
