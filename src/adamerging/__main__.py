"""`python -m adamerging METHOD [flags]` (installed: `adamerging METHOD [flags]`): any method,
including zeroshot, individual and weight_averaging."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

from .cli import command_name
from .pipeline import METHODS
from .pipeline import main as run_method

# The other installed commands, each the console form of `python -m adamerging.<module>`
# (pyproject.toml).
COMMANDS = {
    "adamerging-experiments": "the paper's experiments (python -m adamerging.experiments)",
    "adamerging-diagnose": (
        "will AdaMerging help on these models? (python -m adamerging.diagnostics, src/diagnose.py)"
    ),
    "adamerging-prepare": (
        "official dataset downloads -> reader layouts (python -m adamerging.prepare)"
    ),
    "adamerging-download": (
        "checkpoints and datasets from the Hugging Face hub (python -m adamerging.download)"
    ),
    "adamerging-mini-build": "build the embedded mini benchmark (python -m adamerging.mini.build)",
    "adamerging-report": (
        "collect results/<model>/<method>.json into one table (python -m adamerging.reporting)"
    ),
}


def usage() -> str:
    """The one-line usage of the method command."""
    return (
        f"usage: {command_name('adamerging')} {{{','.join(METHODS)}}} [flags]  (--help after the"
        " method for flags)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run METHOD with the flags after it (argv default: sys.argv[1:]); usage and exit 2 without a
    known method.

    `-h`/`--help` alone lists the methods and the other commands (exit 0).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(
            usage()
            + "\n\nother commands (each with --help):\n"
            + "\n".join(f"  {k:24s} {v}" for k, v in COMMANDS.items())
        )
        sys.exit(0)
    if not args or args[0] not in METHODS:
        # a misspelled method: name it, and the nearest ones
        if args and not args[0].startswith("-"):
            near = difflib.get_close_matches(args[0], METHODS, n=2)
            print(
                f"error: unknown method {args[0]!r}"
                + (f"; did you mean {' or '.join(near)}?" if near else "")
                + f" (methods: {', '.join(METHODS)})",
                file=sys.stderr,
            )
        else:
            print(usage(), file=sys.stderr)
        sys.exit(2)
    run_method(args[0], args[1:])


if __name__ == "__main__":
    main()
