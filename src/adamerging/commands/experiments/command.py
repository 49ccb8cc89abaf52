"""The paper's experiments, one command each, rendered beside the paper's numbers.

    python -m adamerging experiments EXPERIMENT --model MODEL [experiment flags] [pipeline flags]

EXPERIMENT is one of (what it writes under results/<model>/)

    main-table      every method (Table 2/3 rows) -> main_table.{md,csv}
    published       the authors' coefficient tables, no training -> published_table.{md,csv}
    entropy-loss    per-sample entropy vs cross-entropy of Task Arithmetic
                    -> entropy_vs_loss.{json,png}
    coefficients    layer-wise coefficients by depth, task-vector cosines
                    -> coefficients.{json,md}, coefficients_*.png
    generalization  adapt on seen tasks, evaluate unseen ones (Table 4; --eval-tasks: your own
                    split) -> generalization.{md,json}
    robustness      7 test-image corruptions, TA vs AdaMerging -> robustness.{md,json}
    ablations       supervised vs entropy, adaptation-data fraction, steps
                    -> ablations.{md,json}, trajectory.png
    surgery         each base merge with Representation Surgery (v1, deep) and the authors' logs
                    -> surgery.{md,csv,json}
    adarank         CART, TA + AdaRank, CART + AdaRank at 500 steps and at the official budget
                    (--official-steps) beside TA and layer-wise AdaMerging
                    -> adarank_table.{md,csv,json}
    all             each of the above in turn (published is skipped where the authors published
                    no table)

Every flag the experiment does not define goes to each method run unchanged (`--checkpoints`,
`--data-location`, `--steps`, `--device`, ...: see `python -m adamerging task_arithmetic --help`).
The main-table and published runs write the pipeline's usual results/<model>/<method>.json; the
other experiments keep their method runs apart, under
results/<model>/runs/<experiment>/<variant>/<method>.json, so they never replace the main results.
`--skip-existing` reuses a run's JSON when it was made with an equal run configuration (up to
output-only settings such as --overwrite).

One module per experiment (main_table, published, entropy_loss, coefficients, generalization,
robustness, ablations, surgery, adarank); `common` runs the methods (each variant a
`dataclasses.replace` of the one RunConfig) and writes the tables; `command` is the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from adamerging.commands import pipeline
from adamerging.commands.experiments.ablations import ablations
from adamerging.commands.experiments.adarank import adarank
from adamerging.commands.experiments.coefficients import coefficients
from adamerging.commands.experiments.common import ADAPTIVE, Context
from adamerging.commands.experiments.entropy_loss import entropy_loss
from adamerging.commands.experiments.generalization import generalization
from adamerging.commands.experiments.main_table import main_table
from adamerging.commands.experiments.published import check_published, published
from adamerging.commands.experiments.robustness import robustness
from adamerging.commands.experiments.surgery import surgery
from adamerging.datasets.corruptions import CORRUPTIONS
from adamerging.methods.registry import METHODS
from adamerging.runtime.cli import command_name, run_cli
from adamerging.runtime.distributed import setup

EXPERIMENTS: dict[str, Callable[[Context], dict]] = {
    "main-table": main_table,
    "published": published,
    "entropy-loss": entropy_loss,
    "coefficients": coefficients,
    "generalization": generalization,
    "robustness": robustness,
    "ablations": ablations,
    "surgery": surgery,
    "adarank": adarank,
}


def _names(text: str) -> list[str]:
    """'a, b,' -> ['a', 'b']."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _choices(text: str, allowed, what: str) -> list[str]:
    """The names in `text`, each one of `allowed` (an argparse error naming the others)."""
    names = _names(text)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {bad}; expected some of {', '.join(allowed)}"
        )
    return names


def _methods(text: str) -> list[str]:
    """--methods: comma-separated method names."""
    return _choices(text, METHODS, "method")


def _corruptions(text: str) -> list[str]:
    """--corruptions: comma-separated corruption names."""
    return _choices(text, CORRUPTIONS, "corruption")


