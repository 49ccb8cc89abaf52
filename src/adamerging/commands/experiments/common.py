"""What every experiment shares: its invocation (`Context`), running a method on a derived config
with reuse by config equality, and writing its tables and notes beside the paper's numbers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamerging.commands import pipeline
from adamerging.datasets.tasks import PAPER_TASKS, paper_size_mismatch, paper_size_text
from adamerging.methods.registry import METHODS
from adamerging.reporting.paper import paper_row, paper_tables, with_paper
from adamerging.reporting.results import package_versions
from adamerging.reporting.tables import (
    INDIVIDUAL,
    NORMALIZED,
    NORMALIZED_TEXT,
    csv_table,
    markdown_table,
    row_average,
    with_normalized,
)
from adamerging.run.config import RunConfig
from adamerging.run.tasks import parse_tasks
from adamerging.runtime.files import atomic_write

MAIN_METHODS = list(METHODS)  # paper row order


PUBLISHED_METHODS = [name for name in MAIN_METHODS if METHODS[name].published]


ADAPTIVE = ("layer_wise_adamerging", "layer_wise_adamergingpp")


# generalization and robustness rows
COMPARED = ("task_arithmetic", "ties_merging", *ADAPTIVE)


# Settings that never change a run's numbers: a saved run made with other values of these is reused.
NOT_RESULTS = (
    "overwrite",
    "no_progress",
    "cache_dir",
    "resume",
    "save_every",
    "results_dir",
    "run_dir",
    "tensorboard",
)


@dataclass
class Context:
    """One experiment invocation: its own flags, the run configuration every method run derives
    from, the forwarded flags."""

    experiment: str
    options: argparse.Namespace
    base: RunConfig  # the forwarded pipeline flags, parsed (defaults filled)
    passthrough: list[str]  # the forwarded flags as typed (the reports quote the command)

    @property
    def model(self) -> str:
        return self.base.model

    @property
    def folder(self) -> Path:
        """results/<model>: where the experiment's own files go."""
        return Path(self.base.results_dir) / self.base.model

    def tasks(self) -> list[str]:
        """The merged tasks: --tasks, or <checkpoints>/<model>/tasks.txt, or the paper's 8."""
        return parse_tasks(self.base.tasks, Path(self.base.checkpoints) / self.base.model)

    def runs(self, *parts: str) -> str:
        """results/<model>/runs/<experiment>/<parts>: the folder (run_dir) of a variant's method
        runs."""
        return str(self.folder.joinpath("runs", self.experiment, *parts))


def same_run(saved: Mapping[str, Any], config: RunConfig) -> bool:
    """Whether a saved result was made with `config` (equal configs, up to the settings in
    NOT_RESULTS)."""
    try:
        made = RunConfig(**saved.get("config", {}))
    # a result of an older layout, or a setting this version rejects
    except (TypeError, ValueError):
        return False
    ignore = {name: getattr(config, name) for name in NOT_RESULTS}
    return dataclasses.replace(made, **ignore) == config


def run_method(ctx: Context, method: str, run_dir: str | None = None, **changes: Any) -> dict:
    """One pipeline run on the context's config with `changes` (RunConfig fields); returns its
    results dict.

    The run writes <run_dir>/<name>.json and <name>.state.pt (default: <results-dir>/<model>/,
    replacing the method's main result); variants pass their own folder (`ctx.runs(...)`) so they
    never replace each other. With --skip-existing a saved result made with the same config is read
    instead. The returned dict carries the result file as "path".
    """
    config = dataclasses.replace(
        ctx.base, overwrite=True, **changes, **({"run_dir": run_dir} if run_dir else {})
    )
    target = config.output_dir / f"{METHODS[method].result_name(config)}.json"
    if ctx.options.skip_existing and target.is_file():
        saved = json.loads(target.read_text())
        if same_run(saved, config):
            print(f"== {method}: reusing {target}")
            return {**saved, "path": str(target)}
    shown = " ".join(f"{k}={v}" for k, v in changes.items())
    print(f"== {method}" + (f" {shown}" if shown else ""), flush=True)
    return {**pipeline.run(method, config), "path": str(target)}


def write_text(path: Path, text: str) -> None:
    """Write a report file atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def header(
    ctx: Context, title: str, started: float, tasks: Sequence[str] | None = None
) -> list[str]:
    """The first lines of an experiment's markdown: title, command, tasks, wall time."""
    return [
        f"# {title}: `{ctx.model}`",
        "",
        "Command: `"
        + " ".join(["python -m adamerging experiments", ctx.experiment, *ctx.passthrough])
        + "`  ",
        (
            f"Tasks: {', '.join(tasks or ctx.tasks())}. Wall time"
            f" {time.perf_counter() - started:.0f} s. Accuracy (%) on each task's full test split."
        ),
        "",
    ]


