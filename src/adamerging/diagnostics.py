"""Will entropy minimisation (AdaMerging) help on these models? Cheap checks before a long run.

AdaMerging bets that the entropy of the merged model's predictions on unlabeled data tracks its
loss. The paper shows it for CLIP ViT-B/32 (Spearman 0.87), but it does not hold for every model
family: on tiny CLIP-like models the other tasks' vectors LOWERED a task's entropy while cutting its
accuracy, and entropy kept falling past the best-accuracy coefficient, so AdaMerging made things
worse. On a small labeled, seeded sample of each task's test split this module measures:

1. Spearman(entropy, cross-entropy) per sample, per task and pooled, for the TA-merged model;
2. the cross-task effect: theta_0 + lam tau_t versus theta_0 + lam sum_s tau_s on task t;
3. entropy and accuracy along the TA coefficient lambda;
4. task-vector statistics (|tau_t| / |theta_0| over the visual entries, pairwise cosines);
5. a verdict per task and overall.

The checks (`check_correlation`, `check_cross_task`, `check_lambda_alignment`) are plain functions
over tensors and numbers, so tests can feed cases whose answer is known by construction. The
measurement (`run_diagnostics`) reuses the library's merged encoder, prediction and accuracy.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from .adaptation import MergedEncoder, TaskData, softmax_entropy
from .checkpoints import atomic_write
from .evaluation import Normalizer, accuracy, predict
from .merging import TaskVectors
from .models import VISUAL_PREFIX
from .reporting import package_versions, results_path, write_json

if TYPE_CHECKING:  # pipeline imports this module (the --diagnose hook): no import cycle at runtime
    from .pipeline import Problem

DEFAULT_SAMPLES = 256
DEFAULT_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))
TRUSTWORTHY = "entropy is a trustworthy surrogate here"


# ---------------------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    spearman: float = 0.8       # per task and pooled
    lambda_slack: float = 0.2   # max |lambda(min entropy) - lambda(max accuracy)|


# Why these thresholds (written into diagnostics.md and .json, so a reader can judge them).
JUSTIFICATION = {
    "spearman": (
        "Spearman(entropy, cross-entropy) >= {spearman:.2f} per task and pooled. The paper reports 0.87 for the merged "
        "ViT-B/32, where entropy minimisation gains 11 points over Task Arithmetic (69.1 -> 80.1). At the default 256 "
        "samples the standard error of a rank correlation near 0.87 is about (1 - 0.87^2) / sqrt(256) = 0.015, so "
        "{spearman:.2f} is well below the paper's regime, not sampling noise. In the mini-benchmark trials where AdaMerging "
        "lost to Task Arithmetic, the pooled value was 0.37-0.76 and as few as 1 of 8 tasks reached 0.8; where it gained, "
        "the tasks had 0.73-0.97."),
    "cross_task": (
        "Adding the other tasks' vectors (theta_0 + lam tau_t -> theta_0 + lam sum_s tau_s) must move task t's entropy "
        "opposite to its accuracy: when they cut its accuracy (interference; ViT-B/32 individual 90.5 vs TA 69.1 in the "
        "paper) they must RAISE its entropy, which is what lets entropy minimisation down-weight the interfering vectors; "
        "when its accuracy does not change beyond one binomial standard error they must still raise it. If they lower it, "
        "minimising entropy rewards the interference (seen on 7 of 8 tasks in the mini trials)."),
    "lambda": (
        "Along the TA curve theta_0 + lambda sum_t tau_t, the entropy-minimising lambda must lie within {lambda_slack:.2f} "
        "of the accuracy-maximising one (lambdas whose accuracy is within one binomial standard error of the best count "
        "as best). On ViT-B/32, TA's lambda = 0.3 is near the accuracy optimum and the authors' task-wise AdaMerging "
        "moved the coefficients from 0.3 only to 0.14-0.40 (published table): entropy's optimum sits within about 0.2 of "
        "accuracy's. In the failing mini trial, accuracy peaked at lambda = 0.1 while entropy kept falling to 1.0."),
}


# ---------------------------------------------------------------------------------------------- checks


@dataclass
class Check:
    name: str               # "spearman", "cross_task" or "lambda"
    passed: bool
    message: str            # one line, with the measured values and the threshold
    values: dict[str, float | None]


def entropy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Shannon entropy of softmax(logits) and cross-entropy with the labels."""
    logits = logits.float()
    return softmax_entropy(logits), F.cross_entropy(logits, torch.as_tensor(labels), reduction="none")


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation; NaN when it is undefined (fewer than 3 values, or one side constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y)[0])


