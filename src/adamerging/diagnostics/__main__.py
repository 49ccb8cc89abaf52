"""`python -m adamerging.diagnostics [flags]`: the diagnostics' command line (as
src/diagnose.py)."""

from .command import main

main()
