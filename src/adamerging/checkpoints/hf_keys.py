"""The key tables between Hugging Face CLIP checkpoints (`transformers` layout) and open_clip's,
and the conversion of a Hugging Face state dict (and config) to open_clip's.

Key mapping (`<i>`: block index; the same block renames apply to both towers)

| Hugging Face                                      | open_clip                                  |
|---------------------------------------------------|--------------------------------------------|
| vision_model.embeddings.class_embedding           | visual.class_embedding                     |
| vision_model.embeddings.patch_embedding.weight    | visual.conv1.weight                        |
| vision_model.embeddings.position_embedding.weight | visual.positional_embedding                |
| vision_model.pre_layrnorm.* (sic)                 | visual.ln_pre.*                            |
| vision_model.encoder.layers.<i>.*                 | visual.transformer.resblocks.<i>.*         |
| vision_model.post_layernorm.*                     | visual.ln_post.*                           |
| visual_projection.weight  [E, D]                  | visual.proj  [D, E] (transposed)           |
| text_model.embeddings.token_embedding.weight      | token_embedding.weight                     |
| text_model.embeddings.position_embedding.weight   | positional_embedding                       |
| text_model.encoder.layers.<i>.*                   | transformer.resblocks.<i>.*                |
| text_model.final_layer_norm.*                     | ln_final.*                                 |
| text_projection.weight  [E, D]                    | text_projection  [D, E] (transposed)       |
| logit_scale                                       | logit_scale                                |
| block: self_attn.{q,k,v}_proj.{weight,bias}       | attn.in_proj_{weight,bias} (q;k;v stacked) |
| block: self_attn.out_proj.*                       | attn.out_proj.*                            |
| block: layer_norm1.* / layer_norm2.*              | ln_1.* / ln_2.*                            |
| block: mlp.fc1.* / mlp.fc2.*                      | mlp.c_fc.* / mlp.c_proj.*                  |

`*.position_ids` buffers (saved by older `transformers`) are dropped. A `CLIPVisionModel` saved by
`transformers` >= 5 has no `vision_model.` prefix (`embeddings.*`, `encoder.layers.*`, ...); one
saved by 4.x (FusionBench's) has it; both are accepted.

Vision-only checkpoints
-----------------------
They give only `visual.*` (and no `visual.proj` for a `CLIPVisionModel`). The task-vectors layout
also holds six text-side entries, so complete them from the pretrained model with `fill_from`:
the fine-tuning left those untouched (FusionBench fine-tunes the vision tower and classifies with
the pretrained `visual_projection`), so their task vectors are zero, as in the task-vectors files.

Layer-wise coefficient tables for HF checkpoints
------------------------------------------------
Rows follow the open_clip canonical entries, exactly as for the task-vectors checkpoints
(`clip.encoder_state_dict` order: 3 text-side entries, the visual tower, 3 more text-side
entries; 158 rows for ViT-B/32 and B/16, 302 for ViT-L/14), so the published tables apply to HF
checkpoints unchanged. In Hugging Face terms, row j covers the HF tensor(s) mapped to entry j by
the table above: the q, k and v projections of one block share a row (`attn.in_proj_weight`, or
`attn.in_proj_bias`), and a `CLIPVisionModel`'s missing `visual_projection` keeps its pretrained
value whatever its row says (its task vector is zero). FusionBench's own layer-wise tables are
per HF parameter (q, k, v separate, no text rows) and do not load here.

Activation: OpenAI's CLIP uses QuickGELU (`hidden_act: "quick_gelu"` in the config), which is what
`clip.create_clip` builds; a config with any other activation is refused rather than run with the
wrong one.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from adamerging.runtime.errors import CheckpointError

# transformers' defaults (CLIPVisionConfig / CLIPTextConfig): configs may omit fields equal to them.
VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=512,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    projection_dim=512,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


# (hidden_size, patch_size, num_hidden_layers, image_size) of the vision tower -> open_clip name.
_KNOWN_MODELS: dict[tuple[int, int, int, int], str] = {
    (768, 32, 12, 224): "ViT-B-32",
    (768, 16, 12, 224): "ViT-B-16",
    (1024, 14, 24, 224): "ViT-L-14",
}


# Tensors outside the transformer blocks, HF name -> open_clip name.
TOP: dict[str, str] = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}


# nn.Linear stores [out, in]; open_clip applies `x @ proj` with proj [in, out].
TRANSPOSED: dict[str, str] = {
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text_projection",
}


TOWERS: dict[str, str] = {
    "vision_model.encoder.layers.": "visual.transformer.resblocks.",
    "text_model.encoder.layers.": "transformer.resblocks.",
}


# Inside a block (q/k/v are handled apart: three HF tensors -> one in_proj).
BLOCK: dict[str, str] = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}


# A block's entries in open_clip's registration order.
_BLOCK_ORDER = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)


QKV = ("q_proj", "k_proj", "v_proj")  # nn.MultiheadAttention's in_proj rows are q, then k, then v


_QKV_RE = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def sub_config(config: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """The vision or text config with transformers' defaults filled in.

    Accepts a `CLIPConfig` dict (`vision_config` / `text_config`, and the legacy `*_config_dict`
    that override them, as transformers does) or a tower's own config (`clip_vision_model`).
    """
    defaults = VISION_DEFAULTS if tower == "vision" else TEXT_DEFAULTS
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        config = config.to_dict()
    if config.get("model_type") == f"clip_{tower}_model":
        return {**defaults, **config}
    nested = {**(config.get(f"{tower}_config") or {}), **(config.get(f"{tower}_config_dict") or {})}
    return {**defaults, **nested}


def check_activation(config: Mapping[str, Any]) -> None:
    towers = ["vision"] if _model_type(config) == "clip_vision_model" else ["vision", "text"]
    for tower in towers:
        act = sub_config(config, tower)["hidden_act"]
        if act != "quick_gelu":
            raise ValueError(
                f"the {tower} config has hidden_act={act!r}; only OpenAI-style CLIP with"
                " 'quick_gelu' is supported (clip.create_clip builds QuickGELU, and a different"
                " activation would run silently wrong)"
            )


def _model_type(config: Mapping[str, Any]) -> str:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return str(config.get("model_type", "clip"))


def hf_model_name(config: Mapping[str, Any]) -> str:
    """The open_clip architecture of a Hugging Face CLIP config: ViT-B-32, ViT-B-16 or ViT-L-14."""
    check_activation(config)
    v = sub_config(config, "vision")
    shape = (
        int(v["hidden_size"]),
        int(v["patch_size"]),
        int(v["num_hidden_layers"]),
        int(v["image_size"]),
    )
    if shape not in _KNOWN_MODELS:
        known = ", ".join(
            f"{name} (hidden {h}, patch {p}, {n} layers, {s} px)"
            for (h, p, n, s), name in _KNOWN_MODELS.items()
        )
        raise ValueError(
            f"unsupported Hugging Face CLIP vision tower: hidden {shape[0]}, patch {shape[1]},"
            f" {shape[2]} layers, {shape[3]} px; supported: {known}"
        )
    return _KNOWN_MODELS[shape]


def _hf_to_oc_key(key: str) -> tuple[str, int | None, bool]:
    """(open_clip key, q/k/v part index or None, transpose?) for one HF key; KeyError if unknown."""
    if key in TOP:
        return TOP[key], None, False
    if key in TRANSPOSED:
        return TRANSPOSED[key], None, True
    for hf_prefix, oc_prefix in TOWERS.items():
        if key.startswith(hf_prefix):
            index, _, rest = key[len(hf_prefix) :].partition(".")
            m = _QKV_RE.match(rest)
            if index.isdigit() and m:
                return (
                    f"{oc_prefix}{index}.attn.in_proj_{m.group(2)}",
                    "qkv".index(m.group(1)),
                    False,
                )
            if index.isdigit() and rest in BLOCK:
                return f"{oc_prefix}{index}.{BLOCK[rest]}", None, False
    raise KeyError(key)


def num_layers(keys, prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"blocks under {prefix} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def open_clip_keys(
    n_visual: int, n_text: int, *, visual_proj: bool = True, text: bool = True
) -> list[str]:
    """open_clip CLIP state-dict keys in registration (canonical) order.

    With `text=False`: the visual tower only. The task-vectors encoder is this minus
    `transformer.*`, prefixed with `model.` (see clip.encoder_state_dict).
    """

    def block(prefix: str, i: int) -> list[str]:
        return [f"{prefix}{i}.{name}" for name in _BLOCK_ORDER]

    visual = ["visual.class_embedding", "visual.positional_embedding"] + (
        ["visual.proj"] if visual_proj else []
    )
    visual += ["visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias"]
    for i in range(n_visual):
        visual += block("visual.transformer.resblocks.", i)
    visual += ["visual.ln_post.weight", "visual.ln_post.bias"]
    if not text:
        return visual
    text_blocks = [k for i in range(n_text) for k in block("transformer.resblocks.", i)]
    return (
        ["positional_embedding", "text_projection", "logit_scale"]
        + visual
        + text_blocks
        + ["token_embedding.weight", "ln_final.weight", "ln_final.bias"]
    )


def has_hf_keys(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict is in Hugging Face CLIP's keys (`vision_model.*`, `text_model.*`, a
    transformers>=5 CLIPVisionModel's bare `embeddings.*`), not open_clip's."""
    return any(
        k.startswith(("vision_model.", "text_model.", "embeddings.patch_embedding")) for k in sd
    )


