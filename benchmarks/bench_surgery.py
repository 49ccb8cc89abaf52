"""Representation Surgery's time and peak host memory beside layer-wise AdaMerging's, one guarded
process per run (`bench_memory.run_guarded`: peak = ru_maxrss), on `bench_memory.py`'s random-weight
checkpoints in the public format.

    python benchmarks/bench_surgery.py --model mini --steps 20
    python benchmarks/bench_surgery.py --model ViT-B-32 --num-tasks 8 --steps 3

Rows: layer-wise AdaMerging (--steps steps of 2 x 16 images per task), and Task Arithmetic followed
by --steps surgery iterations (2 x 16 images per task each): v1 on cached features, v1 on the fly,
deep (on the fly). Each prints its peak RSS, wall time, and the median seconds of one step
(AdaMerging) or iteration (surgery) from its results JSON, and for surgery the seconds spent
computing the features once and the bytes they hold. Random weights: the numbers are time and
memory, not accuracy. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_memory as bm  # noqa: E402

RUNS = {
    "layer_wise_adamerging": ("layer_wise_adamerging", []),
    "surgery v1 cached": ("task_arithmetic", ["--surgery", "v1", "--surgery-features", "cached"]),
    "surgery v1 on the fly": (
        "task_arithmetic",
        ["--surgery", "v1", "--surgery-features", "on-the-fly"],
    ),
    "surgery deep": ("task_arithmetic", ["--surgery", "deep"]),
}


def command(label: str, args) -> list[str]:
    """The run's command line: bench_memory's, with 2 x 16 images per task per step."""
    method, extra = RUNS[label]
    common = argparse.Namespace(**{**vars(args), "adapt_batch": 16, "adapt_args": ""})
    cmd = bm.method_command(method, args.model, Path(args.workdir), common)
    # 2 batches per task and step, as the paper (a later flag wins)
    cmd += ["--batches-per-step", "2"] if method == "layer_wise_adamerging" else []
    return cmd + extra + ["--surgery-steps", str(args.steps), "--surgery-batch", "16"]


def step_seconds(workdir: Path, model: str, method: str, surgery: bool) -> dict:
    """The median step (or iteration) time and, for surgery, its feature cost, from the result."""
    name = method + ("_surgery_deep" if surgery == "deep" else "_surgery" if surgery else "")
    data = json.loads((workdir / "results" / model / f"{name}.json").read_text())
    if surgery:
        s = data["surgery"]
        return {
            "step_s": s["step_seconds_median"],
            "features_s": s["feature_seconds"],
            "feature_mb": s["feature_bytes"] / 1e6,
        }
    return {"step_s": data["adaptation"]["step_seconds_median"]}


def main() -> None:
    args, workdir, env, logs = bm.bench_start(__doc__)
    print(f"| {args.model} x {args.num_tasks}, {args.steps} steps | peak RSS | wall | step |")
    print("|---|---|---|---|")
    for label, (method, extra) in RUNS.items():
        log = logs / f"surgery_{args.model}_{label.replace(' ', '_')}.log"
        r = bm.run_guarded(command(label, args), env, args.limit_gb, log, args.min_available_gb)
        variant = extra[1] if extra else ""
        timing = step_seconds(workdir, args.model, method, variant) if r["status"] == "ok" else {}
        extra_text = (
            f" (features once: {timing['features_s']:.1f} s, {timing['feature_mb']:.1f} MB)"
            if "features_s" in timing
            else ""
        )
        step = f"{timing['step_s']:.3f} s{extra_text}" if timing else r["status"]
        print(f"| {label} | {r['peak_gb']:.2f} GB | {r['wall_s']:.0f} s | {step} |", flush=True)


if __name__ == "__main__":
    main()
