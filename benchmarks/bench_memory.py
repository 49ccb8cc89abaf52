"""Peak host memory (max RSS) and wall time of every method at real model size, one process per
method.

    python benchmarks/bench_memory.py --model ViT-B-32 --limit-gb 12
    python benchmarks/bench_memory.py --model ViT-L-14 --limit-gb 18 \\
        --methods ties_merging,layer_wise_adamergingpp
    # another source tree ("before")
    python benchmarks/bench_memory.py --model ViT-B-32 --src /tmp/base14/src

What it does:
- once per model, into --workdir (default /tmp/bench_memory): random-weight checkpoints in the
  public task-vectors format (`<model>/zeroshot.pt`, `<Task>/finetuned.pt` = theta_0 + noise on the
  visual tower only, so the text-side leftovers' task vectors are exactly zero as in the real files,
  `head_<Task>.pt`), and a tiny synthetic test set per task in its real folder layout (2 classes,
  1 image each, named by a classnames.txt) with a train split of 32 images (16 per class) for Fisher
  merging and RegMean. Written in a child process under the same guard.
- then one `python -m adamerging METHOD` process per method, 8 tasks (--num-tasks), on the CPU with
  OMP_NUM_THREADS=--threads, evaluation batch 16; the AdaMerging methods run --steps optimizer steps
  of 1 batch of --adapt-batch images per task (default 2 steps x 1 image: memory is what is
  measured, and the coefficients' state is tiny, so more steps change the peak only through
  activations); Fisher merging and RegMean read --train-images train images per task in batches of
  --train-batch-size (default 32 and 32: FusionBench's batch, so the Fisher backward holds a whole
  batch's activations).
- peak RSS is the child's ru_maxrss from wait4 (exact, kernel-kept); wall and CPU time from the
  same.
- the guard: the child's resident memory (/proc/<pid>/status VmRSS) is polled every 0.1 s and the
  child is killed above --limit-gb (the row then reads "over N GB, stopped"), or as soon as the
  machine's MemAvailable falls below --min-available-gb, so that other jobs sharing the machine are
  never killed by the kernel. A stopped row's peak is a lower bound.

Random weights: the numbers are memory and time, not accuracy. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the 20-task suite (TALL masks' order after the paper's 8): --num-tasks 8, 14 or 20 takes its head
TASKS = [
    *("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"),
    *("STL10", "OxfordIIITPet", "Flowers102", "CIFAR100", "PCAM", "FER2013"),
    *("CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "EMNIST", "KMNIST"),
]
METHODS = [
    "zeroshot",
    "task_arithmetic",
    "ties_merging",
    "task_wise_adamerging",
    "task_wise_adamergingpp",
    "layer_wise_adamerging",
    "layer_wise_adamergingpp",
    "fisher_merging",
    "regmean",
]
DATA_BASED = {"fisher_merging", "regmean"}
TRAIN_PER_CLASS = 16
ADAPTIVE = {m for m in METHODS if "adamerging" in m}
GB = 1024**3


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def run_guarded(
    cmd: list[str], env: dict[str, str], limit_gb: float, log: Path, min_available_gb: float = 1.5
) -> dict:
    """Run `cmd`; kill it if its RSS passes `limit_gb`, or if the machine's available memory falls
    below `min_available_gb` (other jobs come first). Returns peak RSS (GB), wall and CPU seconds,
    status."""
    t0 = time.perf_counter()
    stopped = ""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_bytes(proc.pid)
            if not stopped and (rss > limit_gb * GB or _available_bytes() < min_available_gb * GB):
                os.kill(proc.pid, signal.SIGKILL)
                stopped = (
                    f"over {limit_gb:g} GB, stopped"
                    if rss > limit_gb * GB
                    else (
                        f"stopped at {rss / GB:.1f} GB: machine below {min_available_gb:g} GB"
                        " available"
                    )
                )
            time.sleep(0.1)
    returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = returncode  # reaped here (wait4), so Popen must not wait again
    return {
        "peak_gb": usage.ru_maxrss * 1024 / GB,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "returncode": returncode,
        "status": (
            stopped or ("ok" if returncode == 0 else f"failed (exit {returncode}, see {log})")
        ),
    }


def prepared_tasks(model: str, workdir: Path) -> int:
    """How many tasks a previous run prepared (0 if none, or if it wrote no train splits)."""
    marker = workdir / "checkpoints" / model / "ready"
    words = marker.read_text().split() if marker.is_file() else []
    return int(words[0]) if words[1:] == ["train"] else 0


def write_data(task: str, data: Path) -> None:
    """2 classes: 1 test image and TRAIN_PER_CLASS train images each, in the task's real layout
    (the suite tasks: an ImageFolder tree)."""
    from fake_data import TASKS as PAPER
    from fake_data import write_fake_dataset
    from PIL import Image

    from adamerging.datasets.tasks import TASKS as REGISTRY

    if task in PAPER:
        write_fake_dataset(task, data, n_per_class=1, num_classes=2, image_size=8)
        write_fake_dataset(
            task, data, n_per_class=TRAIN_PER_CLASS, num_classes=2, image_size=8, split="train"
        )
        return
    for split, n in (("test", 1), ("train", TRAIN_PER_CLASS)):
        for c in (0, 1):
            for i in range(n):
                path = data / REGISTRY[task].folder / split / str(c) / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (40 * c + i, 0, 0)).save(path)


def prepare(model: str, workdir: Path, num_tasks: int, seed: int = 0) -> None:
    """Write the checkpoints and test sets (in this process; the runner calls it in a guarded
    child)."""
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    from adamerging.datasets.tasks import TASKS as REGISTRY
    from adamerging.models.clip import create_clip
    from adamerging.models.task_vectors_format import save_classification_head, save_image_encoder

    torch.manual_seed(seed)
    folder = workdir / "checkpoints" / model
    clip = create_clip(model)
    del clip.transformer  # the public encoders have no text transformer; nothing here needs it
    save_image_encoder(clip, folder / "zeroshot.pt")
    theta0_visual = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    for i, task in enumerate(TASKS[:num_tasks]):
        g = torch.Generator().manual_seed(seed + 1 + i)
        with torch.no_grad():
            for p in clip.visual.parameters():
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
        save_image_encoder(clip, folder / task / "finetuned.pt")
        clip.visual.load_state_dict(theta0_visual)
        weight = (
            torch.nn.functional.normalize(
                torch.randn(2, clip.visual.output_dim, generator=g), dim=1
            )
            * 100
        )
        save_classification_head(weight, folder / f"head_{task}.pt")
        write_data(task, workdir / "data")
        (workdir / "data" / REGISTRY[task].folder / "classnames.txt").write_text(
            "first class\nsecond class\n"
        )
    (folder / "ready").write_text(f"{num_tasks} train\n")


def bench_parser(doc: str, steps: int = 5) -> argparse.ArgumentParser:
    """The flags of a bench of guarded method runs: model, tasks, steps, threads, workdir."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--model", default="mini", choices=["mini", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
    p.add_argument("--num-tasks", type=int, default=8)
    p.add_argument("--steps", type=int, default=steps, help="steps (or iterations) per run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/bench_memory")
    p.add_argument("--limit-gb", type=float, default=20.0)
    p.add_argument("--min-available-gb", type=float, default=1.5)
    return p


def bench_start(doc: str) -> tuple[argparse.Namespace, Path, dict, Path]:
    """A bench script's start: its flags (`bench_parser`; train settings as bench_memory's), the
    workdir, the children's environment and the logs folder (`bench_setup`)."""
    args = bench_parser(doc).parse_args()
    args.train_images, args.train_batch_size = 32, 32
    env, logs = bench_setup(args)
    return args, Path(args.workdir), env, logs


def bench_setup(args) -> tuple[dict, Path]:
    """What a bench of method runs needs: the children's environment (--threads, the package on
    PYTHONPATH) and its logs folder; the checkpoints prepared if there are too few."""
    workdir = Path(args.workdir)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT / "src"),
        "PYTHONUNBUFFERED": "1",
    }
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if prepared_tasks(args.model, workdir) < args.num_tasks:
        prepare(args.model, workdir, args.num_tasks)
    return env, logs


