#!/usr/bin/env bash
# Set up .venv (pinned requirements), check formatting and lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
.venv/bin/ruff format --check --quiet .
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q --durations=15 "$@"
