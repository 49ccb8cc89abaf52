"""Random-weight Hugging Face CLIP models (transformers, test-only) and their open_clip twins.

One small architecture in both libraries: vision 64 wide, 2 blocks, 2 heads, 32 px, patch 8; text
48 wide (a different width, so a swapped tower cannot pass), 2 blocks, 2 heads, context 16;
projection 32. Two heads per tower so the q/k/v -> in_proj stacking is checked per head.
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch

import adamerging  # noqa: F401  (before torchvision/open_clip/transformers: compat shim)

EMBED_DIM = 32
IMAGE_SIZE, PATCH, V_WIDTH, V_LAYERS, V_HEADS = 32, 8, 64, 2, 2
CONTEXT, VOCAB, T_WIDTH, T_LAYERS, T_HEADS = 16, 49408, 48, 2, 2
# OpenAI BPE start/end tokens; EOT is the largest id (open_clip pools at argmax)
SOT, EOT = 49406, 49407

VISION_CONFIG: dict[str, Any] = dict(
    hidden_size=V_WIDTH,
    intermediate_size=4 * V_WIDTH,
    num_hidden_layers=V_LAYERS,
    num_attention_heads=V_HEADS,
    image_size=IMAGE_SIZE,
    patch_size=PATCH,
    projection_dim=EMBED_DIM,
    hidden_act="quick_gelu",
)
TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=T_WIDTH,
    intermediate_size=4 * T_WIDTH,
    num_hidden_layers=T_LAYERS,
    num_attention_heads=T_HEADS,
    max_position_embeddings=CONTEXT,
    vocab_size=VOCAB,
    projection_dim=EMBED_DIM,
    hidden_act="quick_gelu",
    bos_token_id=SOT,
    eos_token_id=EOT,
)

# Real OpenAI configs (openai/clip-vit-{base-patch32,base-patch16,large-patch14}), written from the
# published values; no download.
_B_TEXT = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12)
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B-32": dict(
        projection_dim=512,
        text_config=_B_TEXT,
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            image_size=224,
            patch_size=32,
        ),
    ),
    "ViT-B-16": dict(
        projection_dim=512,
        text_config=_B_TEXT,
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            image_size=224,
            patch_size=16,
        ),
    ),
    "ViT-L-14": dict(
        projection_dim=768,
        text_config=dict(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12
        ),
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            image_size=224,
            patch_size=14,
        ),
    ),
}


def clip_config(**overrides: Any):
    from transformers import CLIPConfig

    kwargs: dict[str, Any] = dict(
        vision_config=dict(VISION_CONFIG), text_config=dict(TEXT_CONFIG), projection_dim=EMBED_DIM
    )
    return CLIPConfig(**{**kwargs, **overrides})


def vision_config(**overrides: Any):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**{**VISION_CONFIG, **overrides})


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Default inits leave biases 0 and layer norms at 1/0, which would hide swapped or dropped
    # tensors; noise on everything makes every tensor matter.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def hf_clip(seed: int = 0):
    """A random-weight transformers CLIPModel of the small architecture (fp32)."""
    from transformers import CLIPModel

    return _randomise(CLIPModel(clip_config()), seed)


def hf_vision(with_projection: bool, seed: int = 0):
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    return _randomise(cls(vision_config()), seed)


def open_clip_model(seed: int | None = None) -> torch.nn.Module:
    """The matching open_clip CLIP (QuickGELU, as clip.create_clip builds the OpenAI models)."""
    vision = dict(
        image_size=IMAGE_SIZE,
        layers=V_LAYERS,
        width=V_WIDTH,
        patch_size=PATCH,
        head_width=V_WIDTH // V_HEADS,
    )
    text = dict(
        context_length=CONTEXT, vocab_size=VOCAB, width=T_WIDTH, heads=T_HEADS, layers=T_LAYERS
    )
    model = open_clip.model.CLIP(EMBED_DIM, vision, text, quick_gelu=True)
    return _randomise(model, seed) if seed is not None else model.eval()


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def tokens(n: int = 3, seed: int = 0) -> torch.Tensor:
    """Token ids as the CLIP tokenizer lays them out: SOT, words, EOT, zero padding (varied
    lengths)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, CONTEXT, dtype=torch.long)
    for i in range(n):
        length = 2 + (i * 5) % (CONTEXT - 2)  # words between SOT and EOT
        out[i, 0] = SOT
        out[i, 1 : 1 + length] = torch.randint(1, SOT, (length,), generator=gen)
        out[i, 1 + length] = EOT
    return out


def features(output: Any) -> torch.Tensor:
    """get_image_features / get_text_features return a tensor in transformers 4, an output object in
    5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def write_random_hf_checkpoints(root, model: str, tasks, scale: float = 0.05, seed: int = 0):
    """Random-weight checkpoints in the Hugging Face layout, written without transformers:

        <root>/<model>/zeroshot/
            CLIPModel folder (config.json + model.safetensors), as openai/clip-vit-*
        <root>/<model>/<Task>/finetuned/
            CLIPVisionModel folder (no projection), as tanganke/clip-vit-*_<task>

    Experts are theta_0 plus noise on the visual tower except `visual.proj` (FusionBench fine-tunes
    the vision model only). Returns (folder, pretrained open_clip CLIP, {task: expert CLIP}).
    """
    from pathlib import Path

    from adamerging.checkpoints import hf_export
    from adamerging.models.clip import create_clip

    torch.manual_seed(seed)
    folder = Path(root) / model
    clip = create_clip(model)
    config = hf_export.hf_config_from_open_clip(clip)
    hf_export.save_hf_checkpoint(folder / "zeroshot", clip.state_dict(), config)
    experts = {}
    for task in tasks:
        expert = create_clip(model)
        expert.load_state_dict(clip.state_dict())
        with torch.no_grad():
            for name, p in expert.visual.named_parameters():
                if name != "proj":
                    p.add_(scale * p.abs().mean() * torch.randn_like(p))
        visual = {k: v for k, v in expert.state_dict().items() if k.startswith("visual.")}
        hf_export.save_hf_checkpoint(
            folder / task / "finetuned", visual, config, vision_projection=False
        )
        experts[task] = expert
    return folder, clip, experts
