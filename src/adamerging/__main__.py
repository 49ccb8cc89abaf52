"""`python -m adamerging METHOD [flags]`: any method, including zeroshot, individual and weight_averaging."""
import sys

from .pipeline import METHODS, main

if len(sys.argv) < 2 or sys.argv[1] not in METHODS:
    print(f"usage: python -m adamerging {{{','.join(METHODS)}}} [flags]  (--help after the method for flags)", file=sys.stderr)
    sys.exit(2)
method = sys.argv.pop(1)
main(method)
