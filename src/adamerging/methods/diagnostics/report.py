"""The diagnostics report: the JSON-ready dict, the printed verdict, diagnostics.md, and writing
them with the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from adamerging.methods.diagnostics.checks import Check, Thresholds, justification
from adamerging.methods.diagnostics.measure import Outcome
from adamerging.methods.diagnostics.plots import plot_report
from adamerging.reporting.paper import paper_row
from adamerging.reporting.results import package_versions, results_path
from adamerging.reporting.tables import fmt
from adamerging.run.config import RunConfig
from adamerging.runtime.files import atomic_write, write_json


def _r(x: float | None, digits: int = 5) -> float | None:
    """Rounded for the JSON; None for a missing or NaN value."""
    return None if x is None or x != x else round(float(x), digits)


def _percent(share: float | None) -> str:
    """A share as a whole percentage ("42 %"), "-" when undefined."""
    return "-" if share is None else f"{fmt(share * 100, '.0f')} %"


def _check_records(checks: Mapping[str, list[Check]]) -> dict:
    """Per task and check: whether it passed, its message and its rounded values."""
    return {
        t: {
            c.name: {
                "passed": c.passed,
                "message": c.message,
                **{k: _r(v) for k, v in c.values.items()},
            }
            for c in checks[t]
        }
        for t in checks
    }


def _cross_task_record(outcomes: Mapping[str, Mapping[str, Outcome]], tasks: Sequence[str]) -> dict:
    """Per task: mean entropy and accuracy of its vector alone and of the merged model."""
    merged_out, alone = outcomes["merged"], outcomes["alone"]
    return {
        t: {
            "entropy_alone": _r(alone[t].mean_entropy),
            "entropy_merged": _r(merged_out[t].mean_entropy),
            "accuracy_alone": _r(alone[t].accuracy, 2),
            "accuracy_merged": _r(merged_out[t].accuracy, 2),
        }
        for t in tasks
    }


def _reference_record(
    outcomes: Mapping[str, Mapping[str, Outcome]],
    retained_gain: Mapping[str, float | None],
    tasks: Sequence[str],
) -> dict:
    """Per kind of model, each task's accuracy; and the share of the expert's gain TA keeps."""
    return {
        **{
            kind: {t: _r(outcomes[kind][t].accuracy, 2) for t in tasks}
            for kind in ("zeroshot", "alone", "merged", "expert")
        },
        "retained_gain": {t: _r(retained_gain[t], 3) for t in tasks},
    }


def _sweep_record(
    sweep: Mapping[str, Sequence[Outcome]], lambdas: Sequence[float], tasks: Sequence[str]
) -> dict:
    """The lambdas, and per task the mean entropy and accuracy at each."""
    return {
        "lambdas": list(lambdas),
        "entropy": {t: [_r(o.mean_entropy) for o in sweep[t]] for t in tasks},
        "accuracy": {t: [_r(o.accuracy, 2) for o in sweep[t]] for t in tasks},
    }


def _per_sample_record(merged_out: Mapping[str, Outcome], tasks: Sequence[str]) -> dict:
    """Per task: the merged model's entropy and loss on each sample."""
    return {
        t: {
            "entropy": [_r(x) for x in merged_out[t].entropy.tolist()],
            "loss": [_r(x) for x in merged_out[t].loss.tolist()],
        }
        for t in tasks
    }


def build_report(
    model: str,
    config: RunConfig,
    vectors: str,
    lam: float,
    lambdas: Sequence[float],
    n: Mapping[str, int],
    outcomes: Mapping[str, Mapping[str, Outcome]],
    sweep: Mapping[str, Sequence[Outcome]],
    checks: Mapping[str, list[Check]],
    pooled: Check,
    judged: tuple[dict[str, str], str, bool],
    stats: dict,
    retained_gain: Mapping[str, float | None],
    th: Thresholds,
    timings: dict[str, float],
) -> dict:
    """The report (JSON-ready): verdict, checks, Spearman, cross-task effect, lambda sweep, task
    vectors, reference accuracies (`outcomes`: "merged", "alone", "expert", "zeroshot" -> task ->
    Outcome) and per-sample values."""
    tasks = list(checks)
    lines, overall, ok = judged
    label = "Task Arithmetic" if vectors == "plain" else "TIES-selected vectors"
    return {
        "model": model,
        "tasks": tasks,
        "vectors": vectors,
        "merged_model": f"{label}, theta_0 + {lam:g} sum_t tau_t",
        "samples": dict(n),
        "seed": config.seed,
        "lam": lam,
        "lambdas": list(lambdas),
        "thresholds": {**asdict(th), "why": justification(th)},
        "verdict": {"trustworthy": ok, "overall": overall, "per_task": lines},
        "checks": _check_records(checks),
        "spearman": {
            "per_task": {t: _r(checks[t][0].values["spearman"]) for t in tasks},
            "pooled": _r(pooled.values["spearman"]),
            "pooled_passed": pooled.passed,
        },
        "cross_task": _cross_task_record(outcomes, tasks),
        "lambda_sweep": _sweep_record(sweep, lambdas, tasks),
        "task_vectors": {
            **{k: v for k, v in stats.items() if k != "cosine"},
            "cosine": [[_r(c, 4) for c in row] for row in stats["cosine"]],
        },
        "reference_accuracy": _reference_record(outcomes, retained_gain, tasks),
        "per_sample": _per_sample_record(outcomes["merged"], tasks),
        "config": config.to_json(),
        "versions": package_versions(),
        "timings_s": timings,
    }


