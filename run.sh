#!/usr/bin/env bash
# The main job on the embedded mini benchmark: set up .venv, build the benchmark if it is not cached
# (data/mini, checkpoints/mini), run every method of the registry (its src/main_*.py script where
# there is one), then Representation Surgery on the base merges, and print one table.
# Runs $JOBS processes at once (default: the number of cores), each on one thread; each writes its
# output to results/mini/logs/NAME.log.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
export PYTHONPATH=src
JOBS=${JOBS:-$(nproc)}  # before OMP_NUM_THREADS is set: nproc obeys it
# One thread per process unless told otherwise: it reproduces the committed results/mini numbers
# exactly, and on a shared 2-core machine two threads per process ran 25x slower per step (README).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=.venv/bin/python
COMMON=(--model mini --overwrite "$@")
LOGS=results/mini/logs
mkdir -p "$LOGS"
rm -f "$LOGS"/*.failed

job() {  # NAME COMMAND...: run one job, its output to $LOGS/NAME.log
  local name=$1 start
  start=$(date +%s)
  shift
  if "$@" >"$LOGS/$name.log" 2>&1; then
    echo "   $name: done ($(($(date +%s) - start)) s)"
  else
    echo "   $name: FAILED; the end of $LOGS/$name.log:"
    tail -n 20 "$LOGS/$name.log"
    touch "$LOGS/$name.failed"
  fi
}

spawn() {  # NAME COMMAND...: start a job once fewer than $JOBS are running
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  job "$@" &
}

finish() {  # wait for every job; stop if one failed
  wait
  if compgen -G "$LOGS/*.failed" >/dev/null; then exit 1; fi
}

echo "== building the mini benchmark (skipped when cached)"
$PY -m adamerging.mini.build --threads "$OMP_NUM_THREADS"

echo "== every method, $JOBS at a time"
for method in $($PY -m adamerging --list); do
  if [ -f "src/main_$method.py" ]; then
    spawn "$method" $PY "src/main_$method.py" "${COMMON[@]}"
  else
    spawn "$method" $PY -m adamerging "$method" "${COMMON[@]}"
  fi
done
finish

echo "== Representation Surgery (v1, deep) on each base merge, $JOBS at a time"
# --skip-existing reuses the base merges just made; the surgery runs are made again
rm -f results/mini/*_surgery*.json results/mini/*_surgery*.safetensors
SURGERY=($PY -m adamerging experiments surgery --skip-existing "${COMMON[@]}")
for base in $($PY -c "from adamerging.commands.experiments.surgery import BASES; print(*BASES)"); do
  spawn "surgery_$base" "${SURGERY[@]}" --methods "$base"
done
finish
# every run is saved by now: this reuses them and writes results/mini/surgery.{md,csv,json}
job surgery "${SURGERY[@]}"
finish

echo "== results/mini/table.md"
$PY -m adamerging report --model mini
