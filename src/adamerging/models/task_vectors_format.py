"""Writing checkpoints in the task-vectors pickle format, as the public checkpoints are.

The task-vectors format needs the classes `src.modeling.ImageEncoder` and `ClassificationHead`;
these mirror the originals and are registered under that module name only while saving, so files
written here look exactly like the public checkpoints (`loading.load_checkpoint` reads them
without importing these classes). Used for the mini benchmark's checkpoints and the cache of built
heads.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch

from adamerging.models.clip import use_open_clip_quick_gelu
from adamerging.runtime.files import atomic_write


class ImageEncoder(torch.nn.Module):
    """Mirror of task-vectors' `src.modeling.ImageEncoder` (text transformer deleted)."""

    def __init__(self, clip_model: torch.nn.Module, keep_lang: bool = False):
        super().__init__()
        self.model = clip_model
        self.train_preprocess = None
        self.val_preprocess = None
        self.cache_dir = None
        if not keep_lang and hasattr(self.model, "transformer"):
            delattr(self.model, "transformer")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class ClassificationHead(torch.nn.Linear):
    """Mirror of task-vectors' `src.modeling.ClassificationHead`."""

    def __init__(self, normalize: bool, weights: torch.Tensor, biases: torch.Tensor | None = None):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(
            biases.clone() if biases is not None else torch.zeros_like(self.bias)
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)


@contextlib.contextmanager
def _as_src_modeling() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in ("src", "src.modeling")}
    package = types.ModuleType("src")
    package.__path__ = []
    modeling = types.ModuleType("src.modeling")
    modeling.ImageEncoder, modeling.ClassificationHead = ImageEncoder, ClassificationHead
    package.modeling = modeling
    originals = {
        cls: (cls.__module__, cls.__qualname__) for cls in (ImageEncoder, ClassificationHead)
    }
    sys.modules["src"], sys.modules["src.modeling"] = package, modeling
    for cls in originals:
        cls.__module__ = "src.modeling"
    try:
        yield
    finally:
        for cls, (module, _) in originals.items():
            cls.__module__ = module
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def save_image_encoder(clip_model: torch.nn.Module, path: str | Path) -> None:
    """Write a CLIP's image encoder as a task-vectors `ImageEncoder` pickle (text transformer
    deleted).

    Every class the pickle names is task-vectors' `src.modeling.ImageEncoder`, open_clip's or
    torch's (open_clip's QuickGELU, not `clip.QuickGELU`), so the task-vectors and AdaMerging code
    load it.
    """
    clip_model = copy.deepcopy(clip_model).cpu()
    use_open_clip_quick_gelu(clip_model)
    encoder = ImageEncoder(clip_model)
    with _as_src_modeling(), atomic_write(path) as f:
        torch.save(encoder, f)


def save_classification_head(weight: torch.Tensor, path: str | Path) -> None:
    """Write a zero-shot head ([C, d] weights, zero bias, normalize=True) as a task-vectors
    pickle."""
    head = ClassificationHead(True, weight.detach().cpu().float())
    with _as_src_modeling(), atomic_write(path) as f:
        torch.save(head, f)
