"""config.json of the text and image encoders (transformers' format) ↔ our configs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kandinsky.config import CLIPConfig, CLIPTowerConfig, TextEncoderConfig
from kandinsky.errors import LayoutError


def mclip_to_json(cfg: TextEncoderConfig) -> dict[str, Any]:
    """The released diffusers text_encoder/config.json (XLM-R config + M-CLIP head sizes)."""
    return {
        "architectures": ["MultilingualCLIP"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "model_type": "xlm-roberta",
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "output_past": True,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
        "numDims": cfg.out_dim,
        "transformerDimensions": cfg.hidden_size,
    }


def mclip_from_json(
    d: dict[str, Any], base: TextEncoderConfig = TextEncoderConfig()
) -> TextEncoderConfig:
    """Read an M-CLIP / XLM-R config.json (the original one has no `numDims`: keep `base`'s)."""
    if d.get("model_type") not in (None, "xlm-roberta", "M-CLIP"):
        raise LayoutError(
            f"text encoder config has model_type {d.get('model_type')!r}; M-CLIP needs 'xlm-roberta'."
        )
    if (
        d.get("position_embedding_type", "absolute") != "absolute"
        or d.get("type_vocab_size", 1) != 1
    ):
        raise LayoutError(
            "text encoder config is not an XLM-RoBERTa with absolute positions and one token type."
        )
    return replace(
        base,
        vocab_size=d.get("vocab_size", base.vocab_size),
        hidden_size=d.get("hidden_size", base.hidden_size),
        num_layers=d.get("num_hidden_layers", base.num_layers),
        num_heads=d.get("num_attention_heads", base.num_heads),
        intermediate_size=d.get("intermediate_size", base.intermediate_size),
        max_position_embeddings=d.get("max_position_embeddings", base.max_position_embeddings),
        out_dim=d.get("numDims", base.out_dim),
        pad_token_id=d.get("pad_token_id", base.pad_token_id),
        layer_norm_eps=d.get("layer_norm_eps", base.layer_norm_eps),
    )


def clip_text_to_json(cfg: CLIPConfig) -> dict[str, Any]:
    t = cfg.text
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": t.hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": t.intermediate_size,
        "layer_norm_eps": t.layer_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "model_type": "clip_text_model",
        "num_attention_heads": t.num_heads,
        "num_hidden_layers": t.num_layers,
        "pad_token_id": 1,
        "projection_dim": t.projection_dim,
        "vocab_size": t.vocab_size,
    }


def clip_vision_to_json(cfg: CLIPConfig) -> dict[str, Any]:
    v = cfg.vision
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": v.hidden_size,
        "image_size": v.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": v.intermediate_size,
        "layer_norm_eps": v.layer_norm_eps,
        "model_type": "clip_vision_model",
        "num_attention_heads": v.num_heads,
        "num_channels": 3,
        "num_hidden_layers": v.num_layers,
        "patch_size": v.patch_size,
        "projection_dim": v.projection_dim,
    }


def _tower(d: dict[str, Any], kind: str) -> dict[str, Any]:
    """Accept a tower config or a full CLIPModel config that nests it."""
    nested = d.get(f"{kind}_config")
    if isinstance(nested, dict):
        d = {**nested, "projection_dim": d.get("projection_dim", nested.get("projection_dim", 768))}
    if d.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise LayoutError(
            f"CLIP {kind} tower uses {d.get('hidden_act')!r}; ViT-L/14 uses quick_gelu."
        )
    return d


def clip_from_json(
    text: dict[str, Any] | None, vision: dict[str, Any] | None, base: CLIPConfig = CLIPConfig()
) -> CLIPConfig:
    """Our CLIPConfig from the text and/or vision tower config.json (missing ones keep `base`)."""
    out = base
    if text is not None:
        t = _tower(text, "text")
        out = replace(
            out,
            text=CLIPTowerConfig(
                hidden_size=t["hidden_size"],
                num_layers=t["num_hidden_layers"],
                num_heads=t["num_attention_heads"],
                intermediate_size=t["intermediate_size"],
                projection_dim=t.get("projection_dim", 768),
                vocab_size=t.get("vocab_size", 49408),
                max_position_embeddings=t.get("max_position_embeddings", 77),
                layer_norm_eps=t.get("layer_norm_eps", 1e-5),
            ),
        )
    if vision is not None:
        v = _tower(vision, "vision")
        out = replace(
            out,
            vision=CLIPTowerConfig(
                hidden_size=v["hidden_size"],
                num_layers=v["num_hidden_layers"],
                num_heads=v["num_attention_heads"],
                intermediate_size=v["intermediate_size"],
                projection_dim=v.get("projection_dim", 768),
                image_size=v.get("image_size", 224),
                patch_size=v.get("patch_size", 14),
                layer_norm_eps=v.get("layer_norm_eps", 1e-5),
            ),
        )
    return out