def accuracy_tolerance(accuracy_percent: float, n: int | None) -> float:
    """One binomial standard error of an accuracy measured on n samples, in points.

    Accuracy differences below it are sampling noise at this sample size; at 0 % or 100 % it is one sample.
    """
    if not n:
        return 0.0
    p = min(max(accuracy_percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def check_correlation(entropy: torch.Tensor | Sequence[float], loss: torch.Tensor | Sequence[float], threshold: float = Thresholds.spearman) -> Check:
    """Check 1: does the per-sample entropy rank the samples as their cross-entropy loss does?"""
    rho = spearman(entropy, loss)
    if rho != rho:
        return Check("spearman", False, "Spearman(entropy, loss) undefined (entropy or loss constant over the sample)", {"spearman": None, "threshold": threshold})
    passed = rho >= threshold
    return Check("spearman", passed, f"Spearman(entropy, loss) {rho:.2f} {'>=' if passed else '<'} {threshold:.2f}", {"spearman": rho, "threshold": threshold})


def check_cross_task(entropy_alone: float, entropy_merged: float, accuracy_alone: float, accuracy_merged: float, n: int | None = None) -> Check:
    """Check 2: do the other tasks' vectors move this task's entropy opposite to its accuracy?

    `alone`: theta_0 + lam tau_t; `merged`: theta_0 + lam sum_s tau_s; accuracies in %, n samples.
    """
    d_entropy, d_accuracy = entropy_merged - entropy_alone, accuracy_merged - accuracy_alone
    tol = accuracy_tolerance(accuracy_alone, n)
    if d_accuracy > tol:   # positive transfer: entropy should fall with it
        passed, effect = d_entropy < 0, f"raise its accuracy {accuracy_alone:.1f} -> {accuracy_merged:.1f}"
    else:                  # interference, or no change beyond noise: entropy must rise
        change = "cut its accuracy" if d_accuracy < -tol else "leave its accuracy unchanged within noise"
        passed, effect = d_entropy > 0, f"{change} {accuracy_alone:.1f} -> {accuracy_merged:.1f}"
    direction = "raise" if d_entropy > 0 else "lower" if d_entropy < 0 else "do not change"
    consequence = "entropy tracks accuracy" if passed else "minimising entropy would reward the wrong direction"
    message = f"the other tasks' vectors {direction} its entropy {entropy_alone:.4g} -> {entropy_merged:.4g} and {effect} ({consequence})"
    return Check("cross_task", passed, message, {
        "entropy_alone": entropy_alone, "entropy_merged": entropy_merged, "accuracy_alone": accuracy_alone,
        "accuracy_merged": accuracy_merged, "accuracy_tolerance": tol})


def check_lambda_alignment(lambdas: Sequence[float], entropy: Sequence[float], accuracy_curve: Sequence[float], n: int | None = None,
                           slack: float = Thresholds.lambda_slack) -> Check:
    """Check 3: along the TA coefficient, does the entropy minimum sit near the accuracy maximum?"""
    lam = np.asarray(lambdas, dtype=np.float64)
    h, acc = np.asarray(entropy, dtype=np.float64), np.asarray(accuracy_curve, dtype=np.float64)
    if not (len(lam) == len(h) == len(acc)) or len(lam) < 2:
        raise ValueError(f"need at least 2 lambdas with one entropy and one accuracy each; got {len(lam)}, {len(h)}, {len(acc)}")
    order = np.argsort(lam)
    lam, h, acc = lam[order], h[order], acc[order]
    lam_entropy = float(lam[int(np.argmin(h))])
    best = float(acc.max())
    tol = accuracy_tolerance(best, n)
    near_best = lam[acc >= best - tol]   # indistinguishable from the best at this sample size
    distance = float(np.min(np.abs(near_best - lam_entropy)))
    passed = distance <= slack + 1e-9
    lam_accuracy = float(lam[int(np.argmax(acc))])
    where = "past" if lam_entropy > near_best.max() else "before" if lam_entropy < near_best.min() else "at"
    note = " (entropy still falling at the end of the sweep)" if lam_entropy == lam[-1] and not passed else ""
    message = (f"entropy minimum at lambda {lam_entropy:.2f}, {where} the accuracy maximum at {lam_accuracy:.2f} "
               f"(best within noise: {near_best.min():.2f}-{near_best.max():.2f}); distance {distance:.2f} "
               f"{'<=' if passed else '>'} {slack:.2f}{note}")
    return Check("lambda", passed, message, {
        "lambda_min_entropy": lam_entropy, "lambda_max_accuracy": lam_accuracy, "best_low": float(near_best.min()),
        "best_high": float(near_best.max()), "distance": distance, "slack": slack, "accuracy_tolerance": tol})


def task_vector_stats(theta0: dict[str, torch.Tensor], tau: TaskVectors, keys: Sequence[str], tasks: Sequence[str]) -> dict:
    """|tau_t| / |theta_0| and pairwise cosines over the visual entries (the only ones merged into the forward)."""
    visual = [k for k in keys if k.startswith(VISUAL_PREFIX) and k in tau]
    if not visual:
        raise ValueError("no visual entries with a task vector")
    T = len(tasks)
    gram = torch.zeros(T, T, dtype=torch.float64)
    base = 0.0
    for k in visual:   # accumulate entry by entry: never one flattened copy of the whole model
        t = tau[k].reshape(T, -1).double()
        gram += t @ t.T
        base += float(theta0[k].double().pow(2).sum())
    norms = gram.diag().clamp_min(0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
    off = cosine[~torch.eye(T, dtype=torch.bool)]
    theta0_norm = math.sqrt(base)
    return {
        "theta0_norm": theta0_norm,
        "tau_norm": {t: float(norms[i]) for i, t in enumerate(tasks)},
        "norm_ratio": {t: float(norms[i]) / theta0_norm for i, t in enumerate(tasks)},
        "cosine": cosine.tolist(),
        "mean_pairwise_cosine": float(off.mean()) if len(off) else None,
    }


def verdict(task_checks: dict[str, list[Check]], pooled: Check | None = None) -> tuple[dict[str, str], str, bool]:
    """One line per task and one overall: trustworthy iff every check of every task (and pooled) passes."""
    lines, failed_tasks = {}, []
    for task, checks in task_checks.items():
        failed = [c for c in checks if not c.passed]
        if failed:
            failed_tasks.append(task)
            lines[task] = f"{task}: entropy is NOT a trustworthy surrogate: " + "; ".join(f"{c.name} failed: {c.message}" for c in failed)
        else:
            lines[task] = f"{task}: {TRUSTWORTHY} ({len(checks)} of {len(checks)} checks pass)"
    pooled_failed = pooled is not None and not pooled.passed
    ok = not failed_tasks and not pooled_failed
    if ok:
        overall = f"Overall: {TRUSTWORTHY} (every check passes on all {len(task_checks)} tasks)"
    else:
        parts = []
        if failed_tasks:
            parts.append(f"fails on {len(failed_tasks)} of {len(task_checks)} tasks ({', '.join(failed_tasks)})")
        if pooled_failed:
            parts.append(f"pooled {pooled.message}")
        overall = ("Overall: entropy is NOT a trustworthy surrogate here: " + "; ".join(parts) +
                   ". Expect AdaMerging to lower those tasks' coefficients or accuracy; compare with Task Arithmetic / TIES "
                   "and the supervised oracle (--objective supervised) before trusting it.")
    return lines, overall, ok


# ---------------------------------------------------------------------------------------------- measurement


@dataclass
class Outcome:
    """One merged model evaluated on one task's labeled sample."""

    entropy: torch.Tensor   # per sample
    loss: torch.Tensor      # per-sample cross-entropy
    accuracy: float         # %

    @property
    def mean_entropy(self) -> float:
        return float(self.entropy.mean())


def sample_tasks(data: Sequence[TaskData], samples: int, seed: int) -> list[TaskData]:
    """A seeded subset of each task's test split, with labels (per task name, so it does not depend on the task list)."""
    out = []
    for t in data:
        if t.labels is None:
            raise ValueError(f"{t.name}: the diagnostics need the test labels")
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(t.name.encode()))
        n = len(t.images)
        index = torch.randperm(n, generator=generator)[:samples].sort().values if samples < n else torch.arange(n)
        out.append(TaskData(t.name, t.images[index], t.head, torch.as_tensor(t.labels)[index]))
    return out


class _Evaluator:
    """Outcome of a coefficient row on a task, memoised; keeps one merged encoder at a time (memory)."""

    def __init__(self, merged: MergedEncoder, sample: Sequence[TaskData], normalize: Normalizer, batch_size: int):
        self.merged, self.sample, self.normalize, self.batch_size = merged, sample, normalize, batch_size
        self.cache: dict[tuple, Outcome] = {}
        self._row: tuple | None = None
        self._encoder: Callable | None = None

    def __call__(self, task_coefficients: Sequence[float], task_index: int) -> Outcome:
        row = tuple(round(float(c), 9) for c in task_coefficients)
        if (row, task_index) not in self.cache:
            if row != self._row:
                self._encoder = None   # free the previous merged parameters first
                self._encoder = self.merged.encoder(torch.tensor([[1.0, *row]]))
                self._row = row
            t = self.sample[task_index]
            logits = predict(self._encoder, t.head, t.images, self.normalize, self.batch_size)
            entropy, loss = entropy_and_loss(logits, t.labels)
            self.cache[(row, task_index)] = Outcome(entropy, loss, accuracy(logits, t.labels))
        return self.cache[(row, task_index)]


@dataclass
class Settings:
    samples: int = DEFAULT_SAMPLES
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    lam: float = 0.3
    thresholds: Thresholds = Thresholds()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        # getattr: the AdaMerging scripts may add only --diagnose, and then the defaults apply
        def get(name: str, default):
            value = getattr(args, name, None)
            return default if value is None else value

        return cls(samples=int(get("diagnose_samples", DEFAULT_SAMPLES)), lambdas=tuple(get("diagnose_lambdas", DEFAULT_LAMBDAS)),
                   lam=float(get("lam", 0.3)),
                   thresholds=Thresholds(float(get("diagnose_spearman", Thresholds.spearman)), float(get("diagnose_lambda_slack", Thresholds.lambda_slack))))


def _r(x: float | None, digits: int = 5) -> float | None:
    return None if x is None or x != x else round(float(x), digits)


def run_diagnostics(problem: "Problem", args: argparse.Namespace, merged: MergedEncoder | None = None, vectors: str = "plain",
                    write: bool = False, timings: dict[str, float] | None = None) -> dict:
    """Measure the checks on a labeled sample, print the verdict, return the report (JSON-ready).

    The AdaMerging scripts' `--diagnose` calls this before adapting (pass their `merged` to share
    its device copies of theta_0 and tau); `src/diagnose.py` calls it with write=True, which writes
    results/<model>/diagnostics.{json,md} and the PNG plots.
    """
    settings = Settings.from_args(args)
    if len(problem.tasks) < 2:
        raise ValueError(f"diagnostics need at least 2 tasks (the cross-task check adds the others' vectors); got {problem.tasks}")
    if settings.samples < 3 or len(settings.lambdas) < 2:
        raise ValueError(f"diagnostics need at least 3 samples per task and 2 lambdas; got {settings.samples} and {list(settings.lambdas)}")
    started = time.perf_counter()
    tasks = list(problem.tasks)
    T = len(tasks)
    sample = sample_tasks(problem.data, settings.samples, args.seed)
    n = {t.name: len(t.images) for t in sample}
    if merged is None:
        merged = MergedEncoder(problem.clip.visual, problem.theta0, problem.tau, problem.keys, args.device)
    evaluate = _Evaluator(merged, sample, problem.normalize, args.batch_size)
    lam = settings.lam

    def one_hot(i: int, value: float) -> list[float]:
        row = [0.0] * T
        row[i] = value
        return row

    # Order the work by coefficient row, so each merged encoder is built once.
    plan = [([l] * T, range(T)) for l in settings.lambdas] + [([lam] * T, range(T))] \
        + [(one_hot(i, lam), [i]) for i in range(T)] + [(one_hot(i, 1.0), [i]) for i in range(T)]
    todo = [(row, i) for row, indices in plan for i in indices]
    for row, i in tqdm(todo, desc="diagnostics", disable=getattr(args, "no_progress", False), dynamic_ncols=True):
        evaluate(row, i)

    merged_out = {t: evaluate([lam] * T, i) for i, t in enumerate(tasks)}
    alone = {t: evaluate(one_hot(i, lam), i) for i, t in enumerate(tasks)}
    expert = {t: evaluate(one_hot(i, 1.0), i) for i, t in enumerate(tasks)}
    zeroshot = {t: evaluate([0.0] * T, i) for i, t in enumerate(tasks)}
    sweep = {t: [evaluate([l] * T, i) for l in settings.lambdas] for i, t in enumerate(tasks)}

    th = settings.thresholds
    checks = {t: [check_correlation(merged_out[t].entropy, merged_out[t].loss, th.spearman),
                  check_cross_task(alone[t].mean_entropy, merged_out[t].mean_entropy, alone[t].accuracy, merged_out[t].accuracy, n[t]),
                  check_lambda_alignment(settings.lambdas, [o.mean_entropy for o in sweep[t]], [o.accuracy for o in sweep[t]], n[t], th.lambda_slack)]
              for t in tasks}
    pooled = check_correlation(torch.cat([merged_out[t].entropy for t in tasks]), torch.cat([merged_out[t].loss for t in tasks]), th.spearman)
    lines, overall, ok = verdict(checks, pooled)
    stats = task_vector_stats(problem.theta0, problem.tau, problem.keys, tasks)

    def gain(t: str) -> float | None:   # share of the expert's gain over zero-shot that TA keeps (paper ViT-B/32: about 50 %)
        room = expert[t].accuracy - zeroshot[t].accuracy
        return (merged_out[t].accuracy - zeroshot[t].accuracy) / room if room > accuracy_tolerance(zeroshot[t].accuracy, n[t]) else None

    elapsed = time.perf_counter() - started
    if timings is not None:   # the caller's stage timings (the AdaMerging scripts report them in their JSON)
        timings["diagnostics"] = elapsed
    label = "Task Arithmetic" if vectors == "plain" else "TIES-selected vectors"
    report = {
        "model": problem.model, "tasks": tasks, "vectors": vectors, "merged_model": f"{label}, theta_0 + {lam:g} sum_t tau_t",
        "samples": n, "seed": args.seed, "lam": lam, "lambdas": list(settings.lambdas), "test_data": problem.test_data,
        "thresholds": {**asdict(th), "why": {k: v.format(**asdict(th)) for k, v in JUSTIFICATION.items()}},
        "verdict": {"trustworthy": ok, "overall": overall, "per_task": lines},
        "checks": {t: {c.name: {"passed": c.passed, "message": c.message, **{k: _r(v) for k, v in c.values.items()}} for c in checks[t]} for t in tasks},
        "spearman": {"per_task": {t: _r(checks[t][0].values["spearman"]) for t in tasks}, "pooled": _r(pooled.values["spearman"]),
                     "pooled_passed": pooled.passed},
        "cross_task": {t: {"entropy_alone": _r(alone[t].mean_entropy), "entropy_merged": _r(merged_out[t].mean_entropy),
                           "accuracy_alone": _r(alone[t].accuracy, 2), "accuracy_merged": _r(merged_out[t].accuracy, 2)} for t in tasks},
        "lambda_sweep": {"lambdas": list(settings.lambdas),
                         "entropy": {t: [_r(o.mean_entropy) for o in sweep[t]] for t in tasks},
                         "accuracy": {t: [_r(o.accuracy, 2) for o in sweep[t]] for t in tasks}},
        "task_vectors": {**{k: v for k, v in stats.items() if k != "cosine"}, "cosine": [[_r(c, 4) for c in row] for row in stats["cosine"]]},
        "reference_accuracy": {"zeroshot": {t: _r(zeroshot[t].accuracy, 2) for t in tasks}, "alone": {t: _r(alone[t].accuracy, 2) for t in tasks},
                               "merged": {t: _r(merged_out[t].accuracy, 2) for t in tasks}, "expert": {t: _r(expert[t].accuracy, 2) for t in tasks},
                               "retained_gain": {t: _r(gain(t), 3) for t in tasks}},
        "per_sample": {t: {"entropy": [_r(x) for x in merged_out[t].entropy.tolist()], "loss": [_r(x) for x in merged_out[t].loss.tolist()]} for t in tasks},
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, tuple, type(None)))},
        "versions": package_versions(), "timings_s": {**(timings or {}), "diagnostics": elapsed},
    }
    print(summary(report))
    if write:
        files = write_report(report, Path(getattr(args, "results_dir", "results")), getattr(args, "overwrite", False))
        print("wrote " + ", ".join(str(f) for f in files))
    return report


