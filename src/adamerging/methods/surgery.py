"""Representation Surgery: a small per-task module that removes the merged model's "representation
bias", trained without labels to bring the merged features back to each task's expert's.

Surgery (Yang et al., "Representation Surgery for Multi-Task Model Merging", ICML 2024; code
github.com/EnnengYang/RepresentationSurgery, `merging_model.AlphaWrapper`): on the image encoder's
output feature z (unnormalised), z_hat = z - W_up,t ReLU(W_down,t z), W_down,t [r, d]
kaiming-uniform (a = sqrt(5)), W_up,t [d, r] zero (so step 0 is exactly the merged model), no
biases. Its deep variant (SurgeryV2, arXiv 2410.14389, github.com/EnnengYang/SurgeryV2,
`ModelWrapper_Surgery_V2`) puts the same module on the residual stream after every block (all
tokens; its output feeds the next block) as well as on the final feature.

Objective (both): the L1 distance (mean over images and dimensions) to the task's own expert on the
same unlabeled test images: of the final feature (v1), and summed with the token-mean of the
residual stream after each block (deep). One Adam over every task's modules (lr 1e-3, default
betas); per iteration each task in order, `--surgery-batches` batches of `--surgery-batch` images,
one optimiser step per batch. The merged model stays frozen. At evaluation each task's features go
through its modules, then its head (which L2-normalises them): surgery needs the task's identity at
inference, as the heads of this benchmark already do.

Where this differs from the authors' code, and why: the expert's features are computed once per
task from its checkpoint (they reload the expert from disk at every iteration: the same numbers); v1
can cache the merged model's features too (`--surgery-features cached`: exact, both models are
frozen and the preprocessing deterministic; the same batches as on the fly); everything is seeded
(module initialisation and batches: their runs are not); widths and block counts come from the
architecture (SurgeryV2 hard-codes 12 blocks of width 768, so it cannot run ViT-L/14);
gradients are dropped, not zeroed, before each step (the torch >= 2.0 `zero_grad` their code meets
today; under the torch 1.x their logs were made with, every task's modules kept moving on stale
momentum: `--surgery-stale-momentum` reproduces that).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from adamerging.merging.encoder import MergedEncoder
from adamerging.runtime.device import autocast

FINAL = "final"  # the module on the image encoder's output feature


class SurgeryModule(torch.nn.Module):
    """z -> z - W_up ReLU(W_down z) on the last dimension (width d): W_down [r, d] kaiming-uniform
    (a = sqrt(5), drawn from `generator`), W_up [d, r] zero."""

    def __init__(self, width: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = torch.nn.Parameter(torch.empty(rank, width))
        self.up = torch.nn.Parameter(torch.zeros(width, rank))
        torch.nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - F.linear(F.relu(F.linear(z, self.down)), self.up)


def positions(visual: torch.nn.Module, variant: str) -> list[tuple[str, int]]:
    """(name, width) of the places a task's modules act on: every block of the visual tower (deep)
    and its output feature."""
    final = [(FINAL, int(visual.output_dim))]
    if variant == "v1":
        return final
    blocks = len(visual.transformer.resblocks)
    return [(f"block_{i}", int(visual.transformer.width)) for i in range(blocks)] + final


class Surgery(torch.nn.Module):
    """Every task's modules: `modules[task][position]` (`positions`), initialised in task order from
    one seeded generator."""

    def __init__(
        self, tasks: Sequence[str], places: Sequence[tuple[str, int]], rank: int, seed: int
    ):
        super().__init__()
        self.tasks, self.places, self.rank = list(tasks), list(places), rank
        generator = torch.Generator().manual_seed(seed)
        self.modules_ = torch.nn.ModuleDict(
            {
                task: torch.nn.ModuleDict(
                    {name: SurgeryModule(width, rank, generator) for name, width in places}
                )
                for task in self.tasks
            }
        )

    def of(self, task: str) -> torch.nn.ModuleDict:
        """`task`'s modules, by position."""
        return self.modules_[task]

    def metadata(self, model: str, variant: str) -> dict[str, str]:
        """What a saved modules file must match to be used: model, tasks, variant, rank, widths."""
        return {
            "model": model,
            "tasks": json.dumps(self.tasks),
            "variant": variant,
            "rank": str(self.rank),
            "places": json.dumps(self.places),
        }


