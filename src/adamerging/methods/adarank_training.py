"""AdaRank and CART as methods of the registry: `SvdMerge` (the merge), the learner AdaMerging's
loop trains, and the masks file.

`SvdMerge(base, learns=False)` is CART (or Task Arithmetic through its SVD) at the prior and the
initial masks; `learns=True` is AdaRank: `adamerging_step` on `RankMasks` in `loop.Loop` (resume,
the non-finite and out-of-memory guards, evaluation cadence), the final step's hard masks and
lambdas evaluated, saved as `<result>.masks.safetensors` and reloadable with --masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adamerging.checkpoints.hashing import FileHashes
from adamerging.merging.tables import LAYER_WISE, CoefficientTable
from adamerging.methods.adamerging import AdaMerging, Lambdas, LambdasLearner
from adamerging.methods.adarank import (
    RankMasked,
    RankMasks,
    prior,
    rank_fraction,
)
from adamerging.methods.feed import adaptation_subset
from adamerging.methods.job import Job, Outcome
from adamerging.methods.loop import AdaptResult, Loop, ResumeError, naming
from adamerging.methods.plan import plan_for
from adamerging.run.config import RunConfig
from adamerging.run.experts import run_tasks
from adamerging.runtime.files import atomic_write

MASKS_SUFFIX = ".masks.safetensors"
ORACLE_NOTE = (
    "the evaluation with the best average test accuracy, chosen with test labels (the official"
    " code's reported number); not the method's result, which is the final step"
)


def mask_lr(config: RunConfig) -> float:
    """The mask logits' learning rate: --mask-lr, else --lr."""
    return config.lr if config.mask_lr is None else config.mask_lr


class AdaRankLearner(LambdasLearner):
    """AdaMerging's learner over `RankMasks`: the saved state adds the mask logits."""

    name, noun = "AdaRank", "lambdas and masks"

    def __init__(self, run: AdaMerging, base: str):
        super().__init__(run, LAYER_WISE)
        self.label = f"AdaRank ({base.upper()})"
        self.segment["mask_lr"] = mask_lr(run.config)

    def snapshot(self) -> tuple:
        raw, adam, sampler = super().snapshot()
        return raw, self.run.lambdas.logits.detach().clone(), adam, sampler

    def saved(self, snapshot: tuple) -> dict:
        raw, logits, adam, sampler = snapshot
        return {**super().saved((raw, adam, sampler)), "logits": logits}

    def check_resume(self, saved: dict) -> None:
        super().check_resume(saved)
        shape = tuple(self.run.lambdas.logits.shape)
        if "logits" not in saved or tuple(saved["logits"].shape) != shape:
            raise ResumeError(
                f"cannot resume: the saved state holds no mask logits of shape {shape}"
            )

    def restore(self, saved: dict) -> None:
        with torch.no_grad():
            self.run.lambdas.logits.copy_(saved["logits"])
        super().restore(saved)
        self.run.optimizer.param_groups[1]["lr"] = mask_lr(self.run.config)

    def encoder(self):
        return self.run.merged.encoder(self.run.lambdas.hard(), self.run.config.precision)

    def table(self) -> CoefficientTable:
        return CoefficientTable(self.run.lambdas.hard()[0].cpu().clone(), self.names, self.entries)


def learn(job: Job, masked: RankMasked, masks: RankMasks, base: str) -> AdaptResult:
    """`config.steps` AdaRank steps on the problem's unlabeled test images: one Adam over lambdas
    (--lr) and mask logits (--mask-lr), AdaMerging's step and loop."""
    config = job.config
    optimizer = torch.optim.Adam(
        [
            {"params": [masks.raw], "lr": config.lr},
            {"params": [masks.logits], "lr": mask_lr(config)},
        ]
    )
    run = AdaMerging(
        masked,
        masks,
        optimizer,
        adaptation_subset(job.problem.data, config.adapt_fraction, config.seed),
        job.problem.normalize,
        config,
        torch.Generator().manual_seed(config.seed),
        job.ranks,
        plan_for(config, masked.device),
    )
    learner = AdaRankLearner(run, base)
    state = job.state_file()
    with naming(state):
        resume = state.load() if config.resume else None
        return Loop(learner, config, job.evaluate, resume, state.save, job.ranks, job.log).run()