# ---------------------------------------------------------------------------------------------- reporting


def summary(report: dict) -> str:
    """The printed verdict: one line per task, the overall line, and the headline numbers."""
    tasks, sizes = report["tasks"], sorted(set(report["samples"].values()))
    count = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    out = [f"Diagnostics ({report['merged_model']}; {count} labeled test samples per task):",
           f"  pooled Spearman(entropy, loss) {_fmt(report['spearman']['pooled'])} (threshold {report['thresholds']['spearman']:.2f})"]
    for t in tasks:
        out.append("  " + report["verdict"]["per_task"][t])
    out.append(report["verdict"]["overall"])
    return "\n".join(out)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(report: dict, plots: dict[str, str]) -> str:
    tasks, th = report["tasks"], report["thresholds"]
    checks = report["checks"]
    mark = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    md = [f"# Will entropy minimisation (AdaMerging) help? Diagnostics for `{report['model']}`", "",
          f"Merged model: {report['merged_model']}. Labeled, seeded sample of each task's test split "
          "(" + ", ".join(f"{t} {report['samples'][t]}" for t in tasks) + f"; seed {report['seed']}).", "",
          f"**{report['verdict']['overall']}**", ""]
    md += [f"- {report['verdict']['per_task'][t]}" for t in tasks]
    md += ["", "## Thresholds and why", ""] + [f"- **{k}**: {v}" for k, v in th["why"].items()]

    md += ["", f"## 1. Entropy vs cross-entropy of the merged model (lambda {report['lam']:g})", "",
           "| task | Spearman | passes |", "|---|---|---|"]
    md += [f"| {t} | {_fmt(report['spearman']['per_task'][t])} | {mark(checks[t]['spearman']['passed'])} |" for t in tasks]
    md += [f"| pooled | {_fmt(report['spearman']['pooled'])} | {mark(report['spearman']['pooled_passed'])} |", "", f"![entropy vs loss]({plots['entropy_vs_loss']})"]

    ct = report["cross_task"]
    md += ["", f"## 2. Cross-task entropy effect (theta_0 + {report['lam']:g} tau_t vs + {report['lam']:g} sum_s tau_s)", "",
           "| task | entropy alone | entropy merged | accuracy alone | accuracy merged | passes |", "|---|---|---|---|---|---|"]
    md += [f"| {t} | {ct[t]['entropy_alone']:.3f} | {ct[t]['entropy_merged']:.3f} | {ct[t]['accuracy_alone']:.1f} | {ct[t]['accuracy_merged']:.1f} | "
           f"{mark(checks[t]['cross_task']['passed'])} |" for t in tasks]
    md += ["", f"![cross-task effect]({plots['cross_task']})"]

    md += ["", "## 3. Entropy and accuracy along the Task Arithmetic coefficient", "",
           "| task | lambda at min entropy | lambda at max accuracy | best within noise | passes |", "|---|---|---|---|---|"]
    md += [f"| {t} | {checks[t]['lambda']['lambda_min_entropy']:.2f} | {checks[t]['lambda']['lambda_max_accuracy']:.2f} | "
           f"{checks[t]['lambda']['best_low']:.2f}-{checks[t]['lambda']['best_high']:.2f} | {mark(checks[t]['lambda']['passed'])} |" for t in tasks]
    sw = report["lambda_sweep"]
    md += ["", "Mean entropy / accuracy (%) per lambda:", "", "| task | " + " | ".join(f"{l:g}" for l in sw["lambdas"]) + " |",
           "|---|" + "---|" * len(sw["lambdas"])]
    md += [f"| {t} | " + " | ".join(f"{h:.3f} / {a:.1f}" for h, a in zip(sw["entropy"][t], sw["accuracy"][t])) + " |" for t in tasks]
    md += ["", f"![lambda sweep]({plots['lambda_sweep']})"]

    tv, ref = report["task_vectors"], report["reference_accuracy"]
    md += ["", "## 4. Task vectors (visual entries) and reference accuracies", "",
           f"|theta_0| = {tv['theta0_norm']:.2f}; mean pairwise cosine {_fmt(tv['mean_pairwise_cosine'], '.3f')} "
           "(the mini trials measured |tau|/|theta_0| 0.03-0.06 and cosines 0.02-0.03, like real CLIP: near-orthogonal vectors "
           "do not by themselves make entropy trustworthy).", "",
           "| task | \\|tau\\|/\\|theta_0\\| | zero-shot | alone | merged | expert | TA keeps of the expert's gain |", "|---|---|---|---|---|---|---|"]
    md += [f"| {t} | {tv['norm_ratio'][t]:.4f} | {ref['zeroshot'][t]:.1f} | {ref['alone'][t]:.1f} | {ref['merged'][t]:.1f} | {ref['expert'][t]:.1f} | "
           f"{_fmt(ref['retained_gain'][t] * 100 if ref['retained_gain'][t] is not None else None, '.0f')}{'' if ref['retained_gain'][t] is None else ' %'} |" for t in tasks]
    if report["vectors"] != "plain":
        md += ["", "(Expert here: theta_0 + its TIES-selected task vector, as AdaMerging++ uses them.)"]
    md += ["", "(Paper, ViT-B/32: TA keeps about 50 % of the experts' gain over zero-shot: (69.1 - 48.0) / (90.5 - 48.0).)", "",
           "Pairwise cosine of the task vectors:", "", "| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    md += [f"| {t} | " + " | ".join(_fmt(c, ".3f") for c in row) + " |" for t, row in zip(tasks, tv["cosine"])]
    md += ["", f"![task vectors]({plots['task_vectors']})", "",
           f"Wall time {report['timings_s']['diagnostics']:.1f} s. Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "."]
    return "\n".join(md) + "\n"


def _grid(n: int, ncols: int = 4) -> tuple[int, int]:
    ncols = min(ncols, n)
    return math.ceil(n / ncols), ncols


def plot_report(report: dict, folder: Path, stem: str) -> dict[str, str]:
    """The four PNGs (Agg canvas: no display, no pyplot global state); returns {kind: file name}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    tasks, files = report["tasks"], {}

    def save(fig: Figure, kind: str) -> None:
        FigureCanvasAgg(fig)
        fig.tight_layout()
        name = f"{stem}_{kind}.png"
        fig.savefig(folder / name, dpi=110)
        files[kind] = name

    # 1. entropy vs loss: per task scatter + binned means, and all tasks pooled
    nrows, ncols = _grid(len(tasks) + 1)
    fig = Figure(figsize=(3.6 * ncols, 3.2 * nrows))
    fig.suptitle(f"Per-sample entropy vs cross-entropy, {report['merged_model']}")
    for k, t in enumerate([*tasks, "pooled"]):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        names = tasks if t == "pooled" else [t]
        for j, name in enumerate(names):
            s = report["per_sample"][name]
            ax.scatter(s["entropy"], s["loss"], s=6, alpha=0.4, color=f"C{j % 10}" if t == "pooled" else "C0", label=name if t == "pooled" else "samples")
        h = np.concatenate([report["per_sample"][x]["entropy"] for x in names])
        l = np.concatenate([report["per_sample"][x]["loss"] for x in names])
        edges = np.unique(np.quantile(h, np.linspace(0, 1, 11)))
        if len(edges) > 2:
            which = np.clip(np.digitize(h, edges[1:-1]), 0, len(edges) - 2)
            centres = [(h[which == b].mean(), l[which == b].mean()) for b in range(len(edges) - 1) if (which == b).any()]
            ax.plot(*zip(*centres), "k-o", ms=3, label="binned mean (entropy deciles)")
        rho = report["spearman"]["pooled"] if t == "pooled" else report["spearman"]["per_task"][t]
        ax.set_title(f"{t}: Spearman {_fmt(rho)}", fontsize=9)
        ax.set_xlabel("entropy (nats)")
        ax.set_ylabel("cross-entropy loss")
        ax.legend(fontsize=6)
    save(fig, "entropy_vs_loss")

    # 2. cross-task effect: entropy and accuracy, alone vs merged
    ct, x, w = report["cross_task"], np.arange(len(tasks)), 0.38
    fig = Figure(figsize=(max(6, 1.1 * len(tasks) + 2), 6.5))
    fig.suptitle(f"Do the other tasks' vectors raise a task's entropy? (lambda {report['lam']:g})")
    for k, (key, ylabel) in enumerate([("entropy", "mean entropy (nats)"), ("accuracy", "accuracy (%)")]):
        ax = fig.add_subplot(2, 1, k + 1)
        ax.bar(x - w / 2, [ct[t][f"{key}_alone"] for t in tasks], w, label=f"theta_0 + {report['lam']:g} tau_task")
        ax.bar(x + w / 2, [ct[t][f"{key}_merged"] for t in tasks], w, label=f"theta_0 + {report['lam']:g} sum_t tau_t")
        ax.set_xticks(x, [t + ("" if report["checks"][t]["cross_task"]["passed"] else " (fails)") for t in tasks], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=7)
    save(fig, "cross_task")

    # 3. entropy and accuracy along lambda, per task and averaged
    sw = report["lambda_sweep"]
    lam = np.asarray(sw["lambdas"])
    nrows, ncols = _grid(len(tasks) + 1)
    fig = Figure(figsize=(3.8 * ncols, 3.2 * nrows))
    fig.suptitle("Entropy and accuracy along Task Arithmetic's lambda (theta_0 + lambda sum_t tau_t)")
    for k, t in enumerate([*tasks, "mean over tasks"]):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        h = np.mean([sw["entropy"][x] for x in tasks], axis=0) if k == len(tasks) else np.asarray(sw["entropy"][t])
        a = np.mean([sw["accuracy"][x] for x in tasks], axis=0) if k == len(tasks) else np.asarray(sw["accuracy"][t])
        lines = ax.plot(lam, h, "C0-o", ms=3, label="mean entropy")
        ax.axvline(lam[np.argmin(h)], color="C0", ls="--", lw=1)
        ax2 = ax.twinx()
        lines += ax2.plot(lam, a, "C1-s", ms=3, label="accuracy")
        ax2.axvline(lam[np.argmax(a)], color="C1", ls=":", lw=1)
        ok = "" if k == len(tasks) else ("" if report["checks"][t]["lambda"]["passed"] else " (fails)")
        ax.set_title(f"{t}{ok}", fontsize=9)
        ax.set_xlabel("lambda")
        ax.set_ylabel("entropy (nats)", color="C0")
        ax2.set_ylabel("accuracy (%)", color="C1")
        markers = [Line2D([], [], color="C0", ls="--", lw=1, label="lambda at min entropy"), Line2D([], [], color="C1", ls=":", lw=1, label="lambda at max accuracy")]
        ax.legend(handles=lines + markers, fontsize=6)
    save(fig, "lambda_sweep")

    # 4. task vectors: norm ratio bars and cosine heatmap
    tv = report["task_vectors"]
    fig = Figure(figsize=(6 + 0.9 * len(tasks), 4.5))
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
    save(fig, "task_vectors")
    return files


def write_report(report: dict, results_dir: Path, overwrite: bool = False) -> list[Path]:
    """results/<model>/diagnostics.json, .md and <stem>_*.png (beside, time-stamped, if one exists and not overwrite)."""
    name = "diagnostics" if report["vectors"] == "plain" else f"diagnostics_{report['vectors']}"
    path = results_path(Path(results_dir), report["model"], name, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_report(report, path.parent, path.stem)
    report["plots"] = plots
    write_json(report, path)
    md = path.with_suffix(".md")
    with atomic_write(md, "w") as f:
        f.write(markdown(report, plots))
    return [path, md, *(path.parent / p for p in plots.values())]


# ---------------------------------------------------------------------------------------------- command line


def _lambdas(text: str) -> tuple[float, ...]:
    try:
        values = sorted({round(float(v), 6) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambdas: comma-separated numbers expected, got {text!r}") from None
    if len(values) < 2:
        raise argparse.ArgumentTypeError("--lambdas: at least 2 values")
    return tuple(values)


def add_diagnostic_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, standalone: bool = False) -> None:
    """The knobs: `--samples`, `--lambdas`, ... for src/diagnose.py; `--diagnose-samples`, ... for the AdaMerging scripts."""
    prefix = "--" if standalone else "--diagnose-"
    parser.add_argument(f"{prefix}samples", dest="diagnose_samples", type=int, default=DEFAULT_SAMPLES, help="labeled test samples per task (seeded subset)")
    parser.add_argument(f"{prefix}lambdas", dest="diagnose_lambdas", type=_lambdas, default=DEFAULT_LAMBDAS,
                        help="Task Arithmetic coefficients to sweep, comma-separated (default 0,0.1,...,1.0)")
    parser.add_argument(f"{prefix}spearman-threshold", dest="diagnose_spearman", type=float, default=Thresholds.spearman,
                        help="minimum Spearman(entropy, loss) per task and pooled")
    parser.add_argument(f"{prefix}lambda-slack", dest="diagnose_lambda_slack", type=float, default=Thresholds.lambda_slack,
                        help="maximum distance between the entropy-minimising and the accuracy-maximising lambda")


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import METHODS, build_parser as pipeline_parser

    p = pipeline_parser(METHODS["task_arithmetic"])
    p.description = ("Will AdaMerging help on these models? Checks on a labeled sample of each task's test split whether the "
                     "merged model's entropy is a trustworthy surrogate of its loss; writes results/<model>/diagnostics.{json,md} "
                     "and PNG plots. --lam is the Task Arithmetic coefficient of checks 1-2.")
    g = p.add_argument_group("diagnostics")
    add_diagnostic_arguments(g, standalone=True)
    g.add_argument("--vectors", default="plain", choices=["plain", "ties"], help="plain task vectors (AdaMerging) or TIES-selected ones (AdaMerging++)")
    return p


def diagnose(argv: Sequence[str] | None = None) -> dict:
    """src/diagnose.py without the error handling: load, measure, print, write; returns the report."""
    from . import pipeline

    args = build_parser().parse_args(argv)
    pipeline.seed_everything(args.seed)
    timings: dict[str, float] = {}
    method = pipeline.METHODS["ties_merging" if args.vectors == "ties" else "task_arithmetic"]
    problem = pipeline.load_problem(args, method, timings)
    return run_diagnostics(problem, args, vectors=args.vectors, write=True, timings=timings)


def main(argv: Sequence[str] | None = None) -> None:
    from . import datasets as ds
    from .checkpoints import CheckpointError

    try:
        diagnose(sys.argv[1:] if argv is None else argv)
    except (FileNotFoundError, CheckpointError, ds.DatasetError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
