#!/usr/bin/env bash
# Set up .venv (pinned requirements) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
exec .venv/bin/python -m pytest -q "$@"
