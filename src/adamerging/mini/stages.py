"""The stages of the mini benchmark's build (`build.py` runs them in order on one `Build`): the
evaluation tasks' data on disk, the pretrained tiny CLIP, the zero-shot heads, the experts, the
multi-task model. Each stage logs what it made and adds it to the build's report."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adamerging.checkpoints.loading import save_state_dict
from adamerging.datasets.tasks import TASKS
from adamerging.mini import artefacts as A
from adamerging.mini import layouts
from adamerging.mini import pool as P
from adamerging.mini import tasks as T
from adamerging.mini import train as TR
from adamerging.models import clip as M
from adamerging.models import heads as H
from adamerging.models import task_vectors_format as TV
from adamerging.run.experts import MULTITASK

BUILD_VERSION = 2


def config_hash(cfg: dict, seed: int) -> str:
    """Hash of a build's settings and seed: a cached build is reused when it matches."""
    blob = json.dumps({"v": BUILD_VERSION, "cfg": cfg, "seed": seed}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def base_key(cfg: dict, seed: int) -> str:
    """Hash of everything the pretrained base depends on (the artefacts are used only when it
    matches)."""
    model_cfg = (Path(__file__).parents[1] / "models" / "configs" / "mini.json").read_text()
    pool = {name: share for name, (_, share) in P.POOL_GROUPS.items()}
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


def expert_key(cfg: dict, seed: int, task: str) -> str:
    """Hash of everything an expert depends on: the base, its task's train split, the fine-tuning
    recipe."""
    keys = ["n_train", "expert_steps", "expert_batch", "expert_lr", "expert_wd", "heads"]
    blob = json.dumps(
        dict(base=base_key(cfg, seed), task=task, **{k: cfg[k] for k in keys}), sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def multitask_key(cfg: dict, seed: int, tasks: Sequence[str]) -> str:
    """Hash of everything the multi-task model depends on: the base, its tasks and their train
    splits, the recipe."""
    return hashlib.sha1(
        json.dumps(dict(experts=[expert_key(cfg, seed, t) for t in tasks]), sort_keys=True).encode()
    ).hexdigest()[:16]


@dataclass
class Build:
    """One build's settings and what its stages made so far."""

    cfg: dict
    seed: int
    data_root: Path
    ckpt_dir: Path
    artefacts: Path
    manifest: dict
    rebuild: bool
    add_missing: bool
    log: Any  # Progress.log
    stage: Any  # Progress.stage
    data: dict = field(default_factory=dict)  # task -> splits, classnames, templates
    clip: Any = None
    from_artefacts: bool = False
    heads: dict = field(default_factory=dict)
    per_task: dict = field(default_factory=dict)
    expert_keys: dict = field(default_factory=dict)
    multitask_key: str = ""
    multitask: dict = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return self.cfg["tasks"]


def write_data(b: Build) -> None:
    """1. The evaluation tasks' train / test (/ val) splits, drawn and written in the real
    layouts."""
    for t in b.tasks:
        d = b.data_root / TASKS[t].folder
        if d.exists():
            shutil.rmtree(d)
    if (
        b.data_root / ".cache"
    ).exists():  # preprocessed-image caches of the old data would be stale
        shutil.rmtree(b.data_root / ".cache")
    for t in b.tasks:
        gen, classnames, templates = T.EVAL_TASKS[t]
        ti = T.CANONICAL.index(t)
        sizes = [("train", b.cfg["n_train"]), ("test", b.cfg["n_test"]), ("val", b.cfg["n_val"])]
        splits = {}
        for si, (split, n) in enumerate(sizes):
            if split == "val" and t != "EuroSAT":
                continue
            splits[split] = gen(np.random.default_rng([b.seed, ti, si]), n, split)
        classnames, splits = layouts.on_disk_order(t, classnames, splits)
        layouts.WRITERS[t](str(b.data_root), classnames, templates, splits)
        b.data[t] = dict(splits=splits, classnames=classnames, templates=templates)
        b.log(
            f"  {t}: {len(splits['train'][1])} train / {len(splits['test'][1])} test images -> "
            f"{b.data_root / TASKS[t].folder}"
        )
    b.stage("data")


def pretrained_base(b: Build) -> None:
    """2. The pretrained tiny CLIP: the committed base, or pretrained on the caption pool."""
    tok = M.get_tokenizer("mini")
    b.from_artefacts = not b.rebuild and b.manifest.get("base_key") == base_key(b.cfg, b.seed)
    if b.from_artefacts:
        b.clip = A.load_base(M.create_clip("mini"), b.artefacts)
        b.log(
            f"  pretrained base: committed artefacts in {b.artefacts} (`--rebuild` pretrains from"
            " scratch)"
        )
    else:
        b.clip = _pretrain(b, tok)
    b.ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_state_dict(b.clip.state_dict(), b.ckpt_dir / "clip_pretrained.safetensors")
    TV.save_image_encoder(b.clip, b.ckpt_dir / "zeroshot.pt")
    b.stage("pretrain")


def _pretrain(b: Build, tok) -> torch.nn.Module:
    """The base pretrained from scratch on the caption pool (`--rebuild`: saved as artefacts)."""
    cfg, seed = b.cfg, b.seed
    if b.rebuild:  # the folder will hold exactly what this build makes
        for old in list(b.artefacts.glob("*.safetensors")) + [b.artefacts / A.MANIFEST]:
            old.unlink(missing_ok=True)
    shares = {k: v[1] for k, v in P.POOL_GROUPS.items()}
    pool = []
    for gi, (name, (gen, share)) in enumerate(P.POOL_GROUPS.items()):
        n = int(cfg["pool_n"] * share / sum(shares.values()))
        (x, y), names = gen(np.random.default_rng([seed, 100 + gi]), n)
        pool.append(dict(name=name, images=x, labels=y, names=names, templates=P.POOL_TEMPLATES))
    b.log(
        f"  pretraining pool: {sum(len(p['labels']) for p in pool)} images in {len(pool)}"
        " caption groups"
    )
    b.stage("pool")
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
        log=b.log,
        fixed_scale=cfg["logit_scale"],
    )
    clip.eval()
    # as a loaded base has it (the fixed logit scale was frozen for training only)
    clip.requires_grad_(True)
    # rows of tokens no caption or prompt uses got no gradient, only weight decay: zero them
    # (see artefacts.py)
    token_ids = A.used_token_ids(tok, _all_texts(pool))
    A.prune_token_embedding(clip, token_ids)
    if b.rebuild:
        A.save_base(clip, token_ids, b.artefacts)
    return clip


def zeroshot_heads(b: Build) -> None:
    """3. Each task's zero-shot head from the text tower (or the documented probe fallback)."""
    tok = M.get_tokenizer("mini")
    clip, cfg = b.clip, b.cfg
    for t in b.tasks:
        tr, te = b.data[t]["splits"]["train"], b.data[t]["splits"]["test"]
        text_w = H.zeroshot_weights(clip, tok, b.data[t]["classnames"], b.data[t]["templates"])
        text_acc = _acc(clip.visual, text_w, *te)
        probe, clf = _linear_probe(clip.visual, tr, te)
        if cfg["heads"] == "text":
            w = text_w
        else:  # documented fallback: frozen probe head, unit-norm class rows times exp(logit_scale)
            rows = F.normalize(torch.tensor(clf.coef_, dtype=torch.float32), dim=-1)
            w = rows * clip.logit_scale.exp().detach()
        b.heads[t] = w
        TV.save_classification_head(w, b.ckpt_dir / f"head_{t}.pt")
        zs = _acc(clip.visual, w, *te)
        classes = len(b.data[t]["classnames"])
        b.per_task[t] = dict(
            zeroshot=zs, text_zeroshot=text_acc, linear_probe=probe, classes=classes
        )
        b.log(
            f"  {t}: head ({cfg['heads']}) {zs * 100:.1f}, text zero-shot {text_acc * 100:.1f}, "
            f"linear probe on pretrained features {probe * 100:.1f}"
        )
    b.stage("heads")


def _fine_tune(b: Build, heads: list, splits: list, seed: int) -> dict[str, torch.Tensor]:
    """The float16-rounded task vector of the image tower fine-tuned on `splits` with `heads`."""
    tuned = copy.deepcopy(b.clip)
    cfg = b.cfg
    TR.finetune_visual(
        tuned.visual,
        heads,
        splits,
        cfg["expert_steps"],
        batch=cfg["expert_batch"],
        lr=cfg["expert_lr"],
        wd=cfg["expert_wd"],
        seed=seed,
    )
    theta0 = b.clip.visual.state_dict()
    return A.round_task_vector({k: v - theta0[k] for k, v in tuned.visual.state_dict().items()})


def _save_expert(b: Build, tau: dict[str, torch.Tensor], folder: str) -> torch.nn.Module:
    """theta_0 + tau written as `<checkpoints>/<folder>/finetuned.pt`; the expert model."""
    theta0 = {k: v.detach().clone() for k, v in b.clip.visual.state_dict().items()}
    expert = copy.deepcopy(b.clip)
    expert.visual.load_state_dict({k: theta0[k] + tau[k] for k in theta0})
    expert.eval()
    TV.save_image_encoder(expert, b.ckpt_dir / folder / "finetuned.pt")
    return expert


def experts(b: Build) -> None:
    """4. Each task's expert: the committed task vector, or fine-tuned on its train split; the
    expert is theta_0 + its float16-rounded task vector, however it was obtained."""
    from tqdm import tqdm

    theta0 = b.clip.visual.state_dict()
    n0 = math.sqrt(sum(float(v.float().pow(2).sum()) for v in theta0.values()))
    for t in tqdm(b.tasks, desc="experts", leave=False):
        te = b.data[t]["splits"]["test"]
        b.expert_keys[t] = expert_key(b.cfg, b.seed, t)
        if b.from_artefacts and b.manifest.get("expert_keys", {}).get(t) == b.expert_keys[t]:
            tau, source = A.load_task_vector(t, b.artefacts), "committed task vector"
        else:
            seed = b.seed * 1000 + T.CANONICAL.index(t)
            tau = _fine_tune(b, [b.heads[t]], [b.data[t]["splits"]["train"]], seed)
            source = "fine-tuned"
            if b.rebuild:
                A.save_task_vector(tau, t, b.artefacts)
        expert = _save_expert(b, tau, t)
        acc = _acc(expert.visual, b.heads[t], *te)
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in tau.values()))
        b.per_task[t].update(expert=acc, tau_over_theta0=norm / n0, expert_source=source)
        b.log(
            f"  {t}: expert {acc * 100:.1f} ({source}; zero-shot"
            f" {b.per_task[t]['zeroshot'] * 100:.1f}), |tau|/|theta_0| {norm / n0:.3f}"
        )
    b.stage("experts")


