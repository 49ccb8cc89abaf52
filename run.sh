#!/usr/bin/env bash
# The main job on the embedded mini benchmark: set up .venv, build the benchmark if it is not cached
# (data/mini, checkpoints/mini), run every method of the registry (its src/main_*.py script where
# there is one), print one table.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
export PYTHONPATH=src
# One thread unless told otherwise: it reproduces the committed results/mini numbers exactly, and on a
# shared 2-core machine two threads per process ran 25x slower per step (README, mini benchmark).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=.venv/bin/python
COMMON=(--model mini --overwrite "$@")

echo "== building the mini benchmark (skipped when cached)"
$PY -m adamerging.mini.build --threads "$OMP_NUM_THREADS"

for method in $($PY -m adamerging --list); do
  start=$(date +%s)
  if [ -f "src/main_$method.py" ]; then
    echo "== main_$method.py"
    $PY "src/main_$method.py" "${COMMON[@]}"
  else
    echo "== $method"
    $PY -m adamerging "$method" "${COMMON[@]}"
  fi
  echo "   ($(( $(date +%s) - start )) s)"
done

echo "== results/mini/table.md"
$PY -m adamerging report --model mini