def _fractions(text: str) -> list[float]:
    """--fractions: comma-separated numbers in (0, 1]."""
    try:
        values = [float(x) for x in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"comma-separated numbers expected, got {text!r}"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def _new_parser(experiment: str) -> argparse.ArgumentParser:
    """The experiment's parser, with its usage, description and epilog and no flags yet."""
    return argparse.ArgumentParser(
        prog=command_name("adamerging experiments", experiment),
        allow_abbrev=False,
        description=(
            (EXPERIMENTS[experiment].__doc__ or "").strip()
            if experiment in EXPERIMENTS
            else "every experiment"
        ),
        epilog=(
            "Every other flag goes to each method run: python -m adamerging task_arithmetic --help"
            " lists them."
        ),
    )


def _add_run_flags(p: argparse.ArgumentParser, experiment: str) -> None:
    """The flags that choose the method runs: --skip-existing, --methods, --samples, --method."""
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="reuse a method run's JSON when it exists with the same tasks and settings",
    )
    if experiment in ("main-table", "generalization", "robustness", "surgery", "all"):
        p.add_argument(
            "--methods",
            type=_methods,
            default=None,
            help="comma-separated methods instead of the experiment's default set",
        )
    if experiment in ("entropy-loss", "all"):
        p.add_argument(
            "--samples",
            type=int,
            default=0,
            help="entropy-loss: labeled test samples per task (seeded subset; 0 = all)",
        )
    if experiment in ("coefficients", "ablations", "all"):
        p.add_argument(
            "--method",
            default="layer_wise_adamerging",
            choices=list(ADAPTIVE),
            help="the layer-wise method analysed (coefficients) or ablated (ablations)",
        )


def _add_analysis_flags(p: argparse.ArgumentParser, experiment: str) -> None:
    """The own flags of coefficients, robustness and ablations."""
    if experiment in ("coefficients", "all"):
        p.add_argument(
            "--source",
            default=None,
            help=(
                "coefficients: a layer-wise results/coefficients JSON, or 'published' "
                "(default: results/<model>/<method>.json)"
            ),
        )
        p.add_argument(
            "--no-cosine",
            action="store_true",
            help="coefficients: skip the task-vector cosine matrix (needs the checkpoints)",
        )
    if experiment in ("robustness", "all"):
        p.add_argument(
            "--corruptions",
            type=_corruptions,
            default=None,
            help=f"comma-separated subset of {', '.join(CORRUPTIONS)}",
        )
        p.add_argument(
            "--no-clean",
            action="store_true",
            help="robustness: skip the uncorrupted reference runs",
        )
    if experiment in ("adarank", "all"):
        p.add_argument(
            "--official-steps",
            type=int,
            default=10_000,
            help="adarank: steps of the official-budget runs (0: skip them)",
        )
    if experiment in ("ablations", "all"):
        p.add_argument(
            "--fractions",
            type=_fractions,
            default=[0.001, 0.01, 0.05, 1.0],
            help="ablations: adaptation-data fractions",
        )


def build_parser(experiment: str) -> argparse.ArgumentParser:
    """The experiment's own flags; every other flag is forwarded to the pipeline (allow_abbrev off,
    so a pipeline flag is never mistaken for a prefix of one of these)."""
    p = _new_parser(experiment)
    # the help lists the flags in the order they are added
    _add_run_flags(p, experiment)
    _add_analysis_flags(p, experiment)
    return p


def parse(argv: Sequence[str]) -> Context:
    """The experiment, its own flags, and the run configuration of the forwarded flags (unknown
    flags: exit 2)."""
    # the docstring for users: as typed, without the module map
    if argv and argv[0] in ("-h", "--help"):
        print(
            __doc__.split("\nOne module per experiment")[0].replace(
                "python -m adamerging experiments", command_name("adamerging experiments")
            )
        )
        raise SystemExit(0)
    if not argv or argv[0] not in [*EXPERIMENTS, "all"]:
        raise ValueError(
            f"usage: {command_name('adamerging experiments')} {{{','.join([*EXPERIMENTS, 'all'])}}}"
            " [flags]  (--help for details)"
        )
    experiment, rest = argv[0], list(argv[1:])
    options, passthrough = build_parser(experiment).parse_known_args(rest)
    base = pipeline.parse_config("task_arithmetic", passthrough)  # rejects unknown flags early
    return Context(experiment, options, base, passthrough)


def run_all(ctx: Context) -> dict:
    """Every experiment in turn; published only where the authors published tables for this
    model."""
    out = {}
    for name, fn in EXPERIMENTS.items():
        sub = Context(name, ctx.options, ctx.base, ctx.passthrough)
        if name == "published":
            try:
                check_published(ctx.model)
            except ValueError as e:
                print(f"== published: skipped ({e})")
                continue
        if (
            name == "coefficients"
            and ctx.options.source is None
            and not (ctx.folder / f"{ctx.options.method}.json").is_file()
        ):
            print(f"== coefficients: skipped (no {ctx.options.method} result)")
            continue
        print(f"\n######## {name}", flush=True)
        out[name] = fn(sub)
    return out


def run(argv: Sequence[str]) -> dict:
    """Parse, run one experiment (or all), return what it wrote (JSON-ready)."""
    ctx = parse(argv)
    # a bad --device or torchrun setting: one line before any work
    setup(ctx.base.device, ctx.base.precision)
    return run_all(ctx) if ctx.experiment == "all" else EXPERIMENTS[ctx.experiment](ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: user mistakes print one line and exit 2, as the method scripts do
    (adamerging.cli)."""
    run_cli(run, argv)
