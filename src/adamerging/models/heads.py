"""Zero-shot classification heads: loaded from `head_<Task>.pt`, or built from the text tower."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adamerging.checkpoints.loading import LoadedCheckpoint, load_checkpoint
from adamerging.runtime.errors import CheckpointError


@dataclass
class Head:
    """logits = normalize(features) @ weight.T + bias, as task-vectors' ClassificationHead."""

    weight: torch.Tensor  # [C, d], already times exp(logit_scale)
    bias: torch.Tensor | None = None
    normalize: bool = True

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = F.normalize(features, dim=-1)
        logits = features @ self.weight.t()
        return logits + self.bias if self.bias is not None else logits

    def to(self, device: str | torch.device) -> Head:
        bias = self.bias.to(device) if self.bias is not None else None
        return Head(self.weight.to(device), bias, self.normalize)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]


def load_head(path: str | Path) -> Head:
    """A `head_<Task>.pt` (task-vectors' pickled ClassificationHead, or any state dict
    `load_checkpoint` reads) as a float32 Head: weight [C, d], bias [C] if present, `normalize` from
    the pickled attribute (default True). Raises CheckpointError when the file does not load or has
    no 2-D `weight`."""
    return head_from_checkpoint(load_checkpoint(path), path)


def head_from_checkpoint(ckpt: LoadedCheckpoint, path: str | Path) -> Head:
    """`load_head` of an already read checkpoint (`path` names it in the error)."""
    sd = ckpt.state_dict
    if "weight" not in sd or sd["weight"].dim() != 2:
        raise CheckpointError(
            f"{path}: a head needs a 2-D 'weight' entry [classes, dim]; found {list(sd)[:5]}"
        )
    return Head(
        sd["weight"].float(),
        sd["bias"].float() if "bias" in sd else None,
        bool(ckpt.attributes.get("normalize", True)),
    )


@torch.no_grad()
def zeroshot_weights(
    clip_model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Per class: encode every template, L2-normalise each, average, L2-normalise; stack; times
    exp(logit_scale). Exactly task-vectors' head construction. Returns [C, d]."""
    clip_model = clip_model.to(device).eval()
    rows = []
    for name in classnames:
        texts = tokenizer([t.replace("{c}", name) for t in templates]).to(device)
        emb = F.normalize(clip_model.encode_text(texts), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows).cpu() * clip_model.logit_scale.exp().cpu()
