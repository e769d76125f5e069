"""CLIP ViT-L/14: the text tower conditions the prior, the vision tower embeds images.

Both towers are transformers' CLIP classes (their state-dict names are the diffusers
layout's); this module adds what Kandinsky needs around them: the two outputs the prior
reads, the image embedding, and the zero-image embedding used as the negative condition.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from kandinsky.config import CLIPConfig


def text_tower_config(cfg: CLIPConfig) -> CLIPTextConfig:
    t = cfg.text
    return CLIPTextConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        projection_dim=t.projection_dim,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        max_position_embeddings=t.max_position_embeddings,
        hidden_act="quick_gelu",
        layer_norm_eps=t.layer_norm_eps,
        # eos_token_id 2 makes transformers take the EOT state at argmax(input_ids), as OpenAI does.
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def vision_tower_config(cfg: CLIPConfig) -> CLIPVisionConfig:
    v = cfg.vision
    return CLIPVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        projection_dim=v.projection_dim,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=v.layer_norm_eps,
    )


def build_text_tower(cfg: CLIPConfig) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(text_tower_config(cfg)).eval()


def build_vision_tower(cfg: CLIPConfig) -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(vision_tower_config(cfg)).eval()


def encode_text(
    tower: CLIPTextModelWithProjection, input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_states after the final LN (N, 77, width), pooled = EOT state @ projection (N, dim)).

    No attention mask: CLIP's causal mask already keeps pads from touching real tokens.
    """
    out = tower(input_ids=input_ids)
    return out.last_hidden_state, out.text_embeds


def encode_image(tower: CLIPVisionModelWithProjection, pixel_values: torch.Tensor) -> torch.Tensor:
    """Raw (not L2-normalised) projected CLS embedding of preprocessed pixels (N, 3, 224, 224)."""
    dtype = next(tower.parameters()).dtype
    return tower(pixel_values=pixel_values.to(dtype)).image_embeds


def zero_image_embedding(tower: CLIPVisionModelWithProjection, batch_size: int = 1) -> torch.Tensor:
    """The "no image" condition: the tower applied to an all-zeros normalised input."""
    size = tower.config.image_size
    param = next(tower.parameters())
    zeros = torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)
    return encode_image(tower, zeros).repeat(batch_size, 1)