def has_open_clip_keys(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict is in open_clip's keys (`visual.*`; task-vectors: `model.visual.*`)."""
    return any(k.startswith(("visual.", "model.visual.")) for k in sd)


def _normalise_hf_keys(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop position_ids buffers; give a transformers>=5 CLIPVisionModel its `vision_model.`
    prefix."""
    sd = {k: v for k, v in hf_sd.items() if not k.endswith("position_ids")}
    if "embeddings.patch_embedding.weight" in sd:
        sd = {
            k if k == "visual_projection.weight" else "vision_model." + k: v for k, v in sd.items()
        }
    return sd


def hf_to_open_clip(
    hf_sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None
) -> OrderedDict[str, torch.Tensor]:
    """A Hugging Face CLIPModel / CLIPVisionModel(WithProjection) state dict -> open_clip CLIP keys.

    Returns the keys in open_clip's canonical order: the whole CLIP for a CLIPModel, `visual.*` only
    for a vision model (without `visual.proj` for a CLIPVisionModel; see `fill_from`). `config` (the
    config.json dict), when given, is checked: QuickGELU, and layer counts equal to the weights'.
    """
    sd = _normalise_hf_keys(hf_sd)
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[str, list[torch.Tensor | None]] = {}
    unknown = []
    for key, value in sd.items():
        try:
            oc_key, part, transpose = _hf_to_oc_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if part is None:
            converted[oc_key] = value.t().contiguous() if transpose else value
        else:
            qkv.setdefault(oc_key, [None, None, None])[part] = value
    if unknown:
        raise CheckpointError(
            f"not a Hugging Face CLIP state dict: unknown keys {unknown[:4]} ({len(unknown)})"
        )
    for oc_key, parts in qkv.items():
        if any(p is None for p in parts):
            absent = [QKV[i] for i, p in enumerate(parts) if p is None]
            raise CheckpointError(
                f"{oc_key}: the Hugging Face checkpoint lacks {absent} of that block"
            )
        converted[oc_key] = torch.cat(parts, dim=0)  # type: ignore[arg-type]

    n_visual = num_layers(converted, "visual.transformer.resblocks.")
    n_text = num_layers(converted, "transformer.resblocks.")
    has_text = any(k.startswith("text_model.") for k in sd) or "text_projection.weight" in sd
    if config is not None:
        check_activation(config)
        towers = {"vision": n_visual} if not has_text else {"vision": n_visual, "text": n_text}
        for tower, n in towers.items():
            want = int(sub_config(config, tower)["num_hidden_layers"])
            if n != want:
                raise CheckpointError(
                    f"the weights have {n} {tower} layers, the config says {want}"
                )
    expected = open_clip_keys(
        n_visual, n_text, visual_proj="visual.proj" in converted, text=has_text
    )
    missing = [k for k in expected if k not in converted]
    if missing:
        raise CheckpointError(
            f"the Hugging Face checkpoint lacks tensors for {missing[:4]} ({len(missing)})"
        )
    return OrderedDict((k, converted[k]) for k in expected)
