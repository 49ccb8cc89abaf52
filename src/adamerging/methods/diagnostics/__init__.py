"""Will entropy minimisation (AdaMerging) help on these models? Cheap checks before a long run.

AdaMerging bets that the entropy of the merged model's predictions on unlabeled data tracks its
loss. The paper shows it for CLIP ViT-B/32 (Sec. 3.2), but it does not hold for every model
family: on tiny CLIP-like models the other tasks' vectors LOWERED a task's entropy while cutting its
accuracy, and entropy kept falling past the best-accuracy coefficient, so AdaMerging made things
worse. On a small labeled, seeded sample of each task's test split the package measures:

1. Spearman(entropy, cross-entropy) per sample, per task and pooled, for the TA-merged model;
2. the cross-task effect: theta_0 + lam tau_t versus theta_0 + lam sum_s tau_s on task t;
3. entropy and accuracy along the TA coefficient lambda;
4. task-vector statistics (|tau_t| / |theta_0| over the visual entries, pairwise cosines);
5. a verdict per task and overall.

Modules: `checks` (the checks and the verdict: plain functions over numbers), `measure` (entropy,
loss, accuracy, correlation and binning of a merged model), `run` (`run_diagnostics` on a loaded
`Problem`), `report` (JSON, printed summary, markdown), `plots` (PNGs), `command` (src/diagnose.py,
the only part that loads a problem). Nothing here imports the pipeline.
"""

from __future__ import annotations

from adamerging.merging.stats import task_vector_stats
from adamerging.methods.diagnostics.checks import (
    TRUSTWORTHY,
    Check,
    Thresholds,
    accuracy_tolerance,
    check_correlation,
    check_cross_task,
    check_lambda_alignment,
    spearman,
    verdict,
)
from adamerging.methods.diagnostics.measure import (
    binned_means,
    correlation_report,
    entropy_and_loss,
    sample_tasks,
)
from adamerging.methods.diagnostics.run import run_diagnostics

__all__ = [
    "TRUSTWORTHY",
    "Check",
    "Thresholds",
    "accuracy_tolerance",
    "binned_means",
    "check_correlation",
    "check_cross_task",
    "check_lambda_alignment",
    "correlation_report",
    "entropy_and_loss",
    "run_diagnostics",
    "sample_tasks",
    "spearman",
    "task_vector_stats",
    "verdict",
]