def summary(report: dict) -> str:
    """The printed verdict: one line per task, the overall line, and the headline numbers."""
    tasks, sizes = report["tasks"], sorted(set(report["samples"].values()))
    count = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    out = [
        f"Diagnostics ({report['merged_model']}; {count} labeled test samples per task):",
        (
            f"  pooled Spearman(entropy, loss) {fmt(report['spearman']['pooled'], '.2f')}"
            f" (threshold {report['thresholds']['spearman']:.2f})"
        ),
    ]
    for t in tasks:
        out.append("  " + report["verdict"]["per_task"][t])
    out.append(report["verdict"]["overall"])
    return "\n".join(out)


def _mark(ok: bool) -> str:
    """A check's cell in the passes column."""
    return "yes" if ok else "**no**"


def _head_lines(report: dict) -> list[str]:
    """The markdown lines of the title, the sample, the verdict and the thresholds."""
    tasks = report["tasks"]
    md = [
        f"# Will entropy minimisation (AdaMerging) help? Diagnostics for `{report['model']}`",
        "",
        f"Merged model: {report['merged_model']}. Labeled, seeded sample of each task's test split "
        "("
        + ", ".join(f"{t} {report['samples'][t]}" for t in tasks)
        + f"; seed {report['seed']}).",
        "",
        f"**{report['verdict']['overall']}**",
        "",
    ]
    md += [f"- {report['verdict']['per_task'][t]}" for t in tasks]
    why = report["thresholds"]["why"]
    return md + ["", "## Thresholds and why", ""] + [f"- **{k}**: {v}" for k, v in why.items()]


def _spearman_lines(report: dict, plots: dict[str, str]) -> list[str]:
    """The markdown lines of section 1: Spearman(entropy, loss) per task and pooled."""
    tasks, checks = report["tasks"], report["checks"]
    md = [
        "",
        f"## 1. Entropy vs cross-entropy of the merged model (lambda {report['lam']:g})",
        "",
        "| task | Spearman | passes |",
        "|---|---|---|",
    ]
    md += [
        f"| {t} | {fmt(report['spearman']['per_task'][t], '.2f')} |"
        f" {_mark(checks[t]['spearman']['passed'])} |"
        for t in tasks
    ]
    return md + [
        (
            f"| pooled | {fmt(report['spearman']['pooled'], '.2f')} |"
            f" {_mark(report['spearman']['pooled_passed'])} |"
        ),
        "",
        f"![entropy vs loss]({plots['entropy_vs_loss']})",
    ]


def _cross_task_lines(report: dict, plots: dict[str, str]) -> list[str]:
    """The markdown lines of section 2: entropy and accuracy, alone vs merged."""
    tasks, checks, ct = report["tasks"], report["checks"], report["cross_task"]
    md = [
        "",
        (
            f"## 2. Cross-task entropy effect (theta_0 + {report['lam']:g} tau_t vs +"
            f" {report['lam']:g} sum_s tau_s)"
        ),
        "",
        "| task | entropy alone | entropy merged | accuracy alone | accuracy merged | passes |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {t} | {ct[t]['entropy_alone']:.3f} | {ct[t]['entropy_merged']:.3f} |"
        f" {ct[t]['accuracy_alone']:.1f} | {ct[t]['accuracy_merged']:.1f} |"
        f" {_mark(checks[t]['cross_task']['passed'])} |"
        for t in tasks
    ]
    return md + ["", f"![cross-task effect]({plots['cross_task']})"]


