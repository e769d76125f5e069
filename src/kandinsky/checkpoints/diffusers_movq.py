"""MoVQConfig ↔ diffusers `VQModel` config.json (reference: shared/reference/kandinsky21.md §5.5).

Our MoVQ state dict already uses diffusers' key names, so only the config needs translating.
diffusers hard-codes two things our config leaves free: every decoder SpatialNorm uses 32
groups and every norm uses eps 1e-6. Configs that differ there have no diffusers twin.
"""

from __future__ import annotations

from typing import Any

from kandinsky.config import MoVQConfig
from kandinsky.errors import LayoutError

_DIFFUSERS_GROUPS = 32  # diffusers' SpatialNorm ignores norm_num_groups
_DIFFUSERS_EPS = 1e-6

# VQModel.__init__ defaults, used for keys a config.json leaves out
_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 3,
    "num_vq_embeddings": 256,
    "norm_num_groups": 32,
    "vq_embed_dim": None,
    "norm_type": "group",
    "mid_block_add_attention": True,
}


def _block_types(levels: int) -> tuple[list[str], list[str]]:
    """MoVQ attends only at the lowest resolution: the last encoder and first decoder level."""
    down = ["DownEncoderBlock2D"] * (levels - 1) + ["AttnDownEncoderBlock2D"]
    up = ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (levels - 1)
    return down, up


def _check_representable(cfg: MoVQConfig) -> None:
    if cfg.norm_groups != _DIFFUSERS_GROUPS:
        raise LayoutError(
            f"MoVQ norm_groups is {cfg.norm_groups}, but diffusers' VQModel always builds its "
            f"decoder norms with {_DIFFUSERS_GROUPS} groups; use norm_groups={_DIFFUSERS_GROUPS}"
        )
    if cfg.norm_eps != _DIFFUSERS_EPS:
        raise LayoutError(
            f"MoVQ norm_eps is {cfg.norm_eps}, but diffusers' VQModel always uses {_DIFFUSERS_EPS}"
        )


def to_diffusers_config(cfg: MoVQConfig) -> dict[str, Any]:
    """The `VQModel` config.json for `cfg` (norm_type "spatial", as Kandinsky's movq/ folder)."""
    _check_representable(cfg)
    down, up = _block_types(len(cfg.widths))
    return {
        "_class_name": "VQModel",
        "act_fn": "silu",
        "block_out_channels": list(cfg.widths),
        "down_block_types": down,
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.latent_channels,
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_groups,
        "norm_type": "spatial",
        "num_vq_embeddings": cfg.num_embeddings,
        "out_channels": cfg.out_channels,
        "sample_size": 32,  # unused by the model; kept as in the released config
        "scaling_factor": 0.18215,  # unused: Kandinsky diffuses unscaled latents
        "up_block_types": up,
        "vq_embed_dim": cfg.latent_channels,
    }


def from_diffusers_config(d: dict[str, Any]) -> MoVQConfig:
    """Inverse of `to_diffusers_config`; raises LayoutError for VQModels MoVQ cannot build."""
    c = {**_DEFAULTS, **d}
    if c.get("_class_name", "VQModel") != "VQModel":
        raise LayoutError(f"movq config is for {c['_class_name']!r}, expected 'VQModel'")
    if c["norm_type"] != "spatial":
        raise LayoutError(
            f"movq config has norm_type {c['norm_type']!r}; MoVQ needs 'spatial' "
            "(a decoder conditioned on the latent)"
        )
    widths = tuple(int(w) for w in c["block_out_channels"])
    down, up = _block_types(len(widths))
    if list(c["down_block_types"]) != down or list(c["up_block_types"]) != up:
        raise LayoutError(
            f"movq config has down_block_types {list(c['down_block_types'])} and up_block_types "
            f"{list(c['up_block_types'])}; MoVQ needs {down} and {up}"
        )
    if c["act_fn"] != "silu":
        raise LayoutError(f"movq config has act_fn {c['act_fn']!r}; MoVQ needs 'silu'")
    if not c["mid_block_add_attention"]:
        raise LayoutError("movq config has mid_block_add_attention false; MoVQ needs it true")
    latent = int(c["latent_channels"])
    if c["vq_embed_dim"] not in (None, latent):
        raise LayoutError(
            f"movq config has vq_embed_dim {c['vq_embed_dim']} != latent_channels {latent}; "
            "MoVQ quantizes the latent as is"
        )
    cfg = MoVQConfig(
        in_channels=int(c["in_channels"]),
        out_channels=int(c["out_channels"]),
        latent_channels=latent,
        widths=widths,
        layers_per_block=int(c["layers_per_block"]),
        num_embeddings=int(c["num_vq_embeddings"]),
        norm_groups=int(c["norm_num_groups"]),
        norm_eps=_DIFFUSERS_EPS,
    )
    _check_representable(cfg)
    return cfg
