"""Reading Hugging Face CLIP checkpoints (`transformers` layout) as open_clip state dicts.

Most CLIP checkpoints people merge today are Hugging Face folders: `openai/clip-vit-base-patch32`
(a `CLIPModel`) and FusionBench's fine-tuned `tanganke/clip-vit-base-patch32_<task>` (a
`CLIPVisionModel`: the vision tower only, no projection). A folder holds `config.json` and
`model.safetensors` (or `pytorch_model.bin`). This module renames their tensors into the open_clip
CLIP layout the rest of the package uses, so every method runs on them unchanged (the way back, for
`--save-format hf`, is `hf_export`). It needs neither `transformers` nor the network: plain
functions over state dicts (`transformers` is a test-only dependency, used to check the conversion
against the real models).

The key tables and the conversion: `hf_keys.py`.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adamerging.checkpoints.hf_keys import (
    has_hf_keys,
    has_open_clip_keys,
    hf_to_open_clip,
    num_layers,
)
from adamerging.checkpoints.loading import load_checkpoint
from adamerging.runtime.errors import CheckpointError

log = logging.getLogger(__name__)


CONFIG_FILE = "config.json"


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a Hugging Face folder, as a dict."""
    with open(Path(path) / CONFIG_FILE, encoding="utf-8") as f:
        return json.load(f)