def meta(ctx: Context, started: float) -> dict:
    """The provenance fields of an experiment's JSON."""
    return {
        "experiment": ctx.experiment,
        "model": ctx.model,
        "argv": ctx.passthrough,
        "options": vars(ctx.options),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
    }


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values."""
    return sum(values) / len(values) if values else None


# the format `hashing.checkpoint_format` gives the task-vectors pickles the paper used
TASK_VECTORS_FORMAT = "module src.modeling.ImageEncoder"
PAPER, FUSIONBENCH = "paper", "FusionBench"


def reference(results: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, str]:
    """Which published numbers these runs are like for like with: PAPER (task-vectors experts,
    the paper's full test sets), FUSIONBENCH (Hugging Face experts, FusionBench's copies, full
    test sets), or None; and a sentence saying why."""
    first = next(iter(results.values()))
    short = [
        f"{t} {r['n_images']} of {paper_size_text(t)}"
        for t, r in first.get("test_data", {}).items()
        if paper_size_mismatch(t, r.get("n_images", 0))
    ]
    if short:
        return None, f"the test sets are not the paper's ({', '.join(short)} images)"
    config = first.get("config", {})
    if config.get("finetuned") or config.get("task"):
        return None, "the experts are your own (--finetuned / --task), not the paper's"
    formats = {r.get("format", "") for r in first["provenance"]["files"]["finetuned"].values()}
    if all(TASK_VECTORS_FORMAT in f for f in formats):
        return PAPER, ""
    if all(f.startswith("hf") or "Hugging Face" in f for f in formats):
        return FUSIONBENCH, (
            "the experts are Hugging Face copies (FusionBench's), not the paper's task-vectors"
            " checkpoints; the `(paper)` rows are FusionBench's published averages"
        )
    return None, f"the experts are not the paper's task-vectors checkpoints ({', '.join(formats)})"


def comparison(
    model: str,
    ours: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    against: str | None = PAPER,
) -> tuple[dict, set[str]]:
    """Our rows with the reference row (`against`: the paper's, or FusionBench's averages) and the
    difference beside each, where it reports `model`; our rows alone for None."""
    if against == FUSIONBENCH and set(tasks) != set(PAPER_TASKS):
        theirs = {}  # FusionBench publishes 8-task averages only
    elif against == FUSIONBENCH:
        published = paper_tables()["fusionbench_hf_checkpoints_avg"].get(model, {})
        theirs = {t: {"Avg": published[t]} if t in published else None for t in ours}
    elif against == PAPER:
        theirs = {title: paper_row(model, title, tasks) for title in ours}
    else:
        theirs = {}
    return with_paper(ours, theirs, tasks)


def ordering_table(ours: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> str:
    """For a model the paper does not report: our averages beside the paper's, to compare the
    methods' order."""
    columns = ["ours"] + [f"paper {m}" for m in ("ViT-B-32", "ViT-L-14")]
    rows = {}
    for title, accs in ours.items():
        row = {"ours": row_average(accs, tasks) if accs is not None else None}
        for m in ("ViT-B-32", "ViT-L-14"):
            paper = paper_row(m, title)
            row[f"paper {m}"] = paper.get("Avg") if paper else None
        rows[title] = row
    return markdown_table(rows, columns, average=False, label="method (average %)")


def _paper_lines(
    model: str, ours: Mapping[str, Mapping[str, float] | None], tasks: Sequence[str], quoted: bool
) -> list[str]:
    """The markdown lines on the paper's numbers: what the quoted rows are, or its averages."""
    if quoted and not set(tasks) <= set(PAPER_TASKS):
        return [
            (
                f"`(paper)`: the {len(tasks)}-task averages Marczak et al. report (Iso-CTS, arXiv"
                " 2502.04959, Table 1) on TALL masks' experts (EMNIST: digits), for orientation;"
                " `(ours - paper)`: our value minus theirs, in points."
            ),
            "",
        ]
    if quoted:
        return [
            (
                f"`(paper)`: the paper's Table {'2' if model == 'ViT-B-32' else '3'} for"
                f" {model} (`Pretrained` = our Zero-shot); `(ours - paper)`: our value minus"
                " the paper's, in points."
            ),
            "",
        ]
    return [
        (
            f"The paper reports no {model} results; its averages for the same methods, to"
            " compare the methods' order:"
        ),
        "",
        ordering_table(ours, tasks),
        "",
    ]


def write_table(
    ctx: Context,
    stem: str,
    title: str,
    ours: Mapping[str, Mapping[str, float] | None],
    tasks: Sequence[str],
    started: float,
    notes: Sequence[str] = (),
    individual: Mapping[str, float] | None = None,
    results: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """results/<model>/<stem>.{md,csv}: our rows, with the paper's and the differences where it
    reports the model and the runs (`results`, by method) are like for like with it (`reference`:
    the paper's experts and test sets; FusionBench's averages for its Hugging Face experts);
    elsewhere a line says why there are none.

    A None row is quoted from the paper only. Where the individual experts' accuracies on the same
    test data are known (our Individual row, or `individual`), every row gets its normalized
    accuracy too (the paper's rows by the paper's Individual row).
    """
    if stem in METHODS:
        raise ValueError(f"an experiment's table may not be named {stem!r}: a method's result is")
    against, why = reference(results) if results else (PAPER, "")
    rows, signed = comparison(ctx.model, ours, tasks, against)
    individual = individual or ours.get(INDIVIDUAL)
    per_task: dict = {}
    if individual:
        paper_individual = paper_row(ctx.model, INDIVIDUAL, tasks)
        references = {
            **{t: individual for t in ours if ours[t] is not None},
            **{f"{t} (paper)": paper_individual for t in ours},
        }
        rows, per_task = with_normalized(rows, tasks, references)
    extra = [NORMALIZED] if per_task else []
    table = markdown_table(rows, tasks, signed=signed, extra=extra)
    md = header(ctx, title, started) + [table, ""]
    if against == PAPER or paper_row(ctx.model, INDIVIDUAL) is None:
        md += _paper_lines(ctx.model, ours, tasks, bool(signed))
    else:
        md += [f"Not compared with the paper's rows: {why}.", ""]
    if per_task:
        md += [
            NORMALIZED_TEXT,
            "",
            markdown_table(per_task, tasks, label="normalized accuracy (%)"),
            "",
        ]
    md += list(notes)
    write_text(ctx.folder / f"{stem}.md", "\n".join(md).rstrip() + "\n")
    write_text(ctx.folder / f"{stem}.csv", csv_table(rows, tasks, extra=extra))
    print(table)
    print(f"wrote {ctx.folder / stem}.md, .csv")
    return table
