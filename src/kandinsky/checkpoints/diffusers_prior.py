"""Translate between our `PriorConfig` and diffusers' `PriorTransformer` config.json.

State-dict keys need no mapping: `kandinsky.models.prior.Prior` uses diffusers' key names.
`dropout` is ignored (inference-only difference). Only configs that describe the Kandinsky 2.1 architecture are accepted; the others
(Shap-E style priors, norm_in, no prd token, ...) raise `LayoutError`.
"""

from __future__ import annotations

from typing import Any

from kandinsky.config import PriorConfig
from kandinsky.errors import LayoutError

# PriorTransformer.__init__ defaults in diffusers 0.42.1.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 32,
    "attention_head_dim": 64,
    "num_layers": 20,
    "embedding_dim": 768,
    "num_embeddings": 77,
    "additional_embeddings": 4,
    "dropout": 0.0,
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
    "time_embed_dim": None,
    "embedding_proj_dim": None,
    "clip_embed_dim": None,
}


def to_diffusers_config(cfg: PriorConfig) -> dict[str, Any]:
    """The `prior/config.json` dict diffusers would write for this prior."""
    return {
        "_class_name": "PriorTransformer",
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "num_layers": cfg.num_layers,
        "embedding_dim": cfg.clip_dim,
        "num_embeddings": cfg.text_ctx,
        "additional_embeddings": cfg.num_extra_tokens,
        "dropout": 0.0,
    }


def from_diffusers_config(d: dict[str, Any]) -> PriorConfig:
    """Our `PriorConfig` for a diffusers `PriorTransformer` config; `LayoutError` if we cannot build it."""
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in d.items() if not k.startswith("_")}}
    if d.get("_class_name", "PriorTransformer") != "PriorTransformer":
        raise LayoutError(f"prior config is for {d['_class_name']!r}, expected 'PriorTransformer'")
    width = c["num_attention_heads"] * c["attention_head_dim"]
    dim = c["embedding_dim"]
    required = {
        "time_embed_act_fn": "silu",
        "norm_in_type": None,
        "embedding_proj_norm_type": None,
        "encoder_hid_proj_type": "linear",
        "added_emb_type": "prd",
    }
    for key, expected in required.items():
        if c[key] != expected:
            raise LayoutError(
                f"prior config has {key}={c[key]!r}; Kandinsky 2.1's prior needs {expected!r}"
            )
    # Widths diffusers lets differ but the Kandinsky prior ties together.
    for key, expected in (
        ("time_embed_dim", width),
        ("embedding_proj_dim", dim),
        ("clip_embed_dim", dim),
    ):
        if c[key] not in (None, expected):
            raise LayoutError(
                f"prior config has {key}={c[key]}; this prior needs {expected} (or null)"
            )
    if c["additional_embeddings"] != 4:
        raise LayoutError(
            f"prior config has additional_embeddings={c['additional_embeddings']}; the Kandinsky "
            "sequence appends exactly 4 tokens (pooled text, time, x_t, prd)"
        )
    if c["num_embeddings"] < 1:
        raise LayoutError(
            f"prior config has num_embeddings={c['num_embeddings']}; need >= 1 text tokens"
        )
    return PriorConfig(
        width=width,
        num_layers=c["num_layers"],
        num_heads=c["num_attention_heads"],
        clip_dim=dim,
        text_ctx=c["num_embeddings"],
        num_extra_tokens=c["additional_embeddings"],
    )
