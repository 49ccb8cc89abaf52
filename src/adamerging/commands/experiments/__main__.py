"""`python -m adamerging.commands.experiments EXPERIMENT [flags]` (also `python -m adamerging
experiments`)."""

from __future__ import annotations

from adamerging.commands.experiments.command import main

main()
