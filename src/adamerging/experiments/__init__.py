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
experiments keep their method runs apart, under results/<model>/runs/<experiment>/<variant>/<model>/<method>.json,
so they never replace the main results. `--skip-existing` reuses a run's JSON when it was made with
an equal run configuration (up to output-only settings such as --overwrite).

One module per experiment (main_table, published, entropy_loss, coefficients, generalization,
robustness, ablations); `common` runs the methods (each variant a `dataclasses.replace` of the one
RunConfig) and writes the tables; `command` is the command line.
"""
from .command import EXPERIMENTS, build_parser, main, parse, run

__all__ = ["EXPERIMENTS", "build_parser", "main", "parse", "run"]
