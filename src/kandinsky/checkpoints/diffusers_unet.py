"""Translate between our `UNetConfig` and diffusers' `UNet2DConditionModel` config.json.

State-dict keys need no mapping: `kandinsky.models.unet.UNet` uses diffusers' key names.
Only configs that describe the Kandinsky 2.1 decoder architecture (reference §6.2) are
accepted; anything else (Stable Diffusion's transformer blocks, other embeddings, ...) raises
`LayoutError`. `sample_size` (the latent side it was trained at) sets the pipeline's default image size.
Fields that do not change the weights or the maths (`downsample_padding`, `upcast_attention`, ...) are written with the released values and
ignored when read.
"""

from __future__ import annotations

from typing import Any

from kandinsky.config import UNetConfig
from kandinsky.errors import LayoutError

_DOWN_RES, _DOWN_ATTN = "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"
_UP_RES, _UP_ATTN = "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"
_MID = "UNetMidBlock2DSimpleCrossAttn"
_NUM_IMAGE_TOKENS = 10  # diffusers' TextImageProjection hard-codes 10 image tokens

# Fields fixed by the architecture: key -> (value we need, diffusers 0.42.1 default if absent).
_FIXED: dict[str, tuple[Any, Any]] = {
    "act_fn": ("silu", "silu"),
    "addition_embed_type": ("text_image", None),
    "center_input_sample": (False, False),
    "class_embed_type": (None, None),
    "class_embeddings_concat": (False, False),
    "conv_in_kernel": (3, 3),
    "conv_out_kernel": (3, 3),
    "cross_attention_norm": (None, None),
    "dropout": (0.0, 0.0),
    "dual_cross_attention": (False, False),
    "encoder_hid_dim_type": ("text_image_proj", None),
    "flip_sin_to_cos": (True, True),
    "freq_shift": (0, 0),
    "mid_block_scale_factor": (1, 1),
    "mid_block_type": (_MID, "UNetMidBlock2DCrossAttn"),
    "num_attention_heads": (None, None),
    "num_class_embeds": (None, None),
    "only_cross_attention": (False, False),
    "resnet_out_scale_factor": (1.0, 1.0),
    "resnet_skip_time_act": (False, False),
    "resnet_time_scale_shift": ("scale_shift", "default"),
    "time_cond_proj_dim": (None, None),
    "time_embedding_act_fn": (None, None),
    "time_embedding_type": ("positional", "positional"),
    "timestep_post_act": (None, None),
}
_CHECKED_ONLY = ("dropout", "num_attention_heads")  # absent from the released config.json

# Written for fidelity with the released config.json; they do not affect our model.
_COSMETIC: dict[str, Any] = {
    "addition_embed_type_num_heads": 64,
    "downsample_padding": 1,
    "mid_block_only_cross_attention": None,
    "projection_class_embeddings_input_dim": None,
    "time_embedding_dim": None,
    "upcast_attention": False,
    "use_linear_projection": False,
}


def to_diffusers_config(cfg: UNetConfig) -> dict[str, Any]:
    """The `unet/config.json` dict diffusers would write for this UNet (less `_diffusers_version`)."""
    for name in ("pooled_text_dim", "image_embed_dim"):
        if getattr(cfg, name) != cfg.cross_attention_dim:
            raise ValueError(
                f"{name}={getattr(cfg, name)} differs from cross_attention_dim="
                f"{cfg.cross_attention_dim}; diffusers ties these widths together"
            )
    if cfg.num_image_tokens != _NUM_IMAGE_TOKENS:
        raise ValueError(
            f"num_image_tokens={cfg.num_image_tokens}; diffusers supports {_NUM_IMAGE_TOKENS} only"
        )
    levels = range(len(cfg.channel_mult))
    down = [_DOWN_ATTN if i in cfg.attention_levels else _DOWN_RES for i in levels]
    up = [_UP_ATTN if i in cfg.attention_levels else _UP_RES for i in reversed(levels)]
    d: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        **{key: need for key, (need, _) in _FIXED.items() if key not in _CHECKED_ONLY},
        **_COSMETIC,
        "attention_head_dim": cfg.head_channels,
        "block_out_channels": list(cfg.widths),
        "cross_attention_dim": cfg.cross_attention_dim,
        "down_block_types": down,
        "encoder_hid_dim": cfg.text_dim,
        "in_channels": cfg.in_channels,
        "layers_per_block": cfg.num_res_blocks,
        "norm_eps": cfg.norm_eps,
        "norm_num_groups": cfg.norm_groups,
        "out_channels": cfg.out_channels,
        "sample_size": cfg.sample_size,
        "up_block_types": up,
    }
    return dict(sorted(d.items()))


