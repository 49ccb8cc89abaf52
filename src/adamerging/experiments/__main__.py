"""`python -m adamerging.experiments EXPERIMENT [flags]`."""

from .command import main

main()
