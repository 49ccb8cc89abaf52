"""The one command-line error handler of every script: a user mistake prints one line, never a
traceback.

Used by every command: the method scripts (`pipeline.main`), `src/diagnose.py`, `python -m
adamerging experiments` and, for usage lines (`command_name`), prepare, download, the mini build and
the report. Exit codes: 0 done; 2 a user error (missing file, unreadable checkpoint or dataset, bad
value or key); 3 a run that stopped early with its state saved (`RunStopped`, e.g. AdaMerging's
non-finite-loss guard), or that ran out of device memory; 130 interrupted (Ctrl-C; the message may
say where the state was saved). The torchrun process group, if any, is left at exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from adamerging.runtime.device import OUT_OF_MEMORY
from adamerging.runtime.distributed import shutdown
from adamerging.runtime.errors import (
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    EXIT_USER_ERROR,
    CheckpointError,
    DatasetError,
    RunStopped,
    WriteError,
)

# What a user can cause and fix from the message alone (a wrong path, flag value, task or entry
# name).
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    WriteError,
    CheckpointError,
    DatasetError,
    ValueError,
    KeyError,
)


def command_name(command: str, *words: str) -> str:
    """The command as the user typed it, for usage lines: `command` ("adamerging experiments", the
    `python -m` form without "python -m") as `python -m adamerging experiments`, as the installed
    `adamerging experiments` or `adamerging-experiments`, or a script's file name
    (`main_task_arithmetic.py`); then `words` (an experiment). Read from sys.argv[0].
    """
    arg0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    package = Path(__file__).resolve().parents[1]
    if arg0.suffix == ".py":
        typed = f"python -m {command}" if package in arg0.resolve().parents else arg0.name
    elif arg0.name == "adamerging":
        typed = command
    else:
        typed = arg0.name if arg0.name.startswith("adamerging") else f"python -m {command}"
    return " ".join([typed, *words])


def error_message(error: BaseException) -> str:
    """The error as one line: a KeyError's own message, not the quoted repr str() gives it."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return str(text).replace("\n", " ")


def run_cli(command: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """Run `command(argv)` (default: sys.argv[1:]) and turn the errors a user can fix into one line
    and an exit code.

    Anything else (a bug) keeps its traceback. Raises SystemExit with EXIT_INTERRUPTED, EXIT_STOPPED
    or EXIT_USER_ERROR; returns normally when the command succeeds.
    """
    try:
        command(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (RunStopped, *USER_ERRORS) as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        sys.exit(EXIT_STOPPED if isinstance(e, RunStopped) else EXIT_USER_ERROR)
    # outside an AdaMerging step (which saves its state and names its own setting)
    except OUT_OF_MEMORY as e:
        print(
            f"error: out of memory ({out_of_memory_summary(e)}): lower --batch-size (the evaluation"
            " batch), or merge fewer tasks per run (--tasks)",
            file=sys.stderr,
        )
        sys.exit(EXIT_STOPPED)
    finally:
        shutdown()


def out_of_memory_summary(error: BaseException) -> str:
    """The allocation that failed, from torch's message (its first two sentences, one line)."""
    text = " ".join(str(error).split())
    return ". ".join(text.split(". ")[:2]).rstrip(".") or "no details"
