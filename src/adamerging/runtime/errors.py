"""The errors a user can cause and fix from the message alone, and the exit codes of every command.

`CheckpointError` (an unreadable, hostile or mismatched checkpoint), `DatasetError` (a missing or
malformed dataset), `WriteError` (a full disk or an unwritable folder), `RunStopped` (a run that
stopped early with its state saved). Exit codes: 0 done; 2 a user error; 3 a run stopped with its
state saved, or out of device memory; 130 interrupted.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint file that cannot be read safely or does not hold what was expected."""


EXIT_USER_ERROR = 2


EXIT_STOPPED = 3


EXIT_INTERRUPTED = 130


class RunStopped(RuntimeError):
    """A run stopped before its end and saved its state; the scripts exit with code 3.

    Subclass it for a specific reason (AdaMerging's guard against a non-finite loss) so that the
    handler here needs no import from the modules above it.
    """


class WriteError(OSError):
    """A file or folder that cannot be written (full disk, read-only file system, permissions): the
    message names the path and what to pass instead. An OSError, so code that tolerates a failed
    optional write (a cache) still catches it."""


class DatasetError(Exception):
    """A dataset is missing or does not have the expected layout (the message says what was expected
    and found)."""