def _lambda_lines(report: dict, plots: dict[str, str]) -> list[str]:
    """The markdown lines of section 3: entropy and accuracy along lambda."""
    tasks, checks = report["tasks"], report["checks"]
    md = [
        "",
        "## 3. Entropy and accuracy along the Task Arithmetic coefficient",
        "",
        "| task | lambda at min entropy | lambda at max accuracy | best within noise | passes |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {t} | {checks[t]['lambda']['lambda_min_entropy']:.2f} |"
        f" {checks[t]['lambda']['lambda_max_accuracy']:.2f} |"
        f" {checks[t]['lambda']['best_low']:.2f}-{checks[t]['lambda']['best_high']:.2f} |"
        f" {_mark(checks[t]['lambda']['passed'])} |"
        for t in tasks
    ]
    sw = report["lambda_sweep"]
    md += [
        "",
        "Mean entropy / accuracy (%) per lambda:",
        "",
        "| task | " + " | ".join(f"{lam:g}" for lam in sw["lambdas"]) + " |",
        "|---|" + "---|" * len(sw["lambdas"]),
    ]
    md += [
        f"| {t} | "
        + " | ".join(f"{h:.3f} / {a:.1f}" for h, a in zip(sw["entropy"][t], sw["accuracy"][t]))
        + " |"
        for t in tasks
    ]
    return md + ["", f"![lambda sweep]({plots['lambda_sweep']})"]


def _task_vector_lines(report: dict) -> list[str]:
    """The markdown lines of section 4's norms and reference accuracies, beside the paper's."""
    tasks, tv, ref = report["tasks"], report["task_vectors"], report["reference_accuracy"]
    md = [
        "",
        "## 4. Task vectors (visual entries) and reference accuracies",
        "",
        (
            f"|theta_0| = {tv['theta0_norm']:.2f}; mean pairwise cosine"
            f" {fmt(tv['mean_pairwise_cosine'], '.3f')} (the mini trials measured |tau|/|theta_0|"
            " 0.03-0.06 and cosines 0.02-0.03, like real CLIP: near-orthogonal vectors do not by"
            " themselves make entropy trustworthy)."
        ),
        "",
        (
            "| task | \\|tau\\|/\\|theta_0\\| | zero-shot | alone | merged | expert | TA keeps of"
            " the expert's gain |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {t} | {tv['norm_ratio'][t]:.4f} | {ref['zeroshot'][t]:.1f} | {ref['alone'][t]:.1f} |"
        f" {ref['merged'][t]:.1f} | {ref['expert'][t]:.1f} | "
        f"{_percent(ref['retained_gain'][t])} |"
        for t in tasks
    ]
    if report["vectors"] != "plain":
        md += [
            "",
            "(Expert here: theta_0 + its TIES-selected task vector, as AdaMerging++ uses them.)",
        ]
    ta, zeroshot, individual = (
        paper_row("ViT-B-32", title)["Avg"]
        for title in ("Task Arithmetic", "Zero-shot", "Individual")
    )
    return md + [
        "",
        (
            "(Paper, ViT-B/32: TA keeps about"
            f" {100 * (ta - zeroshot) / (individual - zeroshot):.0f} % of the experts' gain over"
            f" zero-shot: ({ta:.1f} - {zeroshot:.1f}) / ({individual:.1f} - {zeroshot:.1f}).)"
        ),
    ]


def _cosine_lines(report: dict, plots: dict[str, str]) -> list[str]:
    """The markdown lines of the task vectors' pairwise cosine table and plot."""
    tasks, tv = report["tasks"], report["task_vectors"]
    md = [
        "",
        "Pairwise cosine of the task vectors:",
        "",
        "| | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    md += [
        f"| {t} | " + " | ".join(fmt(c, ".3f") for c in row) + " |"
        for t, row in zip(tasks, tv["cosine"])
    ]
    return md + ["", f"![task vectors]({plots['task_vectors']})"]


def markdown(report: dict, plots: dict[str, str]) -> str:
    """diagnostics.md: the verdict, the thresholds and why, one section per check with its table and
    plot."""
    md = _head_lines(report)
    md += _spearman_lines(report, plots)
    md += _cross_task_lines(report, plots)
    md += _lambda_lines(report, plots)
    md += _task_vector_lines(report)
    md += _cosine_lines(report, plots)
    md += [
        "",
        f"Wall time {report['timings_s']['diagnostics']:.1f} s. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".",
    ]
    return "\n".join(md) + "\n"


def write_report(report: dict, folder: Path, overwrite: bool = False) -> list[Path]:
    """<folder>/diagnostics.json, .md and <stem>_*.png (beside, time-stamped, if one exists and not
    overwrite).

    `folder`: the run's output folder (`RunConfig.output_dir`: results/<model>, or --run-dir).
    """
    name = "diagnostics" if report["vectors"] == "plain" else f"diagnostics_{report['vectors']}"
    path = results_path(Path(folder), name, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_report(report, path.parent, path.stem)
    report["plots"] = plots
    write_json(report, path)
    md = path.with_suffix(".md")
    with atomic_write(md, "w") as f:
        f.write(markdown(report, plots))
    return [path, md, *(path.parent / p for p in plots.values())]
