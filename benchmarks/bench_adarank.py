"""AdaRank's step time and peak host memory beside layer-wise AdaMerging's (the same images per
step), one guarded process per run (`bench_memory.run_guarded`: peak = ru_maxrss), on
`bench_memory.py`'s random-weight checkpoints in the public format.

    python benchmarks/bench_adarank.py --model mini --steps 20
    python benchmarks/bench_adarank.py --model ViT-B-32 --num-tasks 8 --steps 3

Rows: layer-wise AdaMerging, TA + AdaRank and CART + AdaRank (--steps steps of --batches-per-step 2
x 16 images per task each), and CART (no steps). Each prints its peak RSS, wall time and the median
seconds of one step from its results JSON; the AdaRank rows add the SVD's seconds and the bytes of
the factors (U, s, V of every task) beside those of the dense 2-D task vectors they replace.
Random weights: the numbers are time and memory, not accuracy. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_memory as bm  # noqa: E402

RUNS = ("layer_wise_adamerging", "adarank", "cart_adarank", "cart")


def command(method: str, args) -> list[str]:
    """The run's command line: bench_memory's, with 2 x 16 images per task per step."""
    common = argparse.Namespace(**{**vars(args), "adapt_batch": 16, "adapt_args": ""})
    cmd = bm.method_command(method, args.model, Path(args.workdir), common)
    return cmd + ["--batches-per-step", "2", "--steps", str(args.steps)]


def measured(workdir: Path, model: str, method: str) -> str:
    """The step time and, for AdaRank and CART, the SVD's cost, from the result."""
    data = json.loads((workdir / "results" / model / f"{method}.json").read_text())
    parts = []
    if "adaptation" in data:
        parts.append(f"{data['adaptation']['step_seconds_median']:.3f} s")
    if "adarank" in data:
        a = data["adarank"]
        parts.append(
            f"SVD {a['svd_seconds']:.1f} s, factors {a['factor_bytes'] / 1e6:.0f} MB"
            f" ({a['factor_bytes'] / a['dense_bytes']:.2f} x the dense 2-D task vectors)"
        )
    return "; ".join(parts)


def main() -> None:
    args, workdir, env, logs = bm.bench_start(__doc__)
    print(f"| {args.model} x {args.num_tasks}, {args.steps} steps | peak RSS | wall | step, SVD |")
    print("|---|---|---|---|")
    for method in RUNS:
        log = logs / f"adarank_{args.model}_{method}.log"
        r = bm.run_guarded(command(method, args), env, args.limit_gb, log, args.min_available_gb)
        text = measured(workdir, args.model, method) if r["status"] == "ok" else r["status"]
        print(f"| {method} | {r['peak_gb']:.2f} GB | {r['wall_s']:.0f} s | {text} |", flush=True)


if __name__ == "__main__":
    main()
