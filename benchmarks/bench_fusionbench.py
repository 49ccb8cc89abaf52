"""Peak host memory of layer-wise AdaMerging: this repo vs FusionBench's `LayerWiseMergedModel`,
one harness.

    # writes the checkpoints once
    python benchmarks/bench_memory.py --model ViT-B-32 --num-tasks 2 --methods zeroshot
    python benchmarks/bench_fusionbench.py --fusion-python /tmp/fbvenv/bin/python \\
        --model ViT-B-32 --num-tasks 2

Both sides run in their own guarded child process (`bench_memory.run_guarded`: peak = ru_maxrss) on
the same inputs: `bench_memory.py`'s random-weight checkpoints in the public task-vectors format and
its tiny test sets, 1 thread, --steps steps of --adapt-batch images per task, then an evaluation of
the merged model on every test image.
- ours: `python -m adamerging layer_wise_adamerging` (exactly `bench_memory.py`'s command).
- FusionBench: `fusion_bench.models.wrappers.layer_wise_fusion.LayerWiseMergedModel` around the same
  open_clip visual tower (theta_0 and each expert loaded from the same files; FusionBench turns the
  experts into task vectors in place), its `entropy_loss`, and the loop of its
  `LayerWiseAdaMergingAlgorithm.test_time_adaptation`: per task a forward and a
  `backward(retain_graph=True)`, then Adam and `merge_weights()`. Init 0.3, clamp, lr 1e-3.
`fusion_bench` is not a dependency of this project: give the Python of a separate environment that
has it (`--fusion-python`; see benchmarks/README.md). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory  # noqa: E402

from adamerging.datasets.preprocessing import preprocess_images  # noqa: E402
from adamerging.datasets.splits import read_task_split  # noqa: E402


def fusionbench_child(args) -> None:
    """The FusionBench side, in this (separate-environment) process."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from fusion_bench.method.adamerging.entropy_loss import entropy_loss
    from fusion_bench.models.wrappers.layer_wise_fusion import (
        LayerWiseMergedModel,
        get_layer_wise_weights,
    )

    from adamerging.checkpoints.loading import load_checkpoint
    from adamerging.models.clip import VISUAL_PREFIX, create_clip, image_size, normalization
    from adamerging.models.evaluation import Normalizer
    from adamerging.models.heads import load_head

    torch.manual_seed(0)
    folder = Path(args.workdir) / "checkpoints" / args.model
    tasks = bench_memory.TASKS[: args.num_tasks]

    def visual(path: Path) -> torch.nn.Module:
        clip = create_clip(args.model, device="meta")
        sd = load_checkpoint(path).state_dict
        clip.visual.load_state_dict(
            {k[len(VISUAL_PREFIX) :]: v for k, v in sd.items() if k.startswith(VISUAL_PREFIX)},
            assign=True,
        )
        del sd  # the text-side leftovers: FusionBench's CLIP vision models have none
        return clip.visual.eval()

    pretrained = visual(folder / "zeroshot.pt")
    experts = [visual(folder / task / "finetuned.pt") for task in tasks]
    num_layers = sum(p.requires_grad for p in pretrained.parameters())
    module = LayerWiseMergedModel(
        get_layer_wise_weights(len(tasks), num_layers, init_values=0.3),
        pretrained,
        experts,
        clamp_weights=True,
    )
    del experts
    clip = create_clip(args.model, device="meta")
    mean, std = normalization(clip)
    normalize = Normalizer(mean, std, "cpu")
    data = {}
    for task in tasks:
        split = read_task_split(task, Path(args.workdir) / "data", "test")
        data[task] = (
            preprocess_images(split, image_size(clip)),
            load_head(folder / f"head_{task}.pt"),
        )
    optimizer = torch.optim.Adam([module.merge_weight], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    module.train()
    module.merge_weights()
    for _ in range(args.steps):
        for task in tasks:
            images, head = data[task]
            batch = images[torch.randperm(len(images), generator=generator)[: args.adapt_batch]]
            loss = entropy_loss(head(module(normalize(batch))))
            loss.backward(retain_graph=True)
        optimizer.step()
        optimizer.zero_grad()
        module.merge_weights()
    with torch.no_grad():
        merged = module.merge_and_unload()
        predicted = {
            task: data[task][1](merged(normalize(data[task][0]))).argmax(1).tolist()
            for task in tasks
        }
    print(json.dumps({"predictions": predicted}))


def main(argv: list[str] | None = None) -> list[dict]:
    """Run each side; returns one row per side (peak_gb, wall_s, cpu_s, status)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--fusion-python",
        required=False,
        help="python of an environment with fusion_bench (and this project's torch)",
    )
    p.add_argument(
        "--model", default="ViT-B-32", choices=["mini", "ViT-B-32", "ViT-B-16", "ViT-L-14"]
    )
    p.add_argument(
        "--workdir",
        default="/tmp/bench_memory",
        help="bench_memory.py's folder (its checkpoints and test sets)",
    )
    p.add_argument("--num-tasks", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--adapt-batch", type=int, default=1, help="images per task per step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit-gb", type=float, default=8.0)
    p.add_argument("--min-available-gb", type=float, default=1.5)
    p.add_argument("--sides", default="ours,fusionbench")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fusionbench_child(args)
        return []
    workdir = Path(args.workdir)
    if bench_memory.prepared_tasks(args.model, workdir) < args.num_tasks:
        sys.exit(
            f"no {args.model} checkpoints for {args.num_tasks} tasks in {workdir}: run"
            f" benchmarks/bench_memory.py --model {args.model} --num-tasks {args.num_tasks}"
            f" --workdir {workdir} --methods zeroshot first"
        )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT / "src"),
        "PYTHONUNBUFFERED": "1",
    }
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    print(
        f"| {args.model} x {args.num_tasks}, {args.steps} steps x {args.adapt_batch} image(s) per"
        " task | peak RSS | wall | CPU | status |\n|---|---|---|---|---|"
    )
    for side in args.sides.split(","):
        if side == "ours":
            run = argparse.Namespace(
                num_tasks=args.num_tasks,
                steps=args.steps,
                adapt_batch=args.adapt_batch,
                adapt_args="",
            )
            cmd = bench_memory.method_command("layer_wise_adamerging", args.model, workdir, run)
        elif side == "fusionbench":
            if not args.fusion_python:
                sys.exit("--fusion-python is needed for the FusionBench side")
            cmd = [
                args.fusion_python,
                __file__,
                "--child",
                "--model",
                args.model,
                "--workdir",
                str(workdir),
                "--num-tasks",
                str(args.num_tasks),
                "--steps",
                str(args.steps),
                "--adapt-batch",
                str(args.adapt_batch),
            ]
        else:
            sys.exit(f"unknown side {side!r}: ours or fusionbench")
        r = bench_memory.run_guarded(
            cmd,
            env,
            args.limit_gb,
            logs / f"fusionbench_{side}_{args.model}_{args.num_tasks}.log",
            args.min_available_gb,
        )
        peak = f"{r['peak_gb']:.2f} GB" if r["status"] == "ok" else f"> {r['peak_gb']:.1f} GB"
        print(
            f"| {side} | {peak} | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {r['status']} |",
            flush=True,
        )
        rows.append({"side": side, **r})
    return rows


if __name__ == "__main__":
    main()
