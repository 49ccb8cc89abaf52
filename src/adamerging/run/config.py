"""The typed run configuration: every setting of a merging run, its default written once, its flag.

`RunConfig` is a frozen dataclass (hashable, comparable: two runs with equal configs are the same
run); the argparse parser of the scripts is built from its fields' metadata, so a flag, its help and
its default live in one place. Derive variants with `dataclasses.replace(config, steps=20)`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adamerging.checkpoints.layout import FORMATS
from adamerging.datasets.corruptions import CORRUPTIONS
from adamerging.datasets.tasks import DATA_FORMATS
from adamerging.merging.transforms import TRANSFORMS
from adamerging.models.clip import MODEL_NAMES
from adamerging.models.objectives import OBJECTIVES
from adamerging.run.provenance import MAX_NORM_RATIO
from adamerging.runtime.device import PRECISIONS

SURGERY_VARIANTS = ("v1", "deep")

DEFAULT_LAM = 0.3  # Task Arithmetic / TIES scaling coefficient (the authors' fixed value)


GROUPS = {
    "data": "models, data and outputs",
    "merging": "merging",
    "data_merging": "Fisher merging and RegMean (statistics on each task's train split)",
    "adamerging": "AdaMerging (the four adamerging scripts)",
    "diagnostics": "diagnostics (--diagnose; src/diagnose.py)",
    "surgery": "Representation Surgery (after any method with one merged model)",
    "adarank": "AdaRank and CART (task vectors in singular components)",
    "speed": "speed",
}


class Keys(Sequence):
    """The keys of a registry (a dict), read when asked, so entries added later count; less
    `exclude`. A field's `choices`: the flag's and the config's check both see the registry as it
    is."""

    def __init__(self, registry: dict, exclude: Sequence[str] = ()):
        self.registry, self.exclude = registry, tuple(exclude)

    def _keys(self) -> list[str]:
        return [k for k in self.registry if k not in self.exclude]

    def __getitem__(self, i):
        return self._keys()[i]

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self.registry and key not in self.exclude


def _lambdas(text: str) -> tuple[float, ...]:
    """'1,0,0.5,0.5' -> (0.0, 0.5, 1.0): the sweep's coefficients sorted, duplicates (to 6 decimals)
    dropped.

    The sweep needs two distinct values at least (its argmin and Spearman are over them); otherwise
    a one-line argparse error.
    """
    try:
        values = tuple(sorted({round(float(x), 6) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lambdas: comma-separated numbers expected, got {text!r}"
        ) from None
    if len(values) < 2:
        raise argparse.ArgumentTypeError(
            f"--lambdas: at least 2 distinct values expected, got {text!r}"
        )
    return values


def _opt(
    default: Any,
    group: str,
    help: str,
    *,
    flag: str | None = None,
    standalone: str | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    repeat: str | None = None,
) -> Any:
    """A config field with its command-line flag (derived from the field name unless `flag`).

    `standalone`: the flag in src/diagnose.py, where the diagnostics knobs drop their prefix ("" =
    that CLI only). `repeat`: metavar of a repeatable flag (a tuple of strings). `parse`: argparse
    `type`.
    """
    meta = {
        "group": group,
        "help": help,
        "flag": flag,
        "standalone": standalone,
        "choices": choices,
        "parse": parse,
        "repeat": repeat,
    }
    return field(default=default, metadata=meta)


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run of one method (units: images, steps; fractions in (0, 1]).

    Field names are the argparse destinations of the scripts' flags (`--batch-size-adapt` ->
    `batch_size_adapt`). Sequences are tuples so configs stay hashable and comparable.
    """

    # models, data and outputs
    model: str = _opt(
        "ViT-B-32",
        "data",
        "CLIP architecture (`mini`: the embedded mini benchmark)",
        choices=MODEL_NAMES,
    )
    checkpoints: str = _opt(
        "checkpoints",
        "data",
        "root holding <model>/zeroshot.pt, <model>/<Task>/finetuned.pt, <model>/head_<Task>.pt"
        " (or Hugging Face folders <model>/zeroshot/, <model>/<Task>/finetuned/, or TALL masks'"
        " <model>/<Task>Val/nonlinear_finetuned.pt; docs/checkpoints.md)",
    )
    data_location: str | None = _opt(
        None, "data", "root of the datasets (default: data/, or data/mini for --model mini)"
    )
    results_dir: str = _opt("results", "data", "results go to <results-dir>/<model>/<method>.json")
    run_dir: str | None = _opt(
        None,
        "data",
        "write this run's <method>.json and <method>.state.pt here instead of"
        " <results-dir>/<model>/ (the experiments' variant runs)",
    )
    cache_dir: str | None = _opt(
        None, "data", "preprocessed-image and built-head cache (default: <data-location>/.cache)"
    )
    tasks: str | None = _opt(
        None,
        "data",
        "comma-separated tasks, in coefficient-column order, or a suite: 8, 14, 20 (TA8, TALL14,"
        " TALL20; docs/data.md) (default: the 8 paper tasks, or <checkpoints>/<model>/tasks.txt)",
    )
    test_split: str | None = _opt(
        None,
        "data",
        "where the test split is read from: val/ or test/ for SUN397 and DTD (default val/ if"
        " present: task-vectors; the AdaMerging fork reads test/), and/or TASK=SPLIT (also"
        " EuroSAT=val, RESISC45=val)",
    )
    eval_tasks: str | None = _opt(
        None,
        "data",
        "comma-separated unseen tasks: evaluated with the merged model, but neither merged nor"
        " adapted on (generalization)",
    )
    corruption: str | None = _opt(
        None, "data", "corrupt every test image first (robustness): " + ", ".join(CORRUPTIONS)
    )
    checkpoint_format: str = _opt(
        "auto",
        "data",
        "task-vectors files (zeroshot.pt, <Task>/finetuned.pt), Hugging Face CLIP folders"
        " (zeroshot/, <Task>/finetuned/ with config.json), or detect",
        choices=FORMATS,
    )
    data_format: str = _opt(
        "auto",
        "data",
        "task-vectors folder layouts, local Hugging Face dataset copies (README.md + parquet"
        " shards, or save_to_disk) in the task folders, or detect per task",
        choices=DATA_FORMATS,
    )
    task: tuple[str, ...] = _opt(
        (),
        "data",
        "your own task: an ImageFolder tree DIR/test/<class>/... (optional classnames.txt,"
        " templates.txt); repeatable",
        repeat="NAME=DIR",
    )
    finetuned: tuple[str, ...] = _opt(
        (),
        "data",
        "expert checkpoint of task NAME in any supported format (file or HF folder); repeatable",
        repeat="NAME=PATH",
    )
    clip_weights: str | None = _opt(
        None,
        "data",
        "full open_clip CLIP weights to build missing zero-shot heads from the text tower (default:"
        " <checkpoints>/<model>/clip_pretrained.safetensors if present)",
    )
    rebuild_heads: bool = _opt(
        False,
        "data",
        "ignore the head_<Task>.pt files: build every zero-shot head from the text tower"
        " (--clip-weights), e.g. when a head file belongs to another architecture or dataset",
    )
    allow_duplicate_experts: bool = _opt(
        False,
        "data",
        "merge two tasks whose experts are the same file or have near-identical task vectors (a"
        " warning instead of an error)",
    )
    allow_foreign_experts: bool = _opt(
        False,
        "data",
        "merge experts whose task vector is implausible for a fine-tuning of this zeroshot model"
        f" (zero, or ||tau|| / ||theta_0|| > {MAX_NORM_RATIO:g}; a warning instead of an error)",
    )
    device: str = _opt(default_device(), "data", "compute device")
    batch_size: int = _opt(128, "data", "evaluation batch size")
    seed: int = _opt(0, "data", "seed for sampling and initialisation")
    save_merged: str | None = _opt(
        None, "data", "write the merged image encoder here (see --save-format)"
    )
    save_format: str = _opt(
        "state-dict",
        "data",
        "--save-merged as a plain state dict (.safetensors or weights-only .pt, by suffix) or as a"
        " Hugging Face CLIPVisionModel folder (config.json + model.safetensors)",
        choices=("state-dict", "hf"),
    )
    overwrite: bool = _opt(
        False, "data", "replace an existing results file instead of writing beside it"
    )
    no_progress: bool = _opt(False, "data", "no progress bars")
    tensorboard: str | None = _opt(
        None,
        "data",
        "also write TensorBoard curves (loss per step, accuracies per evaluation, lambdas'"
        " mean/min/max per task and block) to <this folder>/<model>/<method>/; needs the"
        " tensorboard package",
        flag="--tensorboard",
    )
    # merging
    lam: float | None = _opt(
        None,
        "merging",
        f"scaling coefficient for Task Arithmetic / TIES (default {DEFAULT_LAM}; weight averaging:"
        " 1/T)",
        parse=float,
    )
    ties_k: float = _opt(
        0.2, "merging", "TIES: fraction of each task vector kept (top-k by magnitude)"
    )
    ties_combine: str = _opt(
        "sum",
        "merging",
        "TIES: disjoint sum (the authors' code) or disjoint mean (the TIES paper)",
        choices=("sum", "mean"),
    )
    coefficients: str | None = _opt(
        None,
        "merging",
        "evaluate a fixed table instead of learning one: 'published' (the authors') or a JSON"
        " written by this repo",
    )
    # Fisher merging / RegMean: defaults of FusionBench's clip_fisher_merging.yaml /
    # clip_regmean.yaml
    train_images: int = _opt(
        256,
        "data_merging",
        "images per task drawn (seeded) from its train split for the Fisher / Gram statistics"
        " (FusionBench: 256)",
    )
    train_batch_size: int = _opt(
        32,
        "data_merging",
        "images per batch of those statistics (FusionBench: 32; Fisher merging squares each batch's"
        " gradient, so its estimate depends on it)",
    )
    fisher_floor: float = _opt(
        1e-6,
        "data_merging",
        "Fisher merging: added to every Fisher entry before weighting (FusionBench's"
        " minimal_fisher_weight)",
    )
    regmean_ratio: float = _opt(
        0.95,
        "data_merging",
        "RegMean: non-diagonal entries of each Gram matrix scaled by this (FusionBench's"
        " reduce_non_diagonal_ratio; 1 = plain RegMean)",
    )
    # AdaMerging
    steps: int = _opt(500, "adamerging", "optimizer steps")
    lr: float = _opt(1e-3, "adamerging", "Adam learning rate")
    init: float = _opt(0.3, "adamerging", "initial merging coefficient lambda of every task")
    batch_size_adapt: int = _opt(16, "adamerging", "images per unlabeled test batch")
    batches_per_step: int = _opt(2, "adamerging", "batches per task per step")
    no_clamp: bool = _opt(False, "adamerging", "do not clamp lambdas to [0, 1] in the forward")
    eval_every: int = _opt(
        0, "adamerging", "also evaluate every N steps (trajectory); 0: only at start and end"
    )
    adapt_fraction: float = _opt(
        1.0,
        "adamerging",
        "fraction of each task's test images the adaptation may draw from (seeded subset;"
        " evaluation always uses all)",
    )
    objective: str = _opt(
        "entropy",
        "adamerging",
        "entropy (AdaMerging) or cross-entropy with test labels (the paper's supervised oracle"
        " ablation); any objective of models/objectives.py",
        choices=Keys(OBJECTIVES),
    )
    adapt_mode: str = _opt(
        "auto",
        "adamerging",
        "fused: one forward and backward over all tasks' images per step; chunked: --adapt-chunk"
        " images at a time (same lambdas gradient, the memory of one chunk); per-task: one task's"
        " images at a time; auto: fused when it fits the GPU's free memory, else chunked (measured"
        " on the first step; on the CPU: fused)",
        choices=("auto", "fused", "chunked", "per-task"),
    )
    adapt_chunk: int = _opt(
        0,
        "adamerging",
        "images per chunk in chunked mode (0: as many as fit the GPU's free memory, measured "
        "on the first step; on the CPU one batch)",
    )
    save_every: int = _opt(
        50,
        "adamerging",
        "save lambdas + optimizer state every N steps (also on Ctrl-C and on a NaN), for --resume",
    )
    resume: bool = _opt(
        False,
        "adamerging",
        "continue from <method>.state.pt beside the run's result (<results-dir>/<model>/, or"
        " --run-dir); --lr, --steps, cadence, output and speed flags may change, the others must"
        " match",
    )
    # diagnostics
    diagnose: bool = _opt(
        False,
        "diagnostics",
        "before adapting, check on a labeled test sample whether entropy tracks the loss on these"
        " models (as src/diagnose.py) and print the verdict",
    )
    diagnose_samples: int = _opt(
        256, "diagnostics", "labeled test samples per task (seeded subset)", standalone="--samples"
    )
    diagnose_lambdas: tuple[float, ...] = _opt(
        tuple(round(0.1 * i, 1) for i in range(11)),
        "diagnostics",
        "Task Arithmetic coefficients to sweep, comma-separated (default 0,0.1,...,1.0)",
        standalone="--lambdas",
        parse=_lambdas,
    )
    diagnose_spearman: float = _opt(
        0.8,
        "diagnostics",
        "minimum Spearman(entropy, loss) per task and pooled",
        flag="--diagnose-spearman-threshold",
        standalone="--spearman-threshold",
    )
    diagnose_lambda_slack: float = _opt(
        0.2,
        "diagnostics",
        "maximum distance between the entropy-minimising and the accuracy-maximising lambda",
        standalone="--lambda-slack",
    )
    vectors: str = _opt(
        "plain",
        "diagnostics",
        "plain task vectors (AdaMerging) or TIES-selected ones (AdaMerging++); any transform of"
        " merging/transforms.py",
        standalone="",
        choices=Keys(TRANSFORMS, exclude=("none",)),
    )
    # Representation Surgery: defaults of the authors' code (EnnengYang/RepresentationSurgery)
    surgery: str | None = _opt(
        None,
        "surgery",
        "train each task's surgery module on the merged model's features against its expert's, then"
        " evaluate through them: v1 on the final feature (Yang et al., ICML 2024), deep after every"
        " block as well (SurgeryV2)",
        choices=SURGERY_VARIANTS,
    )
    surgery_rank: int = _opt(16, "surgery", "rank r of each module (W_down [r, width])")
    surgery_steps: int = _opt(500, "surgery", "iterations (each visits every task in order)")
    surgery_lr: float = _opt(1e-3, "surgery", "Adam learning rate of the modules")
    surgery_batch: int = _opt(16, "surgery", "images per unlabeled test batch")
    surgery_batches: int = _opt(2, "surgery", "batches per task per iteration (one step each)")
    surgery_features: str = _opt(
        "auto",
        "surgery",
        "cached: the merged and expert features of every adaptation image computed once (exact:"
        " both models are frozen; v1 only); on-the-fly: a forward per batch; auto: cached for v1",
        choices=("auto", "cached", "on-the-fly"),
    )
    surgery_stale_momentum: bool = _opt(
        False,
        "surgery",
        "zero the modules' gradients instead of dropping them before each step, so Adam keeps"
        " moving every task's modules on stale momentum: the authors' torch 1.x environment (their"
        " logs)",
    )
    surgery_modules: str | None = _opt(
        None,
        "surgery",
        "evaluate with the modules saved by an earlier run (<result>.surgery.safetensors) instead"
        " of training them",
    )
    # AdaRank / CART: defaults of the authors' configs (david3684/AdaRank)
    rank_fraction: float | None = _opt(
        None,
        "adarank",
        "rho in (0, 1]: each task vector's leading singular components CART keeps and AdaRank's"
        " masks start on (default: 1.0 on Task Arithmetic, 0.16 on CART)",
        parse=float,
    )
    mask_temperature: float = _opt(
        10.0, "adarank", "T of the masks' sigmoid(logits / T) (straight-through), > 0"
    )
    mask_lr: float | None = _opt(
        None,
        "adarank",
        "Adam learning rate of the mask logits (default: --lr; 0 freezes them)",
        parse=float,
    )
    cart_prior: float | None = _opt(
        None,
        "adarank",
        "CART's lambda of every centred task vector at the start (default 2.3; ViT-L-14: 3.0)",
        parse=float,
    )
    masks: str | None = _opt(
        None,
        "adarank",
        "evaluate the lambdas and hard masks saved by an earlier AdaRank run"
        " (<result>.masks.safetensors) instead of learning them",
    )
    # speed
    precision: str = _opt(
        "fp32",
        "speed",
        "fp32: IEEE float32 matmuls and convolutions (TF32 off, set explicitly); tf32: TF32 tensor"
        " cores on CUDA; bf16: bfloat16 autocast for the encoder. The merge and the lambdas"
        " gradient stay IEEE fp32 in every mode",
        choices=PRECISIONS,
    )
    checkpointing: bool = _opt(
        False, "speed", "activation checkpointing in the encoder (ViT-L/14 on a 24 GB GPU)"
    )
    compile: bool = _opt(
        False,
        "speed",
        "torch.compile the encoder forward (the same lambdas gradients as eager, tested on the CPU;"
        " its first step compiles, tens of seconds)",
    )
    micro_batch_size: int = _opt(
        8,
        "speed",
        "Fisher merging: images per forward/backward within a --train-batch-size batch, whose"
        " gradient is summed over them (memory only)",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is not None and value is not None and value not in choices:
                raise ValueError(
                    f"config field {f.name!r} ({flag_of(f)}) must be one of {list(choices)}, got"
                    f" {value!r}"
                )
        for name, ok, expected in (
            ("train_images", self.train_images >= 1, ">= 1"),
            ("train_batch_size", self.train_batch_size >= 1, ">= 1"),
            ("micro_batch_size", self.micro_batch_size >= 1, ">= 1"),
            ("fisher_floor", self.fisher_floor >= 0, ">= 0"),
            ("regmean_ratio", 0 <= self.regmean_ratio <= 1, "in [0, 1]"),
            ("surgery_rank", self.surgery_rank >= 1, ">= 1"),
            ("surgery_steps", self.surgery_steps >= 0, ">= 0"),
            ("surgery_batch", self.surgery_batch >= 1, ">= 1"),
            ("surgery_batches", self.surgery_batches >= 1, ">= 1"),
            (
                "rank_fraction",
                self.rank_fraction is None or 0 < self.rank_fraction <= 1,
                "in (0, 1]",
            ),
            ("mask_temperature", self.mask_temperature > 0, "> 0"),
            ("mask_lr", self.mask_lr is None or self.mask_lr >= 0, ">= 0"),
        ):
            if not ok:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be {expected}, got {getattr(self, name)}"
                )
        # keep the config hashable when built from lists
        for name in ("task", "finetuned", "diagnose_lambdas"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def progress(self) -> bool:
        """Whether to show progress bars."""
        return not self.no_progress

    @property
    def clamp(self) -> bool:
        """Whether lambdas are clamped to [0, 1] inside the forward (the authors' code)."""
        return not self.no_clamp

    @property
    def images_per_task(self) -> int:
        """Images of each task in one AdaMerging step: --batches-per-step batches of
        --batch-size-adapt."""
        return self.batch_size_adapt * self.batches_per_step

    @property
    def data_root(self) -> Path:
        """Root of the datasets: --data-location, else data/ (data/mini for --model mini)."""
        return Path(self.data_location or ("data/mini" if self.model == "mini" else "data"))

    @property
    def output_dir(self) -> Path:
        """The folder of this run's <method>.json and .state.pt: --run-dir, else
        <results-dir>/<model>."""
        return Path(self.run_dir) if self.run_dir else Path(self.results_dir) / self.model

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def flag_of(f: dataclasses.Field, standalone: bool = False) -> str:
    if standalone and f.metadata["standalone"] is not None:
        return f.metadata["standalone"] or "--" + f.name.replace("_", "-")
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")