@dataclass(frozen=True)
class SvdMerge:
    """The merge of CART (`learns` False: the prior and the initial masks) and AdaRank (`learns`
    True) on `base` ("ta" or "cart"); with --masks, a saved AdaRank result evaluated."""

    base: str
    learns: bool
    takes_table: bool = field(default=False, init=False)
    granularity: str = field(default=LAYER_WISE, init=False)  # of its lambdas table

    def __call__(self, job: Job) -> Outcome:
        config = job.config
        masked = RankMasked(job.merged, self.base)
        rho = rank_fraction(config, self.base)
        lambdas = Lambdas(len(masked.entries), masked.num_tasks, prior(config, self.base), False)
        masks = RankMasks(lambdas, masked.initial_logits(rho), config.mask_temperature)
        masks = masks.to(masked.device)
        adaptation = None
        if config.masks:
            load_masks(config.masks, masks)
        elif self.learns:
            adaptation = learn(job, masked, masks, self.base)
        learned = masks.hard()
        with torch.no_grad():
            params = masked.params(learned)
        last = adaptation.trajectory[-1] if adaptation and adaptation.trajectory else {}
        accuracy = last.get("accuracy") or job.evaluate(job.merged.bind(params, config.precision))
        record = self.record(job, masked, masks, rho, adaptation)
        if self.learns and not config.masks and job.ranks.is_main:
            path = config.output_dir / f"{job.result_name}{MASKS_SUFFIX}"
            save_masks(masks, path, config.model, job.problem.tasks, self.base)
            record["masks_file"] = str(path)
        table = CoefficientTable(learned[0].cpu().clone(), job.problem.tasks, job.problem.entries)
        return Outcome(
            accuracy, table=table, params=params, adaptation=adaptation, record={"adarank": record}
        )

    def record(
        self,
        job: Job,
        masked: RankMasked,
        masks: RankMasks,
        rho: float,
        adaptation: AdaptResult | None,
    ) -> dict:
        """The results JSON's "adarank": settings, each task's kept share of components, the SVD's
        cost and, for a learned run, the best evaluation by test labels (labelled an oracle)."""
        config = job.config
        kept = masks.hard()[1].mean(dim=1).tolist() if masked.width else []
        out = {
            "base": self.base,
            "rank_fraction": rho,
            "prior": prior(config, self.base),
            "mask_temperature": config.mask_temperature,
            "mask_lr": mask_lr(config),
            "decomposed_entries": len(masked.factors),
            "kept_components": dict(zip(job.problem.tasks, (round(k, 6) for k in kept))),
            "svd_seconds": round(masked.svd_seconds, 3),
            "factor_bytes": masked.factor_bytes,
            "dense_bytes": sum(job.merged.tau[name].numel() * 4 for name in masked.factors),
        }
        if config.masks:
            out["masks_file"] = FileHashes(None).record(config.masks, fmt="safetensors")
        evaluated = [e for e in (adaptation.trajectory if adaptation else []) if "accuracy" in e]
        if evaluated:
            best = max(evaluated, key=lambda e: sum(e["accuracy"].values()))
            out["oracle_best_evaluation"] = {
                "step": best["step"],
                "average": sum(best["accuracy"].values()) / len(best["accuracy"]),
                "note": ORACLE_NOTE,
            }
        return out

    def check(self, config: RunConfig, method: str) -> None:
        """One-line errors before anything loads: --masks with CART (nothing learned), a masks file
        of another model, task list or base."""
        if not config.masks:
            return
        if not self.learns:
            raise ValueError(f"--masks: {method} learns no masks; evaluate it with adarank")
        check_masks_file(config, self.base)


def save_masks(masks: RankMasks, path: Path, model: str, tasks: list[str], base: str) -> None:
    """The learned lambdas [R, T] and hard masks [T, K] (uint8) as a safetensors file, with the
    metadata a reload checks."""
    from safetensors.torch import save

    lambdas, gates = masks.hard()
    tensors = {"lambdas": lambdas.cpu().contiguous(), "masks": gates.to(torch.uint8).cpu()}
    meta = {"model": model, "tasks": json.dumps(tasks), "base": base, "format": "adarank-masks"}
    with atomic_write(path) as f:
        f.write(save(tensors, metadata=meta))


def check_masks_file(config: RunConfig, base: str) -> None:
    """ValueError (one line, naming the file and what differs) unless --masks was saved by AdaRank
    for this model, task list and base."""
    from safetensors import safe_open

    path = config.masks
    if not Path(path).is_file():
        raise FileNotFoundError(f"--masks {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line
        raise ValueError(f"--masks {path}: not an AdaRank masks file ({e})") from e
    expected = {"model": config.model, "tasks": run_tasks(config), "base": base}
    found = {
        "model": meta.get("model"),
        "tasks": json.loads(meta.get("tasks", "null")),
        "base": meta.get("base"),
    }
    for key, want in expected.items():
        if found[key] != want:
            raise ValueError(f"--masks {path}: saved for {key} {found[key]}, this run has {want}")


def load_masks(path: str, masks: RankMasks) -> None:
    """Set `masks` to a masks file's lambdas and hard masks (ValueError on other shapes)."""
    from safetensors.torch import load_file

    saved = load_file(path)
    for name, have in (("lambdas", masks.raw), ("masks", masks.logits)):
        if tuple(saved[name].shape) != tuple(have.shape):
            raise ValueError(
                f"--masks {path}: {name} {tuple(saved[name].shape)}, this model has"
                f" {tuple(have.shape)}"
            )
    with torch.no_grad():
        masks.raw.copy_(saved["lambdas"])
        # hard(): logits > 0 keeps a component
        masks.logits.copy_(saved["masks"].float() * 2 - 1)
