"""Accuracy of a (merged) image encoder with a task's frozen head on a whole test split: the images
go to the device batch by batch (pinned, one batch ahead, on a GPU), the argmax is taken there, one
transfer per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from adamerging.models.heads import Head

Encoder = Callable[[torch.Tensor], torch.Tensor]  # normalised float images -> features


class Normalizer:
    """uint8 [N,3,S,S] -> float, scaled to [0,1] and normalised with CLIP's mean/std, on
    `device`."""

    def __init__(self, mean, std, device: str | torch.device):
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device, non_blocking=True).float().div_(255.0)
        return (x - self.mean) / self.std


def batches(images: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """`images` [N, ...] in consecutive batches on `device`. To a GPU, each batch goes through
    pinned memory asynchronously, the next one while the current one is computed."""
    starts = range(0, len(images), batch_size)
    if device.type != "cuda" or images.device.type != "cpu":
        yield from (images[s : s + batch_size] for s in starts)
        return

    def stage(s: int) -> torch.Tensor:
        return images[s : s + batch_size].pin_memory().to(device, non_blocking=True)

    ahead = stage(0) if len(images) else None
    for s in starts:
        current, ahead = ahead, stage(s + batch_size) if s + batch_size < len(images) else None
        yield current


@torch.no_grad()
def logits_on_device(
    encoder: Encoder,
    head: Head,
    images: torch.Tensor,
    normalize: Normalizer,
    batch_size: int = 128,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits,
) -> torch.Tensor:
    """reduce(logits) of every image, batch by batch, concatenated on the device (float32 logits [N,
    C] by default)."""
    device = getattr(normalize, "device", torch.device("cpu"))
    out = [reduce(head(encoder(normalize(x))).float()) for x in batches(images, batch_size, device)]
    return torch.cat(out) if out else reduce(torch.empty(0, head.num_classes, device=device))


def predict(
    encoder: Encoder, head: Head, images: torch.Tensor, normalize: Normalizer, batch_size: int = 128
) -> torch.Tensor:
    """Logits [N, C] for every image (on CPU: one transfer), evaluated in batches."""
    return logits_on_device(encoder, head, images, normalize, batch_size).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in % of logits [N, C] against labels [N] (NaN when N = 0)."""
    return correct_share(logits.argmax(dim=1), labels)


def correct_share(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Share (%) of predicted classes [N] equal to labels [N], computed where `predicted` lies (one
    transfer)."""
    # no stream sync: float() is the one
    labels = torch.as_tensor(labels).to(predicted.device, non_blocking=True)
    return float((predicted == labels).float().mean()) * 100.0


def evaluate_accuracy(
    encoder: Encoder,
    head: Head,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalizer,
    batch_size: int = 128,
) -> float:
    """Top-1 accuracy (%) on a test split: the argmax taken on the device, one transfer per task."""
    predicted = logits_on_device(
        encoder, head, images, normalize, batch_size, reduce=lambda logits: logits.argmax(dim=1)
    )
    return correct_share(predicted, labels)
