"""The diagnostics' measurement: every merged model the three checks need, evaluated once each on a
labeled seeded sample, then the checks, the verdict and the report (printed; written by the CLI)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.stats import task_vector_stats
from adamerging.methods.diagnostics.checks import (
    Check,
    Thresholds,
    accuracy_tolerance,
    check_correlation,
    check_cross_task,
    check_lambda_alignment,
    verdict,
)
from adamerging.methods.diagnostics.measure import Evaluator, Outcome, sample_tasks
from adamerging.methods.diagnostics.report import build_report, summary, write_report
from adamerging.run.config import DEFAULT_LAM, RunConfig
from adamerging.run.problem import Problem, TaskData
from adamerging.runtime.device import numerics
from adamerging.runtime.distributed import Ranks


def thresholds(config: RunConfig) -> Thresholds:
    """The checks' thresholds set by the run configuration."""
    return Thresholds(float(config.diagnose_spearman), float(config.diagnose_lambda_slack))


def _validate(tasks: Sequence[str], samples: int, lambdas: Sequence[float]) -> None:
    """Raise ValueError for fewer than 2 tasks, 3 samples per task or 2 lambdas."""
    if len(tasks) < 2:
        raise ValueError(
            "diagnostics need at least 2 tasks (the cross-task check adds the others' vectors);"
            f" got {tasks}"
        )
    if samples < 3 or len(lambdas) < 2:
        raise ValueError(
            f"diagnostics need at least 3 samples per task and 2 lambdas; got {samples} and"
            f" {list(lambdas)}"
        )


def _one_hot(T: int, i: int, value: float) -> list[float]:
    """A lambdas row of T coefficients: `value` for task i, 0 for the others."""
    row = [0.0] * T
    row[i] = value
    return row


def _evaluate_all(
    evaluate: Evaluator,
    T: int,
    lam: float,
    lambdas: Sequence[float],
    config: RunConfig,
    ranks: Ranks,
) -> None:
    """Evaluate every merged model the checks need on this rank's tasks, then gather all ranks'."""
    # Order the work by lambdas row, so each merged encoder is built once.
    plan = (
        [([lam] * T, range(T)) for lam in lambdas]
        + [([lam] * T, range(T))]
        + [(_one_hot(T, i, lam), [i]) for i in range(T)]
        + [(_one_hot(T, i, 1.0), [i]) for i in range(T)]
    )
    todo = [(row, i) for row, indices in plan for i in indices if ranks.owns(i)]
    for row, i in tqdm(
        todo,
        desc="diagnostics",
        disable=not config.progress or not ranks.is_main,
        dynamic_ncols=True,
    ):
        evaluate(row, i)
    evaluate.cache = ranks.merge_dicts(evaluate.cache)  # every rank: all tasks' measurements


def _checks(
    outcomes: Mapping[str, Mapping[str, Outcome]],
    sweep: Mapping[str, Sequence[Outcome]],
    n: Mapping[str, int],
    lambdas: Sequence[float],
    th: Thresholds,
) -> dict[str, list[Check]]:
    """Per task: the correlation, cross-task and lambda-alignment checks."""
    merged_out, alone = outcomes["merged"], outcomes["alone"]
    return {
        t: [
            check_correlation(merged_out[t].entropy, merged_out[t].loss, th.spearman),
            check_cross_task(
                alone[t].mean_entropy,
                merged_out[t].mean_entropy,
                alone[t].accuracy,
                merged_out[t].accuracy,
                n[t],
            ),
            check_lambda_alignment(
                lambdas,
                [o.mean_entropy for o in sweep[t]],
                [o.accuracy for o in sweep[t]],
                n[t],
                th.lambda_slack,
            ),
        ]
        for t in merged_out
    }


def _retained_gain(
    outcomes: Mapping[str, Mapping[str, Outcome]], n: Mapping[str, int]
) -> dict[str, float | None]:
    """Per task: the share of the expert's gain over zero-shot that TA keeps (paper: about 50 %)."""
    # None where the expert's gain is within the accuracy noise
    gains = {}
    for t, merged in outcomes["merged"].items():
        zeroshot = outcomes["zeroshot"][t].accuracy
        room = outcomes["expert"][t].accuracy - zeroshot
        gains[t] = (
            (merged.accuracy - zeroshot) / room
            if room > accuracy_tolerance(zeroshot, n[t])
            else None
        )
    return gains


