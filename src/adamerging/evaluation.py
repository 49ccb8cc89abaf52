"""Accuracy of a (merged) image encoder with a task's frozen head on a whole test split."""
from __future__ import annotations

from typing import Callable

import torch

from .heads import Head

Encoder = Callable[[torch.Tensor], torch.Tensor]  # normalised float images -> features


class Normalizer:
    """uint8 [N,3,S,S] -> float, scaled to [0,1] and normalised with CLIP's mean/std, on `device`."""

    def __init__(self, mean, std, device: str | torch.device):
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device, non_blocking=True).float().div_(255.0)
        return (x - self.mean) / self.std


@torch.no_grad()
def predict(encoder: Encoder, head: Head, images: torch.Tensor, normalize: Normalizer, batch_size: int = 128) -> torch.Tensor:
    """Logits for every image (on CPU), evaluated in batches."""
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size])
        out.append(head(encoder(x)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, head.num_classes)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in % of logits [N, C] against labels [N] (NaN when N = 0)."""
    return float((logits.argmax(dim=1) == torch.as_tensor(labels)).float().mean()) * 100.0