def fill_from(
    partial: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """Complete a vision-only state dict with the reference's (pretrained) entries, in its order.

    `reference` may be open_clip-keyed or in the task-vectors encoder layout (`model.*`); `partial`
    is open_clip-keyed (the output of `hf_to_open_clip`) and gets the `model.` prefix if needed
    (its text transformer, which that layout lacks, is then dropped, so a whole CLIPModel passes
    through unchanged). Other entries of `partial` that the reference lacks are an error.
    """
    if all(k.startswith("model.") for k in reference) and not any(
        k.startswith("model.") for k in partial
    ):
        partial = {"model." + k: v for k, v in partial.items() if not k.startswith("transformer.")}
    unexpected = [k for k in partial if k not in reference]
    if unexpected:
        raise CheckpointError(
            f"entries not in the reference model: {unexpected[:4]} ({len(unexpected)})"
        )
    return OrderedDict((k, partial.get(k, v)) for k, v in reference.items())


def _text_tower(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    # Everything outside the image tower; attn_mask / logit_bias are buffers open_clip may or may
    # not keep.
    return {
        k: tuple(v.shape)
        for k, v in sd.items()
        if not k.startswith("visual.") and k not in ("attn_mask", "logit_bias")
    }


def _describe_text_tower(shapes: Mapping[str, tuple[int, ...]]) -> str:
    token = shapes.get("token_embedding.weight", (0, 0))
    layers = num_layers(shapes, "transformer.resblocks.")
    return (
        f"width {token[-1]}, {layers} layers, context"
        f" {shapes.get('positional_embedding', (0,))[0]}, vocabulary {token[0]}"
    )


def text_tower_difference(
    sd: Mapping[str, torch.Tensor], architecture: Mapping[str, torch.Tensor]
) -> str | None:
    """How the text tower of a whole open_clip-keyed CLIP `sd` differs from `architecture`'s (a CLIP
    state dict): "width 64, 2 layers, ... (the architecture: width 128, ...)", or None when they
    match or `sd` has no text tower (a vision-only checkpoint)."""
    got, want = _text_tower(sd), _text_tower(architecture)
    if not any(k.startswith("transformer.") for k in got) or got == want:
        return None
    return f"{_describe_text_tower(got)} (the architecture: {_describe_text_tower(want)})"


def image_tower(
    sd: Mapping[str, torch.Tensor],
    architecture: Mapping[str, torch.Tensor],
    source: str | Path,
    text_side_from: Mapping[str, torch.Tensor],
) -> OrderedDict[str, torch.Tensor]:
    """The weights to merge from a Hugging Face CLIPModel (open_clip keys, `hf_to_open_clip`).

    Unchanged when its text tower matches `architecture`'s (a CLIP state dict) or it has none. Else,
    logged: its `visual.*` entries, with the text-side leftovers of the encoder layout taken from
    `text_side_from` (theta_0 for an expert, the architecture's for theta_0; see `fill_from`): only
    the image tower is merged (SPEC.md, Models), so the text tower is never used, but it cannot
    build zero-shot heads either: those then need head_<Task>.pt files or --clip-weights
    (`check_text_tower`).
    """
    difference = text_tower_difference(sd, architecture)
    if difference is None:
        return OrderedDict(sd)
    log.warning(
        "%s: its text tower (%s) differs; only the image tower is merged, so it is not used "
        "(zero-shot heads must then come from head_<Task>.pt files or --clip-weights)",
        source,
        difference,
    )
    filled = fill_from(
        OrderedDict((k, v) for k, v in sd.items() if k.startswith("visual.")), text_side_from
    )
    # the reference may hold live parameters
    return OrderedDict((k, v.detach()) for k, v in filled.items())


def check_text_tower(
    sd: Mapping[str, torch.Tensor],
    architecture: Mapping[str, torch.Tensor],
    source: str | Path,
    tasks: list[str],
) -> None:
    """CheckpointError (one line, saying what is needed) when `sd` is to build the zero-shot heads
    of `tasks` but its text tower differs from the architecture's or is absent."""
    if not any(k.startswith("transformer.") for k in sd):
        raise CheckpointError(
            f"{source}: has no text tower to build the zero-shot heads of {tasks} from: give"
            " head_<Task>.pt files for them, or --clip-weights with a whole CLIP of this"
            " architecture"
        )
    difference = text_tower_difference(sd, architecture)
    if difference is not None:
        raise CheckpointError(
            f"{source}: its text tower ({difference}) cannot build the zero-shot heads of {tasks}:"
            " give head_<Task>.pt files for them, or --clip-weights with a whole CLIP of this"
            " architecture"
        )


def is_hf_checkpoint(path: str | Path) -> bool:
    """A folder with config.json and model.safetensors or pytorch_model.bin."""
    path = Path(path)
    return (
        path.is_dir()
        and (path / CONFIG_FILE).is_file()
        and any((path / w).is_file() for w in WEIGHT_FILES)
    )


def weights_file(path: str | Path) -> Path:
    """The weights file of a Hugging Face folder (model.safetensors preferred); e.g. for cache
    mtimes."""
    path = Path(path)
    found = [path / w for w in WEIGHT_FILES if (path / w).is_file()]
    if not (path / CONFIG_FILE).is_file() or not found:
        sharded = [p.name for p in path.glob("*.index.json")] if path.is_dir() else []
        hint = f"; sharded weights ({sharded[0]}) are not supported" if sharded else ""
        raise CheckpointError(
            f"{path}: expected a Hugging Face folder with {CONFIG_FILE} and one of"
            f" {', '.join(WEIGHT_FILES)}{hint}"
        )
    return found[0]


def load_hf_checkpoint(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a Hugging Face CLIP folder into an open_clip-keyed state dict. Local files only.

    The weights go through `loading.load_checkpoint` (safetensors, or the restricted unpickler
    for pytorch_model.bin), so nothing in the folder can run code.
    """
    path = Path(path)
    weights = weights_file(path)
    try:
        config = read_hf_config(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: not readable JSON ({e})") from e
    sd = load_checkpoint(weights).state_dict
    if has_open_clip_keys(sd) and not has_hf_keys(sd):
        # open_clip's keys in a Hugging Face folder: read as they are
        log.warning(
            "%s: open_clip keys in a Hugging Face folder; read as open_clip weights", weights
        )
        return OrderedDict(sd)
    try:
        return hf_to_open_clip(sd, config)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"{weights}: {e}") from None


def load_weights(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Any supported checkpoint as a state dict: a Hugging Face folder (converted to open_clip
    keys), else a task-vectors pickle or plain state-dict file (keys as stored)."""
    if is_hf_checkpoint(path):
        return load_hf_checkpoint(path)
    return load_checkpoint(path).state_dict
