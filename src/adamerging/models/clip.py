"""Building the CLIP architectures with open_clip, never downloading weights.

The task-vectors checkpoints hold an `ImageEncoder` whose state dict keys are `model.<name>`: the
visual tower plus six text-side leftovers (the text transformer was deleted). We keep exactly that
key set and order (the "canonical entries"), because row j of a published layer-wise coefficient
table applies to entry j.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

OPENAI_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")


MINI_MODEL = "mini"


MODEL_NAMES = OPENAI_MODELS + (MINI_MODEL,)


ENCODER_PREFIX = "model."


VISUAL_PREFIX = "model.visual."


# The CLIP validation normalisation of the OpenAI models (open_clip's OPENAI_DATASET_MEAN / _STD;
# tests/test_models.py checks they agree)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


_CONFIG_DIR = Path(__file__).parent / "configs"


_registered = False


def _open_clip():
    """open_clip, imported on first use (a command's --help and its model list need none of it),
    with the bundled model configs registered."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True
    return open_clip


def create_clip(model_name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An open_clip CLIP with random weights (weights are loaded from files afterwards).

    QuickGELU is forced: the OpenAI weights were trained with it, and a current open_clip builds
    plain GELU for `pretrained=None`, which loads the real checkpoints without error but silently
    lowers every accuracy. Its modules are this file's `QuickGELU` (same numbers, less memory in
    backward).
    """
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; expected one of {', '.join(MODEL_NAMES)}")
    open_clip = _open_clip()
    # open_clip logs a warning for every pretrained=None model; random init is the point here.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(
            model_name, pretrained=None, force_quick_gelu=True, device=device
        )
    finally:
        logger.setLevel(level)
    _use_lean_quick_gelu(model)
    model.eval()
    return model


class _QuickGELUFunction(torch.autograd.Function):
    """x * sigmoid(1.702 x) that saves only x for backward and recomputes the sigmoid there.

    The forward runs open_clip's own operations; the backward runs the operations autograd runs for
    them (mul's `grad * other`, `aten::sigmoid_backward`, `grad * 1.702`, the two paths into x
    summed), so values and gradients are bit-identical. What it saves: the sigmoid's output, one
    tensor the size of the MLP's hidden layer per block, kept for backward by the composite version
    (on ViT-L/14: 257 x 4096 fp32 = 4.2 MB per image and block, 0.1 GB per image over 24 blocks).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(1.702 * x)
        return grad * s + torch.ops.aten.sigmoid_backward(grad * x, s) * 1.702


class QuickGELU(torch.nn.Module):
    """open_clip's QuickGELU, x * sigmoid(1.702 x) on [*] tensors, with less activation memory in
    training; it replaces open_clip's modules of the same name (`create_clip`), so the model still
    reads as QuickGELU, and open_clip's come back before a model is pickled
    (`use_open_clip_quick_gelu`).

    Bit-identical values and gradients (`_QuickGELUFunction`); source: OpenAI CLIP's QuickGELU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuickGELUFunction.apply(x)


def _swap_quick_gelu(model: torch.nn.Module, old: type, new: type) -> None:
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is old:
                setattr(module, name, new())


def _use_lean_quick_gelu(model: torch.nn.Module) -> None:
    _swap_quick_gelu(model, _open_clip().transformer.QuickGELU, QuickGELU)


def use_open_clip_quick_gelu(model: torch.nn.Module) -> None:
    """Put open_clip's own QuickGELU back in place of this file's (in place; neither holds state),
    so a pickled copy of `model` names open_clip's classes only and unpickles wherever open_clip is
    installed."""
    _swap_quick_gelu(model, QuickGELU, _open_clip().transformer.QuickGELU)


def get_tokenizer(model_name: str) -> Callable[..., torch.Tensor]:
    """open_clip's tokenizer for `model_name` (texts -> int64 token ids [B, context_length]), after
    registering the bundled model configs."""
    return _open_clip().get_tokenizer(model_name)


def image_size(clip_model: torch.nn.Module) -> int:
    """Side of the image tower's square input, in pixels (e.g. 224)."""
    size = clip_model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def normalization(clip_model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the CLIP validation transform (OpenAI's values unless the config says
    otherwise)."""
    cfg = getattr(clip_model.visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean", OPENAI_MEAN))
    std = tuple(cfg.get("std", OPENAI_STD))
    return mean, std


def encoder_state_dict(clip_model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The task-vectors ImageEncoder state dict of a CLIP: `model.*` minus the text transformer.

    The order is the module's registration order, which equals the checkpoints' own order (tested
    against the vendored canonical entry lists).
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, tensor in clip_model.state_dict(keep_vars=True).items():
        if name.startswith("transformer.") or name == "logit_bias":
            continue
        out[ENCODER_PREFIX + name] = tensor
    return out


def depth_group(key: str) -> tuple[int, str]:
    """(order, label) of a visual entry (`model.visual.*`; the prefix may be left out): the input
    stem (0, "input"), transformer block i (i + 1, "block i"), or the output head ln_post, proj
    (10000, "output")."""
    name = key[len(VISUAL_PREFIX) :] if key.startswith(VISUAL_PREFIX) else key
    parts = name.split(".")
    if parts[0] == "transformer" and len(parts) > 2 and parts[2].isdigit():
        return int(parts[2]) + 1, f"block {parts[2]}"
    if parts[0] in ("ln_post", "proj"):
        return 10_000, "output"
    return 0, "input"


def load_encoder_weights(
    clip_model: torch.nn.Module,
    encoder_sd: dict[str, torch.Tensor],
    source: str = "",
    assign: bool = False,
) -> None:
    """Copy an encoder state dict into `clip_model`; missing or unexpected keys are named in the
    error.

    `assign=True` makes the module's parameters *be* the given tensors (no copy, dtype and device
    follow them): for a model built with `create_clip(..., device="meta")`, whose own random weights
    never existed. Its text transformer stays on the meta device (shapes only)."""
    expected = encoder_state_dict(clip_model)
    missing = [k for k in expected if k not in encoder_sd]
    unexpected = [k for k in encoder_sd if k not in expected]
    where = f" in {source}" if source else ""
    if missing or unexpected:
        raise KeyError(
            f"encoder weights{where} do not match the architecture: missing"
            f" {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected"
            f" {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    for k, target in expected.items():
        if tuple(encoder_sd[k].shape) != tuple(target.shape):
            raise ValueError(
                f"entry {k}{where}: shape {tuple(encoder_sd[k].shape)}, architecture expects"
                f" {tuple(target.shape)}"
            )
    if assign:
        clip_model.load_state_dict(
            {k[len(ENCODER_PREFIX) :]: encoder_sd[k] for k in expected}, strict=False, assign=True
        )
        return
    with torch.no_grad():
        for k, target in expected.items():
            target.copy_(encoder_sd[k])


def load_clip_weights(
    clip_model: torch.nn.Module, full_sd: dict[str, torch.Tensor], source: str = ""
) -> None:
    """Load a full open_clip CLIP state dict (text tower included), naming missing/unexpected
    keys."""
    result = clip_model.load_state_dict(full_sd, strict=False)
    missing = [k for k in result.missing_keys if k != "attn_mask"]
    if missing or result.unexpected_keys:
        raise KeyError(
            f"CLIP weights {source} do not match the architecture: missing {missing[:5]}"
            f" ({len(missing)}), unexpected {list(result.unexpected_keys)[:5]}"
            f" ({len(result.unexpected_keys)})"
        )