def _single(c: dict[str, Any], key: str) -> Any:
    """diffusers allows per-level lists; we need one value for every level."""
    value = c[key]
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise LayoutError(f"UNet config has per-level {key}={value}; we need one value")
        return value[0]
    return value


def _side(value: Any) -> int:
    """diffusers' sample_size: an int or [height, width] (we keep one side)."""
    return int(value[0] if isinstance(value, list | tuple) else value)


def from_diffusers_config(d: dict[str, Any]) -> UNetConfig:
    """Our `UNetConfig` for a diffusers `UNet2DConditionModel` config; `LayoutError` if we cannot build it."""
    if d.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise LayoutError(
            f"UNet config is for {d['_class_name']!r}, expected 'UNet2DConditionModel'"
        )
    c = {key: default for key, (_, default) in _FIXED.items()} | {
        "layers_per_block": 2,
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "in_channels": 4,
        "out_channels": 4,
        "attention_head_dim": 8,
        "cross_attention_dim": 1280,
        "encoder_hid_dim": None,
        "time_embedding_dim": None,
    }
    c |= {k: v for k, v in d.items() if not k.startswith("_")}
    for key, (need, _) in _FIXED.items():
        if c[key] != need:
            raise LayoutError(
                f"UNet config has {key}={c[key]!r}; the Kandinsky 2.1 decoder needs {need!r}"
            )
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key not in d:
            raise LayoutError(f"UNet config has no {key!r}")
    widths = list(d["block_out_channels"])
    down, up = list(d["down_block_types"]), list(d["up_block_types"])
    if not len(widths) == len(down) == len(up) or len(widths) < 2:
        raise LayoutError(
            f"UNet config has {len(widths)} widths, {len(down)} down and {len(up)} up blocks"
        )
    if any(t not in (_DOWN_RES, _DOWN_ATTN) for t in down):
        raise LayoutError(
            f"UNet config has down_block_types={down}; we build {_DOWN_RES!r} and {_DOWN_ATTN!r}"
        )
    mirrored = [_UP_ATTN if t == _DOWN_ATTN else _UP_RES for t in reversed(down)]
    if up != mirrored:
        raise LayoutError(f"UNet config has up_block_types={up}; the down blocks imply {mirrored}")
    model_channels = widths[0]
    if any(w % model_channels for w in widths):
        raise LayoutError(f"block_out_channels={widths} are not multiples of {model_channels}")
    if c["time_embedding_dim"] not in (None, 4 * model_channels):
        raise LayoutError(
            f"UNet config has time_embedding_dim={c['time_embedding_dim']}; we need "
            f"4·{model_channels} (or null)"
        )
    if c.get("mid_block_only_cross_attention"):
        raise LayoutError(
            "UNet config has mid_block_only_cross_attention; ours attends to pixels too"
        )
    cross_attention_dim = _single(c, "cross_attention_dim")
    if c["encoder_hid_dim"] is None:
        raise LayoutError("UNet config has no encoder_hid_dim (the M-CLIP token width)")
    return UNetConfig(
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths),
        num_res_blocks=_single(c, "layers_per_block"),
        attention_levels=tuple(i for i, t in enumerate(down) if t == _DOWN_ATTN),
        head_channels=_single(c, "attention_head_dim"),
        cross_attention_dim=cross_attention_dim,
        text_dim=c["encoder_hid_dim"],
        pooled_text_dim=cross_attention_dim,  # diffusers ties both to cross_attention_dim
        image_embed_dim=cross_attention_dim,
        num_image_tokens=_NUM_IMAGE_TOKENS,
        norm_groups=c["norm_num_groups"],
        norm_eps=c["norm_eps"],
        sample_size=_side(c.get("sample_size") or 64),
    )