def multitask(b: Build) -> None:
    """5. Traditional multi-task learning: one image tower fine-tuned on every task's train split
    at once, with the experts' recipe, heads and budget."""
    b.multitask_key = multitask_key(b.cfg, b.seed, b.tasks)
    if b.from_artefacts and b.manifest.get("multitask_key") == b.multitask_key:
        tau, source = A.load_task_vector(MULTITASK, b.artefacts), "committed task vector"
    else:
        seed = b.seed * 1000 + len(T.CANONICAL)
        heads = [b.heads[t] for t in b.tasks]
        tau = _fine_tune(b, heads, [b.data[t]["splits"]["train"] for t in b.tasks], seed)
        source = "fine-tuned"
        if b.rebuild or b.add_missing:
            A.save_task_vector(tau, MULTITASK, b.artefacts)
    model = _save_expert(b, tau, MULTITASK)
    accuracy = {t: _acc(model.visual, b.heads[t], *b.data[t]["splits"]["test"]) for t in b.tasks}
    b.multitask = dict(source=source, accuracy=accuracy)
    b.log(
        f"  multi-task model ({source}): "
        + ", ".join(f"{t} {a * 100:.1f}" for t, a in accuracy.items())
    )
    b.stage("multitask")


def data_digest(splits: dict) -> str:
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
