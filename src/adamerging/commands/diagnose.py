"""`src/diagnose.py`: the diagnostics' command line. The only part of the package that loads a
problem."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from adamerging.methods.diagnostics.run import run_diagnostics
from adamerging.run.flags import build_parser, config_from_namespace
from adamerging.run.problem import load_problem
from adamerging.runtime.cli import command_name, run_cli
from adamerging.runtime.distributed import setup

DESCRIPTION = (
    "Will AdaMerging help on these models? Checks on a labeled sample of each task's test split"
    " whether the merged model's entropy is a trustworthy surrogate of its loss; writes"
    " results/<model>/diagnostics.{json,md} and PNG plots. --lam is the Task Arithmetic coefficient"
    " of checks 1-2."
)


def diagnose(argv: Sequence[str] | None = None) -> dict:
    """src/diagnose.py without the error handling: parse, load, measure, print, write; returns the
    report."""
    config = config_from_namespace(
        build_parser(
            DESCRIPTION, standalone_diagnostics=True, prog=command_name("adamerging diagnose")
        ).parse_args(argv)
    )
    # checks --device; under torchrun, this rank's GPU
    ranks, device, _ = setup(config.device, config.precision)
    config = replace(config, device=device)
    timings: dict[str, float] = {}
    problem = load_problem(config, config.vectors, timings)
    return run_diagnostics(
        problem, config, vectors=config.vectors, write=True, timings=timings, ranks=ranks
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of src/diagnose.py: user mistakes print one line and exit 2 (adamerging.cli)."""
    run_cli(diagnose, argv)
