"""The objectives a merge can be learned with, as a registry: a per-image loss on a head's logits.

`OBJECTIVES["entropy"]` is AdaMerging's (Yang et al., ICLR 2024, Sec. 3.2, Eq. 5: the Shannon
entropy of the merged model's prediction on an unlabeled test image); `"supervised"` the
cross-entropy with the test labels, the paper's oracle ablation (Sec. 5). A new objective is one
record here; `--objective` lists the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row: [N, C] -> [N]."""
    logits = logits.float()
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of logits [N, C] against labels [N] per row: [N]."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


@dataclass(frozen=True)
class Objective:
    """A per-image loss on logits [N, C] (and labels [N] where `needs_labels`) -> [N].

    `variant`: the suffix of a learned run's results name and `title` of its row label when it is
    not the method's own objective ("" for entropy).
    """

    name: str
    loss: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_labels: bool = False
    variant: str = ""
    title: str = ""


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("entropy", lambda logits, labels: softmax_entropy(logits)),
        Objective(
            "supervised",
            lambda logits, labels: cross_entropy(logits, labels),
            needs_labels=True,
            variant="_supervised",
            title=" (supervised oracle)",
        ),
    ]
}
