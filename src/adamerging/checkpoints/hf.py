"""Reading Hugging Face CLIP checkpoints (`transformers` layout) as open_clip state dicts.

Most CLIP checkpoints people merge today are Hugging Face folders: `openai/clip-vit-base-patch32`
(a `CLIPModel`) and FusionBench's fine-tuned `tanganke/clip-vit-base-patch32_<task>` (a
`CLIPVisionModel`: the vision tower only, no projection). A folder holds `config.json` and
`model.safetensors` (or `pytorch_model.bin`). This module renames their tensors into the open_clip
CLIP layout the rest of the package uses, so every method runs on them unchanged (the way back, for
`--save-format hf`, is `hf_export`). It needs neither `transformers` nor the network: plain
functions over state dicts (`transformers` is a test-only dependency, used to check the conversion
against the real models).

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

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adamerging.checkpoints.loading import load_checkpoint
from adamerging.runtime.errors import CheckpointError

log = logging.getLogger(__name__)


CONFIG_FILE = "config.json"


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# transformers' defaults (CLIPVisionConfig / CLIPTextConfig): configs may omit fields equal to them.
_VISION_DEFAULTS: dict[str, Any] = dict(
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


_TEXT_DEFAULTS: dict[str, Any] = dict(
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
_TOP: dict[str, str] = {
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
_TRANSPOSED: dict[str, str] = {
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text_projection",
}


_TOWERS: dict[str, str] = {
    "vision_model.encoder.layers.": "visual.transformer.resblocks.",
    "text_model.encoder.layers.": "transformer.resblocks.",
}


# Inside a block (q/k/v are handled apart: three HF tensors -> one in_proj).
_BLOCK: dict[str, str] = {
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


_QKV = ("q_proj", "k_proj", "v_proj")  # nn.MultiheadAttention's in_proj rows are q, then k, then v


_QKV_RE = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def _sub_config(config: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """The vision or text config with transformers' defaults filled in.

    Accepts a `CLIPConfig` dict (`vision_config` / `text_config`, and the legacy `*_config_dict`
    that override them, as transformers does) or a tower's own config (`clip_vision_model`).
    """
    defaults = _VISION_DEFAULTS if tower == "vision" else _TEXT_DEFAULTS
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        config = config.to_dict()
    if config.get("model_type") == f"clip_{tower}_model":
        return {**defaults, **config}
    nested = {**(config.get(f"{tower}_config") or {}), **(config.get(f"{tower}_config_dict") or {})}
    return {**defaults, **nested}


def _check_activation(config: Mapping[str, Any]) -> None:
    towers = ["vision"] if _model_type(config) == "clip_vision_model" else ["vision", "text"]
    for tower in towers:
        act = _sub_config(config, tower)["hidden_act"]
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
    _check_activation(config)
    v = _sub_config(config, "vision")
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


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a Hugging Face folder, as a dict."""
    with open(Path(path) / CONFIG_FILE, encoding="utf-8") as f:
        return json.load(f)


def _hf_to_oc_key(key: str) -> tuple[str, int | None, bool]:
    """(open_clip key, q/k/v part index or None, transpose?) for one HF key; KeyError if unknown."""
    if key in _TOP:
        return _TOP[key], None, False
    if key in _TRANSPOSED:
        return _TRANSPOSED[key], None, True
    for hf_prefix, oc_prefix in _TOWERS.items():
        if key.startswith(hf_prefix):
            index, _, rest = key[len(hf_prefix) :].partition(".")
            m = _QKV_RE.match(rest)
            if index.isdigit() and m:
                return (
                    f"{oc_prefix}{index}.attn.in_proj_{m.group(2)}",
                    "qkv".index(m.group(1)),
                    False,
                )
            if index.isdigit() and rest in _BLOCK:
                return f"{oc_prefix}{index}.{_BLOCK[rest]}", None, False
    raise KeyError(key)


def _num_layers(keys, prefix: str) -> int:
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
            absent = [_QKV[i] for i, p in enumerate(parts) if p is None]
            raise CheckpointError(
                f"{oc_key}: the Hugging Face checkpoint lacks {absent} of that block"
            )
        converted[oc_key] = torch.cat(parts, dim=0)  # type: ignore[arg-type]

    n_visual = _num_layers(converted, "visual.transformer.resblocks.")
    n_text = _num_layers(converted, "transformer.resblocks.")
    has_text = any(k.startswith("text_model.") for k in sd) or "text_projection.weight" in sd
    if config is not None:
        _check_activation(config)
        towers = {"vision": n_visual} if not has_text else {"vision": n_visual, "text": n_text}
        for tower, n in towers.items():
            want = int(_sub_config(config, tower)["num_hidden_layers"])
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
    layers = _num_layers(shapes, "transformer.resblocks.")
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
    try:
        return hf_to_open_clip(load_checkpoint(weights).state_dict, config)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"{weights}: {e}") from None


def load_weights(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Any supported checkpoint as a state dict: a Hugging Face folder (converted to open_clip
    keys), else a task-vectors pickle or plain state-dict file (keys as stored)."""
    if is_hf_checkpoint(path):
        return load_hf_checkpoint(path)
    return load_checkpoint(path).state_dict
