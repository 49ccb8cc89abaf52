"""The paper's experiments, one command each, rendered beside the paper's numbers: `python -m
adamerging.experiments`.

One module per experiment (main_table, published, entropy_loss, coefficients, generalization,
robustness, ablations); `common` runs the methods (each variant a `dataclasses.replace` of the one
RunConfig, reuse by config equality) and writes the tables; `command` is the command line and its
usage text.
"""

from __future__ import annotations

from adamerging.commands.experiments.command import EXPERIMENTS, build_parser, main, parse, run

__all__ = ["EXPERIMENTS", "build_parser", "main", "parse", "run"]