def method_command(method: str, model: str, workdir: Path, args) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "adamerging",
        method,
        "--model",
        model,
        "--checkpoints",
        str(workdir / "checkpoints"),
        "--data-location",
        str(workdir / "data"),
        "--results-dir",
        str(workdir / "results"),
        "--tasks",
        ",".join(TASKS[: args.num_tasks]),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--no-progress",
        "--overwrite",
    ]
    if method in ADAPTIVE:
        cmd += [
            "--steps",
            str(args.steps),
            "--batch-size-adapt",
            str(args.adapt_batch),
            "--batches-per-step",
            "1",
            "--save-every",
            "0",
            *args.adapt_args.split(),
        ]
    if method in DATA_BASED:
        cmd += [
            "--train-images",
            str(args.train_images),
            "--train-batch-size",
            str(args.train_batch_size),
        ]
    return cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="ViT-B-32", choices=["mini", "ViT-B-32", "ViT-B-16", "ViT-L-14"]
    )
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS)
    )
    p.add_argument(
        "--src",
        default=str(ROOT / "src"),
        help="source tree whose `adamerging` package runs (e.g. an untouched copy, for 'before')",
    )
    p.add_argument(
        "--workdir",
        default="/tmp/bench_memory",
        help="checkpoints, data and results (checkpoints: ~4 GB for ViT-B/32, ~14 GB for ViT-L/14)",
    )
    p.add_argument(
        "--limit-gb",
        type=float,
        default=20.0,
        help="kill a run whose resident memory passes this (the row says so)",
    )
    p.add_argument(
        "--min-available-gb",
        type=float,
        default=1.5,
        help="also stop a run when the machine's available memory falls below this",
    )
    p.add_argument(
        "--num-tasks",
        type=int,
        default=8,
        help=(
            "merge the first N of the 8 tasks (a smaller N and the per-task slope project 8 where"
            " memory is short)"
        ),
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--steps", type=int, default=2, help="AdaMerging steps per run")
    p.add_argument("--adapt-batch", type=int, default=1, help="images per task per AdaMerging step")
    p.add_argument(
        "--train-images",
        type=int,
        default=2 * TRAIN_PER_CLASS,
        help="Fisher merging / RegMean: train images per task",
    )
    p.add_argument(
        "--train-batch-size",
        type=int,
        default=32,
        help="Fisher merging / RegMean: images per batch of the statistics",
    )
    p.add_argument(
        "--adapt-args",
        default="",
        help=(
            "extra flags for the AdaMerging runs, e.g. '--adapt-mode per-task' or '--checkpointing'"
        ),
    )
    p.add_argument("--label", default="", help="tag written with each result (e.g. before / after)")
    p.add_argument(
        "--out",
        default=None,
        help="append one JSON line per run here (default: <workdir>/results.jsonl)",
    )
    p.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    workdir = Path(args.workdir)
    if args.prepare_only:
        prepare(args.model, workdir, args.num_tasks)
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": args.src,
        "PYTHONUNBUFFERED": "1",
    }
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if prepared_tasks(args.model, workdir) < args.num_tasks:
        print(
            f"writing random-weight {args.model} checkpoints and test sets to {workdir} ...",
            flush=True,
        )
        r = run_guarded(
            [
                sys.executable,
                __file__,
                "--prepare-only",
                "--model",
                args.model,
                "--workdir",
                str(workdir),
                "--num-tasks",
                str(args.num_tasks),
            ],
            {**env, "PYTHONPATH": str(ROOT / "src")},
            args.limit_gb,
            logs / f"prepare_{args.model}.log",
            args.min_available_gb,
        )
        if r["status"] != "ok":
            sys.exit(f"preparing failed: {r['status']}")
    out = Path(args.out) if args.out else workdir / "results.jsonl"
    print(
        f"| {args.model} x {args.num_tasks} {args.label} | peak RSS | wall | CPU | status"
        " |\n|---|---|---|---|---|",
        flush=True,
    )
    for method in args.methods.split(","):
        r = run_guarded(
            method_command(method, args.model, workdir, args),
            env,
            args.limit_gb,
            logs / f"{args.model}_{args.num_tasks}_{method}_{args.label or 'run'}.log",
            args.min_available_gb,
        )
        row = {
            "model": args.model,
            "method": method,
            "label": args.label,
            "src": args.src,
            "tasks": args.num_tasks,
            **(
                {"train_images": args.train_images, "train_batch_size": args.train_batch_size}
                if method in DATA_BASED
                else {}
            ),
            "steps": args.steps if method in ADAPTIVE else 0,
            "adapt_args": args.adapt_args if method in ADAPTIVE else "",
            "threads": args.threads,
            **r,
        }
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        peak = f"{r['peak_gb']:.2f} GB" if r["status"] == "ok" else f"> {r['peak_gb']:.1f} GB"
        print(
            f"| {method} | {peak} | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {r['status']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
