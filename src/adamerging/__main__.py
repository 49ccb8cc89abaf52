"""`python -m adamerging NAME [flags]` (installed: `adamerging NAME [flags]`): any method of the
registry (zeroshot, individual, weight_averaging, task_arithmetic, ...), or one of the COMMANDS
(experiments, diagnose, prepare, download, mini-build, report); `--help` after NAME for its flags.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# name -> (module whose `main(argv)` runs it, installed command, what it does). The installed
# commands are the console scripts of pyproject.toml (tests/test_packaging.py checks they agree).
COMMANDS = {
    "experiments": (
        "adamerging.commands.experiments.command",
        "adamerging-experiments",
        "the paper's experiments",
    ),
    "diagnose": (
        "adamerging.commands.diagnose",
        "adamerging-diagnose",
        "will AdaMerging help on these models? (also src/diagnose.py)",
    ),
    "prepare": (
        "adamerging.datasets.prepare",
        "adamerging-prepare",
        "official dataset downloads -> reader layouts",
    ),
    "download": (
        "adamerging.datasets.download",
        "adamerging-download",
        "checkpoints and datasets from the Hugging Face hub",
    ),
    "mini-build": (
        "adamerging.mini.build",
        "adamerging-mini-build",
        "build the embedded mini benchmark",
    ),
    "report": (
        "adamerging.commands.report",
        "adamerging-report",
        "collect results/<model>/<method>.json into one table",
    ),
}


def usage(methods: Sequence[str]) -> str:
    """The one-line usage of the command."""
    from adamerging.runtime.cli import command_name

    names = ",".join([*methods, *COMMANDS])
    return f"usage: {command_name('adamerging')} {{{names}}} [flags]  (--help after the name)"


def help_text(methods: Sequence[str]) -> str:
    """`--help`: the usage line, then the other commands with their installed names."""
    rows = [
        f"  {name:12s} {installed:24s} {text}" for name, (_, installed, text) in COMMANDS.items()
    ]
    return usage(methods) + "\n\ncommands (each with --help; installed as):\n" + "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the method or command named first with the flags after it (argv default:
    sys.argv[1:]); usage and exit 2 without a known name. `-h`/`--help` alone lists the methods and
    the commands, `--list` the methods one a line, in the registry's order (exit 0)."""
    from adamerging.methods.registry import METHODS

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--list"]:  # the methods, one a line (run.sh reads them)
        print("\n".join(METHODS))
        sys.exit(0)
    if args[:1] in (["-h"], ["--help"]):
        print(help_text(list(METHODS)))
        sys.exit(0)
    if args and args[0] in COMMANDS:
        sys.exit(importlib.import_module(COMMANDS[args[0]][0]).main(args[1:]))
    if not args or args[0] not in METHODS:
        # a misspelled name: say so, and the nearest ones
        if args and not args[0].startswith("-"):
            near = difflib.get_close_matches(args[0], [*METHODS, *COMMANDS], n=2)
            print(
                f"error: unknown method or command {args[0]!r}"
                + (f"; did you mean {' or '.join(near)}?" if near else "")
                + f" (methods: {', '.join(METHODS)}; commands: {', '.join(COMMANDS)})",
                file=sys.stderr,
            )
        else:
            print(usage(list(METHODS)), file=sys.stderr)
        sys.exit(2)
    from adamerging.commands.pipeline import main as run_method

    run_method(args[0], args[1:])


if __name__ == "__main__":
    main()
