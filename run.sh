#!/usr/bin/env bash
# The main job on the embedded mini benchmark: set up .venv, build the benchmark if it is not cached
# (data/mini, checkpoints/mini), run every method through the entry scripts, print one table.
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

for method in zeroshot individual multitask weight_averaging fisher_merging regmean; do
  echo "== $method"
  $PY -m adamerging "$method" "${COMMON[@]}"
done
for script in task_arithmetic ties_merging task_wise_adamerging task_wise_adamergingpp layer_wise_adamerging layer_wise_adamergingpp; do
  echo "== main_$script.py"
  start=$(date +%s)
  $PY "src/main_$script.py" "${COMMON[@]}"
  echo "   ($(( $(date +%s) - start )) s)"
done

echo "== results/mini/table.md"
$PY -m adamerging report --model mini
