"""Pretraining the tiny CLIP and fine-tuning the experts (CPU, seeded)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adamerging.models.clip import OPENAI_MEAN, OPENAI_STD

# The CLIP validation normalisation (what the pipeline's Normalizer applies to the same images).
MEAN = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [N,32,32,3] -> normalised float [N,3,32,32] (CLIP's mean/std, as open_clip's val
    transform)."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Learning rate at `step`: linear warmup to `base` over the first `warmup` steps, then half a
    cosine down to 0 at `total` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * p))


def encode_text_norm(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """L2-normalised text features [B, d] of token ids [B, context_length]."""
    return F.normalize(model.encode_text(tokens), dim=-1)


def pretrain(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    pool: list[dict[str, Any]],
    steps: int,
    batch: int = 128,
    lr: float = 1e-3,
    wd: float = 0.1,
    warmup: int = 100,
    seed: int = 0,
    log: Callable[[str], Any] = print,
    max_scale: float = 100.0,
    fixed_scale: float | None = None,
) -> list[float]:
    """Image-text pretraining with label-set negatives (UniCL-style): each image's caption competes
    with all captions of its group, every caption drawn with a random template each step.

    pool: list of dicts {images uint8, labels, names (caption phrases), templates}. AdamW with
    cosine_lr; the logit scale is clamped to at most `max_scale`, or fixed to `fixed_scale` (then
    not trained). Trains `model` in place and leaves it in eval mode. Returns the loss of every step
    (cross-entropy per image, nats).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = np.concatenate([p["images"] for p in pool])
    G = np.concatenate([np.full(len(p["labels"]), i) for i, p in enumerate(pool)])
    Y = np.concatenate([p["labels"] for p in pool])
    if fixed_scale is not None:  # CLIP's final temperature (OpenAI CLIP: exp(logit_scale) = 100)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(fixed_scale))
        model.logit_scale.requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd
    )
    model.train()
    t0 = time.time()
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="pretrain", mininterval=5, leave=False)
    hist = []
    for step in bar:
        for pg in opt.param_groups:
            pg["lr"] = cosine_lr(step, steps, lr, warmup)
        idx = rng.integers(0, len(X), batch)
        x = to_tensor(X[idx])
        if rng.random() < 0.5:  # cheap augmentation: small random shifts
            dx, dy = rng.integers(-2, 3, 2)
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
        f = F.normalize(model.encode_image(x), dim=-1)
        scale = model.logit_scale.exp().clamp(max=max_scale)
        loss = _caption_loss(model, tokenizer, pool, f, scale, G[idx], Y[idx], rng) / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(max_scale))
        hist.append(loss.item())
        if (step + 1) % 250 == 0:
            log(
                f"  pretrain step {step + 1}/{steps} loss {np.mean(hist[-250:]):.3f}"
                f" ({time.time() - t0:.0f}s)"
            )
    model.eval()
    return hist


def _caption_loss(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    pool: list[dict[str, Any]],
    features: torch.Tensor,
    scale: torch.Tensor,
    groups: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The summed cross-entropy of each image's caption against every caption of its group (one
    template drawn per group, in group order), for a batch of L2-normalised image `features`."""
    loss = 0.0
    for gi in np.unique(groups):
        p = pool[gi]
        tpl = p["templates"][rng.integers(len(p["templates"]))]
        te = encode_text_norm(model, tokenizer([tpl.replace("{c}", n) for n in p["names"]]))
        m = torch.from_numpy(groups == gi)
        logits = scale * features[m] @ te.t()
        loss = loss + F.cross_entropy(
            logits, torch.from_numpy(labels[groups == gi]), reduction="sum"
        )
    return loss


def finetune_visual(
    visual: torch.nn.Module,
    heads: Sequence[torch.Tensor],
    data: Sequence[tuple[np.ndarray, np.ndarray]],
    steps: int,
    batch: int = 64,
    lr: float = 5e-4,
    wd: float = 0.01,
    warmup: int | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """Task-vectors recipe: fine-tune the image tower with the zero-shot heads frozen (CE, AdamW,
    cosine).

    One task: an expert. Several (traditional multi-task learning): every step draws `batch` images
    of each task and minimises the mean of the tasks' losses, so each task sees what its expert saw.
    heads[i]: [C, d] (logits = normalised features @ head.T); data[i]: images uint8 [N, 32, 32, 3],
    labels int64 [N]; warmup defaults to steps / 10. Trains `visual` in place and returns it, in
    eval mode.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    warmup = warmup if warmup is not None else max(1, steps // 10)
    opt = torch.optim.AdamW(visual.parameters(), lr=lr, weight_decay=wd)
    visual.train()
    targets = [torch.from_numpy(labels) for _, labels in data]
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = cosine_lr(step, steps, lr, warmup)
        losses = []
        for head_w, (images, _), y in zip(heads, data, targets):
            idx = rng.integers(0, len(images), batch)
            f = F.normalize(visual(to_tensor(images[idx])), dim=-1)
            losses.append(F.cross_entropy(f @ head_w.t(), y[idx]))
        # one task: exactly the expert's loss
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    visual.eval()
    return visual
