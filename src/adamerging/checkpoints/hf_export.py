"""Export to Hugging Face: an open_clip CLIP (or a merged image encoder) as a `transformers` folder.

The inverse of `hf`'s conversion, with the same key tables (see its docstring): `open_clip_to_hf`
renames the tensors, `hf_config_from_open_clip` describes the model, and `save_hf_checkpoint` writes
`config.json` + `model.safetensors` that `transformers` loads directly (`--save-merged DIR
--save-format hf`). Like `hf`, it needs neither `transformers` nor the network.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# The key tables live in `hf` only (one place for the mapping); the export reads them backwards.
from adamerging.checkpoints.hf import CONFIG_FILE
from adamerging.checkpoints.hf_keys import (
    BLOCK,
    QKV,
    TEXT_DEFAULTS,
    TOP,
    TOWERS,
    TRANSPOSED,
    VISION_DEFAULTS,
    check_activation,
    sub_config,
)
from adamerging.runtime.errors import CheckpointError
from adamerging.runtime.files import atomic_write

_BLOCK_INVERSE = {oc: hf for hf, oc in BLOCK.items()}


def hf_config_from_open_clip(clip_model: torch.nn.Module) -> dict[str, Any]:
    """A `CLIPModel` config.json dict describing an open_clip CLIP (QuickGELU; e.g. for exporting
    a model for which no Hugging Face config is at hand). Head counts come from the modules, as
    the state dict does not hold them."""
    visual, text_block = clip_model.visual, clip_model.transformer.resblocks[0]
    width = int(visual.class_embedding.shape[0])
    patch = int(visual.conv1.weight.shape[-1])
    grid = int(round((visual.positional_embedding.shape[0] - 1) ** 0.5))
    t_width = int(clip_model.token_embedding.weight.shape[1])
    embed = int(visual.proj.shape[1])
    vision = dict(
        VISION_DEFAULTS,
        hidden_size=width,
        intermediate_size=int(visual.transformer.resblocks[0].mlp.c_fc.weight.shape[0]),
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=int(visual.transformer.resblocks[0].attn.num_heads),
        image_size=grid * patch,
        patch_size=patch,
        projection_dim=embed,
        model_type="clip_vision_model",
    )
    text = dict(
        TEXT_DEFAULTS,
        vocab_size=int(clip_model.token_embedding.weight.shape[0]),
        hidden_size=t_width,
        intermediate_size=int(text_block.mlp.c_fc.weight.shape[0]),
        num_hidden_layers=len(clip_model.transformer.resblocks),
        num_attention_heads=int(text_block.attn.num_heads),
        max_position_embeddings=int(clip_model.positional_embedding.shape[0]),
        projection_dim=embed,
        bos_token_id=49406,
        eos_token_id=49407,
        model_type="clip_text_model",
    )
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": embed,
        "logit_scale_init_value": 2.6592,
        "vision_config": vision,
        "text_config": text,
    }


def open_clip_to_hf(
    oc_sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None
) -> OrderedDict[str, torch.Tensor]:
    """The inverse of `hf_to_open_clip`: open_clip CLIP keys -> Hugging Face keys.

    Also takes the task-vectors encoder layout (`model.*`, as `--save-merged` writes). With the text
    transformer present the result is a `CLIPModel` state dict; without it (a merged image encoder)
    it is a `CLIPVisionModelWithProjection` one (`vision_model.*`, `visual_projection.weight`): the
    text-side leftovers have no place in a vision model and are dropped.
    """
    if config is not None:
        check_activation(config)
    sd = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in oc_sd.items()}
    sd.pop("attn_mask", None)
    sd.pop("logit_bias", None)
    full = any(k.startswith("transformer.resblocks.") for k in sd)
    inverse = {oc: hf for hf, oc in {**TOP, **TRANSPOSED}.items()}
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        if not full and not key.startswith("visual."):
            continue
        if key in inverse:
            hf_key = inverse[key]
            out[hf_key] = value.t().contiguous() if hf_key in TRANSPOSED else value
            continue
        for hf_prefix, oc_prefix in TOWERS.items():
            if key.startswith(oc_prefix):
                index, _, rest = key[len(oc_prefix) :].partition(".")
                if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                    kind = rest.rsplit("_", 1)[1]
                    for name, chunk in zip(QKV, value.chunk(3, dim=0)):
                        out[f"{hf_prefix}{index}.self_attn.{name}.{kind}"] = chunk.contiguous()
                    break
                if rest in _BLOCK_INVERSE:
                    out[f"{hf_prefix}{index}.{_BLOCK_INVERSE[rest]}"] = value
                    break
        else:
            raise CheckpointError(f"not an open_clip CLIP key: {key!r}")
    return out


def save_hf_checkpoint(
    folder: str | Path,
    oc_sd: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    vision_projection: bool = True,
) -> Path:
    """Write an open_clip (or `model.*` encoder) state dict as a Hugging Face folder that
    `transformers` loads: a `CLIPModel` when the text transformer is there, otherwise a
    `CLIPVisionModelWithProjection` (e.g. a merged image encoder), or with `vision_projection=False`
    a `CLIPVisionModel` (FusionBench's layout). `config`: the source model's config.json dict (a
    CLIPModel or vision config; see also `hf_config_from_open_clip`); its sizes must match the
    weights.
    """
    from safetensors.torch import save

    hf_sd = open_clip_to_hf(oc_sd, config)
    if "text_projection.weight" in hf_sd:
        out_config = {**dict(config), "architectures": ["CLIPModel"]}
    else:
        vision = sub_config(config, "vision")
        projection_dim = int(dict(config).get("projection_dim", vision["projection_dim"]))
        if not vision_projection:
            hf_sd.pop("visual_projection.weight", None)
        arch = (
            "CLIPVisionModelWithProjection"
            if "visual_projection.weight" in hf_sd
            else "CLIPVisionModel"
        )
        out_config = {
            **vision,
            "projection_dim": projection_dim,
            "model_type": "clip_vision_model",
            "architectures": [arch],
        }
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in hf_sd.items()}
    with atomic_write(folder / "model.safetensors") as f:
        f.write(save(tensors, metadata={"format": "pt"}))  # transformers wants the format tag
    with atomic_write(folder / CONFIG_FILE, "w") as f:
        json.dump(out_config, f, indent=2)
    return folder