def _measure(
    problem: Problem,
    config: RunConfig,
    merged: MergedEncoder | None,
    sample: list[TaskData],
    lam: float,
    lambdas: Sequence[float],
    ranks: Ranks,
) -> tuple[dict[str, dict[str, Outcome]], dict[str, list[Outcome]]]:
    """The outcomes the checks need: (kind -> task -> Outcome, task -> Outcome per lambda)."""
    tasks = list(problem.tasks)
    T = len(tasks)
    if merged is None:
        merged = MergedEncoder(
            problem.clip.visual, problem.theta0, problem.tau, problem.entries, config.device
        )
    evaluate = Evaluator(merged, sample, problem.normalize, config.batch_size)
    _evaluate_all(evaluate, T, lam, lambdas, config, ranks)
    outcomes = {
        "merged": {t: evaluate([lam] * T, i) for i, t in enumerate(tasks)},
        "alone": {t: evaluate(_one_hot(T, i, lam), i) for i, t in enumerate(tasks)},
        "expert": {t: evaluate(_one_hot(T, i, 1.0), i) for i, t in enumerate(tasks)},
        "zeroshot": {t: evaluate([0.0] * T, i) for i, t in enumerate(tasks)},
    }
    sweep = {t: [evaluate([lam] * T, i) for lam in lambdas] for i, t in enumerate(tasks)}
    return outcomes, sweep


def _report(
    problem: Problem,
    config: RunConfig,
    vectors: str,
    lam: float,
    lambdas: Sequence[float],
    n: Mapping[str, int],
    outcomes: Mapping[str, Mapping[str, Outcome]],
    sweep: Mapping[str, Sequence[Outcome]],
    timings: dict[str, float] | None,
    started: float,
) -> dict:
    """The report of the outcomes: checks, verdict, task vectors, timings and provenance."""
    tasks = list(problem.tasks)
    th = thresholds(config)
    checks = _checks(outcomes, sweep, n, lambdas, th)
    pooled = check_correlation(
        torch.cat([outcomes["merged"][t].entropy for t in tasks]),
        torch.cat([outcomes["merged"][t].loss for t in tasks]),
        th.spearman,
    )
    stats = task_vector_stats(problem.theta0, problem.tau, problem.entries, tasks)

    elapsed = time.perf_counter() - started
    # the caller's stage timings (the AdaMerging scripts report them in their JSON)
    if timings is not None:
        timings["diagnostics"] = elapsed
    report = build_report(
        problem.model,
        config,
        vectors,
        lam,
        lambdas,
        n,
        outcomes,
        sweep,
        checks,
        pooled,
        verdict(checks, pooled),
        stats,
        _retained_gain(outcomes, n),
        th,
        {**(timings or {}), "diagnostics": elapsed},
    )
    # which split folder and how many images each task was read from
    report["test_data"] = problem.test_data
    # which files, their hashes; the plain task vectors' norm ratios and cosines
    report["provenance"] = problem.provenance
    report["numerics"] = numerics(config.precision)
    return report


def run_diagnostics(
    problem: Problem,
    config: RunConfig,
    merged: MergedEncoder | None = None,
    vectors: str = "plain",
    write: bool = False,
    timings: dict[str, float] | None = None,
    ranks: Ranks = Ranks(),
) -> dict:
    """Measure the checks on a labeled sample, print the verdict, return the report (JSON-ready).

    The AdaMerging scripts' `--diagnose` calls this before adapting (pass their `merged` to share
    its device copies of theta_0 and tau); `src/diagnose.py` calls it with write=True, which writes
    results/<model>/diagnostics.{json,md} and the PNG plots. Errors: ValueError for fewer than 2
    tasks, 3 samples or 2 lambdas. Under torchrun (`ranks`), each rank measures the tasks it owns,
    the measurements are gathered, and rank 0 alone prints and writes.
    """
    samples, lambdas = int(config.diagnose_samples), tuple(config.diagnose_lambdas)
    lam = DEFAULT_LAM if config.lam is None else float(config.lam)
    _validate(problem.tasks, samples, lambdas)
    started = time.perf_counter()
    sample = sample_tasks(problem.data, samples, config.seed)
    n = {t.name: len(t.images) for t in sample}
    outcomes, sweep = _measure(problem, config, merged, sample, lam, lambdas, ranks)
    report = _report(problem, config, vectors, lam, lambdas, n, outcomes, sweep, timings, started)
    if not ranks.is_main:
        return report
    print(summary(report))
    if write:
        files = write_report(report, config.output_dir, config.overwrite)
        print("wrote " + ", ".join(str(f) for f in files))
    return report
