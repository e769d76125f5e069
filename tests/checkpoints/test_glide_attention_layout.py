"""The per-head q/k/v split of the original fused attention weights is functionally right.

Each test writes the ORIGINAL attention (GLIDE `AttentionBlock`/`QKVAttention` for the
decoder, glide `xf` `ResidualAttentionBlock` for the prior; reference §3.2, §4.3) from its
fused weights, converts those weights with our key rules and requires the same output.
Everything runs in float64, so rounding stays far below the 1e-5 tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kandinsky.checkpoints.original import Third, build_key_map, prior_rules, unet_rules
from kandinsky.config import TINY
from kandinsky.models.prior import PriorBlock
from kandinsky.models.unet import AttentionBlock

# ---------------------------------------------------------------------------- decoder UNet


def glide_attention(
    w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, encoder_out: torch.Tensor, heads: int
) -> torch.Tensor:
    """GLIDE AttentionBlock.forward with encoder_kv; `encoder_out` is NCL as in the original."""
    b, c, *spatial = x.shape
    normed = F.group_norm(
        x, TINY.unet.norm_groups, w[prefix + "norm.weight"], w[prefix + "norm.bias"], 1e-5
    )
    qkv = F.conv1d(normed.reshape(b, c, -1), w[prefix + "qkv.weight"], w[prefix + "qkv.bias"])
    ekv = F.conv1d(encoder_out, w[prefix + "encoder_kv.weight"], w[prefix + "encoder_kv.bias"])
    # QKVAttention: per head, rows [q_h; k_h; v_h] (encoder: [k_h; v_h]); encoder keys first.
    length = qkv.shape[-1]
    ch = qkv.shape[1] // (3 * heads)
    q, k, v = qkv.reshape(b * heads, ch * 3, length).split(ch, dim=1)
    ek, ev = ekv.reshape(b * heads, ch * 2, -1).split(ch, dim=1)
    k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)
    h = F.conv1d(a, w[prefix + "proj_out.weight"], w[prefix + "proj_out.bias"])
    return x + h.reshape(b, c, *spatial)


def _original_unet_attention(prefix: str, channels: int, context: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(channels)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.2

    return {
        prefix + "norm.weight": 1 + rand(channels),
        prefix + "norm.bias": rand(channels),
        prefix + "qkv.weight": rand(3 * channels, channels, 1),
        prefix + "qkv.bias": rand(3 * channels),
        prefix + "encoder_kv.weight": rand(2 * channels, context, 1),
        prefix + "encoder_kv.bias": rand(2 * channels),
        prefix + "proj_out.weight": rand(channels, channels, 1),  # zero at init; random here
        prefix + "proj_out.bias": rand(channels),
    }


def _convert(
    ours: dict[str, torch.Tensor], prefix: str, rules, original
) -> dict[str, torch.Tensor]:
    key_map = build_key_map([prefix + k for k in ours], rules)
    return {k: key_map[prefix + k].op.apply(original[key_map[prefix + k].key]) for k in ours}


# (our prefix, original prefix, width) at TINY: 2 res blocks a level, widths 32·(1, 2, 3, 4).
UNET_LOCATIONS = [
    ("down_blocks.1.attentions.0.", "input_blocks.4.1.", 64),
    ("mid_block.attentions.0.", "middle_block.1.", 128),
    ("up_blocks.1.attentions.2.", "output_blocks.5.1.", 96),
]


@pytest.mark.parametrize(("ours_prefix", "orig_prefix", "channels"), UNET_LOCATIONS)
def test_unet_attention_from_fused_qkv_equals_glide_attention(
    ours_prefix: str, orig_prefix: str, channels: int
) -> None:
    cfg = TINY.unet
    heads = channels // cfg.head_channels
    block = AttentionBlock(
        channels, cfg.cross_attention_dim, cfg.head_channels, cfg.norm_groups, cfg.norm_eps
    ).double()
    original = _original_unet_attention(orig_prefix, channels, cfg.cross_attention_dim)
    converted = _convert(block.state_dict(), ours_prefix, unet_rules(cfg), original)
    key_map = build_key_map([ours_prefix + k for k in block.state_dict()], unet_rules(cfg))
    assert {s.key for s in key_map.values()} == set(original)  # the rules point at this block
    block.load_state_dict(converted, strict=True)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, 4, 5, generator=g, dtype=torch.float64)
    tokens = torch.randn(2, 7, cfg.cross_attention_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x, tokens)
    reference = glide_attention(original, orig_prefix, x, tokens.transpose(1, 2), heads)
    assert (ours - reference).abs().max() <= 1e-5

    # The check can fail: contiguous thirds (the wrong layout) give another output.
    wrong = dict(converted)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        for leaf in ("weight", "bias"):
            fused = original[f"{orig_prefix}qkv.{leaf}"]
            wrong[f"{name}.{leaf}"] = Third(i).apply(fused.squeeze(-1))
    block.load_state_dict(wrong, strict=True)
    with torch.no_grad():
        assert (block(x, tokens) - reference).abs().max() > 1e-3


# ---------------------------------------------------------------------------- prior


def xf_residual_block(
    w: dict[str, torch.Tensor],
    prefix: str,
    x: torch.Tensor,
    additive_mask: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """glide `xf.ResidualAttentionBlock`: c_qkv viewed as (…, heads, 3·attn_ch) → q, k, v."""
    width = x.shape[-1]

    def ln(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            t, (width,), w[prefix + name + ".weight"], w[prefix + name + ".bias"], 1e-5
        )

    def linear(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, w[prefix + name + ".weight"], w[prefix + name + ".bias"])

    qkv = linear("attn.c_qkv", ln("ln_1", x))
    bs, n_ctx, _ = qkv.shape
    attn_ch = width // heads
    scale = 1 / math.sqrt(math.sqrt(attn_ch))
    q, k, v = torch.split(qkv.view(bs, n_ctx, heads, -1), attn_ch, dim=-1)
    weight = torch.einsum("bthc,bshc->bhts", q * scale, k * scale) + additive_mask[:, None]
    a = torch.einsum("bhts,bshc->bthc", torch.softmax(weight, dim=-1), v)
    x = x + linear("attn.c_proj", a.reshape(bs, n_ctx, -1))
    return x + linear("mlp.c_proj", F.gelu(linear("mlp.c_fc", ln("ln_2", x))))


def test_prior_block_from_fused_c_qkv_equals_xf_block() -> None:
    cfg = TINY.prior
    w = cfg.width
    ours_prefix, orig_prefix = "transformer_blocks.1.", "model.transformer.resblocks.1."
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.2

    original = {
        orig_prefix + "ln_1.weight": 1 + rand(w),
        orig_prefix + "ln_1.bias": rand(w),
        orig_prefix + "attn.c_qkv.weight": rand(3 * w, w),
        orig_prefix + "attn.c_qkv.bias": rand(3 * w),
        orig_prefix + "attn.c_proj.weight": rand(w, w),
        orig_prefix + "attn.c_proj.bias": rand(w),
        orig_prefix + "ln_2.weight": 1 + rand(w),
        orig_prefix + "ln_2.bias": rand(w),
        orig_prefix + "mlp.c_fc.weight": rand(4 * w, w),
        orig_prefix + "mlp.c_fc.bias": rand(4 * w),
        orig_prefix + "mlp.c_proj.weight": rand(w, 4 * w),
        orig_prefix + "mlp.c_proj.bias": rand(w),
    }
    block = PriorBlock(w, cfg.num_heads, cfg.norm_eps).double()
    converted = _convert(block.state_dict(), ours_prefix, prior_rules(cfg), original)
    block.load_state_dict(converted, strict=True)

    # Causal mask with two padded text keys (each query still sees itself, as in Prior).
    n = 9
    keys = torch.ones(2, n, dtype=torch.bool)
    keys[1, 2:4] = False
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & (
        keys[:, None, :] | torch.eye(n, dtype=torch.bool)
    )
    x = torch.randn(2, n, w, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x, allowed[:, None])
    additive = torch.zeros(2, n, n, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    reference = xf_residual_block(original, orig_prefix, x, additive, cfg.num_heads)
    assert (ours - reference).abs().max() <= 1e-5

    # The check can fail: contiguous thirds (the wrong layout) give another output.
    wrong = dict(converted)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        for leaf in ("weight", "bias"):
            wrong[f"attn1.{name}.{leaf}"] = Third(i).apply(
                original[f"{orig_prefix}attn.c_qkv.{leaf}"]
            )
    block.load_state_dict(wrong, strict=True)
    with torch.no_grad():
        assert (block(x, allowed[:, None]) - reference).abs().max() > 1e-3