class Hooks:
    """Forward hooks on the visual tower's blocks: each block's output goes through the current
    task's module for it (deep surgery; none: unchanged) and its token mean is recorded.

    The modified output feeds the next block, as in SurgeryV2. Layout-agnostic: the modules act on
    the last (width) dimension; the token mean is over the sequence dimension of open_clip's
    transformer (`batch_first`).
    """

    def __init__(self, visual: torch.nn.Module):
        self.blocks = list(visual.transformer.resblocks)
        self.token_dim = 1 if getattr(visual.transformer, "batch_first", True) else 0
        self.modules: torch.nn.ModuleDict | None = None
        self.means: list[torch.Tensor] = []

    @contextlib.contextmanager
    def on(self, modules: torch.nn.ModuleDict | None) -> Iterator[list[torch.Tensor]]:
        """The hooks active with `modules` (a task's; None: record only); yields the token means."""
        self.modules, self.means = modules, []
        handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]
        try:
            yield self.means
        finally:
            for h in handles:
                h.remove()
            self.modules = None

    def _hook(self, i: int) -> Callable:
        def hook(module: torch.nn.Module, args, output: torch.Tensor) -> torch.Tensor | None:
            name = f"block_{i}"
            changed = None
            if self.modules is not None and name in self.modules:
                output = changed = self.modules[name](output)
            self.means.append(output.mean(dim=self.token_dim))
            return changed

        return hook


def forward(
    merged: MergedEncoder,
    params: dict[str, torch.Tensor],
    images: torch.Tensor,
    modules: torch.nn.ModuleDict | None,
    hooks: Hooks | None,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """The features a task's modules are trained on, for normalised images [N, 3, S, S]: the token
    mean after each block (with `hooks`: deep) and the output feature [N, d], each through the
    task's modules where it has one (None: the plain model's)."""
    context = hooks.on(modules) if hooks is not None else contextlib.nullcontext([])
    with context as means, autocast(merged.device, precision):
        z = merged(params, images).float()
    if modules is not None and FINAL in modules:
        z = modules[FINAL](z)
    return [m.float() for m in means] + [z]


def l1(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """The unweighted sum over positions of the mean absolute difference (SurgeryV2's `l1losses`;
    with one position, v1's `torch.nn.L1Loss`)."""
    return sum(F.l1_loss(o, t) for o, t in zip(outputs, targets))


def encoder_with(
    merged: MergedEncoder,
    params: dict[str, torch.Tensor],
    modules: torch.nn.ModuleDict,
    hooks: Hooks | None,
    precision: str,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """images [N, 3, S, S] -> the task's features through its modules [N, d] (no gradients)."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward(merged, params, x, modules, hooks, precision)[-1]

    return encode


def save_modules(surgery: Surgery, path: Path, model: str, variant: str) -> None:
    """The modules as a safetensors file with the metadata a reload checks."""
    from safetensors.torch import save

    from adamerging.runtime.files import atomic_write

    tensors = {k: v.detach().cpu().contiguous() for k, v in surgery.state_dict().items()}
    data = save(tensors, metadata=surgery.metadata(model, variant))
    with atomic_write(path) as f:
        f.write(data)


def read_metadata(path: str | Path) -> dict[str, str]:
    """A modules file's metadata (its header only); ValueError naming the file when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line
        raise ValueError(f"--surgery-modules {path}: not a modules file of this repo ({e})") from e


def load_modules(path: str | Path, places: Sequence[tuple[str, int]], rank: int) -> Surgery:
    """The Surgery of a modules file (metadata checked before: `check_modules_file`)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    surgery = Surgery(json.loads(meta["tasks"]), places, int(meta["rank"]), seed=0)
    surgery.load_state_dict(load_file(str(path)))
    return surgery


def copy_of(surgery: Surgery) -> Surgery:
    """A detached copy (the modules as of now)."""
    return copy.deepcopy(surgery)
