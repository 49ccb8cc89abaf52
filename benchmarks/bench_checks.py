"""What the file checks add to loading: the experts' sha256 and the task vectors' norm ratios and
cosines.

    python benchmarks/bench_checks.py --model ViT-B-32 --num-tasks 8 --repeats 3

Writes (once, into --workdir) random-weight checkpoints in the public task-vectors format, as
bench_memory.py does, then on one torch thread, min over --repeats:
- `load_task_vectors_s`: the whole loading (checkpoints -> theta_0 and task vectors, with the
  checks), the file hashes already cached (every run after the first);
- `norms_and_cosines_s`: `stats.task_vector_stats` over the loaded task vectors (every run);
- `hash_files_s`: sha256 of every checkpoint file read from the page cache (the first run only: a
  background thread, overlapping the loading; later runs find the hashes in the cache).
Random weights: the numbers are time, not accuracy. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--num-tasks", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/bench_checks")
    args = p.parse_args(argv)

    import torch
    from bench_memory import TASKS, prepare

    from adamerging.checkpoints.hashing import FileHashes
    from adamerging.commands.pipeline import parse_config
    from adamerging.merging.stats import task_vector_stats
    from adamerging.run.experts import load_task_vectors

    torch.set_num_threads(1)
    work = Path(args.workdir)
    folder = work / "checkpoints" / args.model
    if not (folder / "ready").is_file() or (folder / "ready").read_text().strip() != str(
        args.num_tasks
    ):
        prepare(args.model, work, args.num_tasks)
    tasks = TASKS[: args.num_tasks]
    files = [folder / "zeroshot.pt", *(folder / t / "finetuned.pt" for t in tasks)]
    config = parse_config(
        "task_arithmetic",
        [
            "--model",
            args.model,
            "--checkpoints",
            str(work / "checkpoints"),
            "--data-location",
            str(work / "data"),
            "--cache-dir",
            str(work / "cache"),
            "--tasks",
            ",".join(tasks),
        ],
    )
    load_task_vectors(config, "plain")  # hashes cached from here on; files in the page cache
    best = {
        "load_task_vectors_s": float("inf"),
        "norms_and_cosines_s": float("inf"),
        "hash_files_s": float("inf"),
    }
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        vectors = load_task_vectors(config, "plain")
        best["load_task_vectors_s"] = min(best["load_task_vectors_s"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        task_vector_stats(vectors.theta0, vectors.tau, vectors.entries, tasks)
        best["norms_and_cosines_s"] = min(best["norms_and_cosines_s"], time.perf_counter() - t0)
        del vectors
        hashes, t0 = FileHashes(None), time.perf_counter()
        for f in files:
            hashes.digest(f)
        best["hash_files_s"] = min(best["hash_files_s"], time.perf_counter() - t0)
    gb = sum(f.stat().st_size for f in files) / 1e9
    out = {
        "model": args.model,
        "tasks": len(tasks),
        "files_gb": round(gb, 2),
        **{k: round(v, 3) for k, v in best.items()},
        "hash_gb_per_s": round(gb / best["hash_files_s"], 2),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
