"""The diagnostics' measurement: every merged model the three checks need, evaluated once each on a
labeled seeded sample, then the checks, the verdict and the report (printed; written by the CLI)."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.stats import task_vector_stats
from adamerging.methods.diagnostics.checks import (
    Thresholds,
    accuracy_tolerance,
    check_correlation,
    check_cross_task,
    check_lambda_alignment,
    verdict,
)
from adamerging.methods.diagnostics.measure import Evaluator, sample_tasks
from adamerging.methods.diagnostics.report import build_report, summary, write_report
from adamerging.run.config import DEFAULT_LAM, RunConfig
from adamerging.run.problem import Problem
from adamerging.runtime.device import numerics
from adamerging.runtime.distributed import Ranks


def thresholds(config: RunConfig) -> Thresholds:
    """The checks' thresholds set by the run configuration."""
    return Thresholds(float(config.diagnose_spearman), float(config.diagnose_lambda_slack))


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
    if len(problem.tasks) < 2:
        raise ValueError(
            "diagnostics need at least 2 tasks (the cross-task check adds the others' vectors);"
            f" got {problem.tasks}"
        )
    if samples < 3 or len(lambdas) < 2:
        raise ValueError(
            f"diagnostics need at least 3 samples per task and 2 lambdas; got {samples} and"
            f" {list(lambdas)}"
        )
    started = time.perf_counter()
    tasks = list(problem.tasks)
    T = len(tasks)
    sample = sample_tasks(problem.data, samples, config.seed)
    n = {t.name: len(t.images) for t in sample}
    if merged is None:
        merged = MergedEncoder(
            problem.clip.visual, problem.theta0, problem.tau, problem.entries, config.device
        )
    evaluate = Evaluator(merged, sample, problem.normalize, config.batch_size)

    def one_hot(i: int, value: float) -> list[float]:
        row = [0.0] * T
        row[i] = value
        return row

    # Order the work by lambdas row, so each merged encoder is built once.
    plan = (
        [([lam] * T, range(T)) for lam in lambdas]
        + [([lam] * T, range(T))]
        + [(one_hot(i, lam), [i]) for i in range(T)]
        + [(one_hot(i, 1.0), [i]) for i in range(T)]
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

    outcomes = {
        "merged": {t: evaluate([lam] * T, i) for i, t in enumerate(tasks)},
        "alone": {t: evaluate(one_hot(i, lam), i) for i, t in enumerate(tasks)},
        "expert": {t: evaluate(one_hot(i, 1.0), i) for i, t in enumerate(tasks)},
        "zeroshot": {t: evaluate([0.0] * T, i) for i, t in enumerate(tasks)},
    }
    sweep = {t: [evaluate([lam] * T, i) for lam in lambdas] for i, t in enumerate(tasks)}
    merged_out, alone = outcomes["merged"], outcomes["alone"]

    th = thresholds(config)
    checks = {
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
        for t in tasks
    }
    pooled = check_correlation(
        torch.cat([merged_out[t].entropy for t in tasks]),
        torch.cat([merged_out[t].loss for t in tasks]),
        th.spearman,
    )
    stats = task_vector_stats(problem.theta0, problem.tau, problem.entries, tasks)

    # share of the expert's gain over zero-shot that TA keeps (paper ViT-B/32: about 50 %)
    def gain(t: str) -> float | None:
        zeroshot = outcomes["zeroshot"][t].accuracy
        room = outcomes["expert"][t].accuracy - zeroshot
        return (
            (merged_out[t].accuracy - zeroshot) / room
            if room > accuracy_tolerance(zeroshot, n[t])
            else None
        )

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
        {t: gain(t) for t in tasks},
        th,
        {**(timings or {}), "diagnostics": elapsed},
    )
    # which split folder and how many images each task was read from
    report["test_data"] = problem.test_data
    # which files, their hashes; the plain task vectors' norm ratios and cosines
    report["provenance"] = problem.provenance
    report["numerics"] = numerics(config.precision)
    if not ranks.is_main:
        return report
    print(summary(report))
    if write:
        files = write_report(report, config.output_dir, config.overwrite)
        print("wrote " + ", ".join(str(f) for f in files))
    return report
