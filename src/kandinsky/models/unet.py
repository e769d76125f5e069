"""Decoder UNet of Kandinsky 2.1: GLIDE/ADM UNet conditioned on CLIP image + M-CLIP text.

Reference: shared/reference/kandinsky21.md §4. ResBlocks use scale-shift norm and do the
resampling themselves; every attention block is joint self+cross attention in which the
encoder tokens (10 image tokens, then the text tokens) are prepended to the spatial keys and
values. Module names reproduce diffusers' `UNet2DConditionModel` state-dict keys exactly
(§6.2), so its checkpoints load with `load_state_dict(strict=True)` and no key surgery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kandinsky.config import UNetConfig
from kandinsky.errors import InvalidInput
from kandinsky.models.embeddings import timestep_embedding


@dataclass
class UNetCondition:
    """Everything the UNet needs besides x_t and t; computed once per generation."""

    tokens: torch.Tensor  # (B, num_image_tokens + T, cross_attention_dim): image tokens first
    embedding: torch.Tensor  # (B, time_embed_dim): added to the timestep embedding


class ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-[resample]-conv, scale-shift norm from `emb`, SiLU-conv, skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        groups: int,
        eps: float,
        resample: Literal["none", "up", "down"] = "none",
    ) -> None:
        super().__init__()
        self.resample = resample
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, 2 * out_channels)  # (scale, shift)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # ADM: each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        # 1×1 projection only where the width changes, as in the released checkpoint
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        scale, shift = self.time_emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        skip = self._resample(x)  # the skip path is resampled too, before its projection
        if self.conv_shortcut is not None:
            skip = self.conv_shortcut(skip)
        return skip + h


class AttentionBlock(nn.Module):
    """GLIDE joint attention: queries from pixels, keys/values = [encoder tokens; pixels]."""

    def __init__(
        self, channels: int, context_dim: int, head_channels: int, groups: int, eps: float
    ) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"width {channels} is not a multiple of head_channels {head_channels}")
        self.num_heads = channels // head_channels
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.add_k_proj = nn.Linear(context_dim, channels)  # encoder tokens get no norm (§4.3)
        self.add_v_proj = nn.Linear(context_dim, channels)
        out = nn.Linear(channels, channels)
        nn.init.zeros_(out.weight)  # block starts as the identity, like proj_out in GLIDE
        nn.init.zeros_(out.bias)
        self.to_out = nn.ModuleList([out])  # a list only so that the key reads `to_out.0`

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, heads, L, d)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        pixels = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H·W, C)
        q = self._heads(self.to_q(pixels))
        k = torch.cat([self._heads(self.add_k_proj(tokens)), self._heads(self.to_k(pixels))], dim=2)
        v = torch.cat([self._heads(self.add_v_proj(tokens)), self._heads(self.to_v(pixels))], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.to_out[0](out.transpose(1, 2).reshape(b, height * width, c))
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class DownLevel(nn.Module):
    """One encoder resolution: ResBlocks (each followed by attention if any), then a down-ResBlock."""

    def __init__(
        self, resnets: list[ResBlock], attentions: list[AttentionBlock], down: ResBlock | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)  # empty at levels without attention
        self.downsamplers = nn.ModuleList([down] if down is not None else [])


class UpLevel(nn.Module):
    """One decoder resolution: ResBlocks on [h; skip] (each followed by attention), then an up-ResBlock."""

    def __init__(
        self, resnets: list[ResBlock], attentions: list[AttentionBlock], up: ResBlock | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.upsamplers = nn.ModuleList([up] if up is not None else [])


class MiddleBlock(nn.Module):
    """Res → Attn → Res at the lowest resolution."""

    def __init__(self, resnets: list[ResBlock], attention: AttentionBlock) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList([attention])


class TimeEmbedding(nn.Module):
    """Linear → SiLU → Linear on the sinusoidal timestep features."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TokenProjection(nn.Module):
    """Encoder tokens: image embedding → `num_image_tokens` tokens, then projected text states."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.num_image_tokens = cfg.num_image_tokens
        self.image_embeds = nn.Linear(
            cfg.image_embed_dim, cfg.num_image_tokens * cfg.cross_attention_dim
        )
        self.text_proj = nn.Linear(cfg.text_dim, cfg.cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        image_tokens = self.image_embeds(image_embeds).unflatten(1, (self.num_image_tokens, -1))
        return torch.cat([image_tokens, self.text_proj(text_states)], dim=1)


class GlobalEmbedding(nn.Module):
    """Vector added to the time embedding: LN(text_proj(pooled text)) + image_proj(image)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.text_proj = nn.Linear(cfg.pooled_text_dim, cfg.time_embed_dim)
        self.text_norm = nn.LayerNorm(cfg.time_embed_dim, eps=cfg.norm_eps)  # text part only
        self.image_proj = nn.Linear(cfg.image_embed_dim, cfg.time_embed_dim)

    def forward(self, image_embeds: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
        return self.text_norm(self.text_proj(pooled_text)) + self.image_proj(image_embeds)


class UNet(nn.Module):
    """Predicts (eps, variance interpolation) for x_t; in_channels 9 gives the inpainting UNet."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        widths, emb_dim = config.widths, config.time_embed_dim
        groups, eps = config.norm_groups, config.norm_eps

        def res(cin: int, cout: int, resample: Literal["none", "up", "down"] = "none") -> ResBlock:
            return ResBlock(cin, cout, emb_dim, groups, eps, resample)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, config.cross_attention_dim, config.head_channels, groups, eps)

        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimeEmbedding(config.model_channels, emb_dim)
        self.encoder_hid_proj = TokenProjection(config)
        self.add_embedding = GlobalEmbedding(config)

        last = len(widths) - 1
        skips, ch = [widths[0]], widths[0]  # widths of the activations the decoder concatenates
        down_blocks = []
        for level, width in enumerate(widths):
            resnets, attentions = [], []
            for _ in range(config.num_res_blocks):
                resnets.append(res(ch, width))
                ch = width
                if level in config.attention_levels:
                    attentions.append(attn(ch))
                skips.append(ch)
            down = res(ch, ch, "down") if level != last else None
            if down is not None:
                skips.append(ch)
            down_blocks.append(DownLevel(resnets, attentions, down))
        self.down_blocks = nn.ModuleList(down_blocks)

        self.mid_block = MiddleBlock([res(ch, ch), res(ch, ch)], attn(ch))

        up_blocks = []
        for level in reversed(range(len(widths))):
            resnets, attentions = [], []
            for _ in range(config.num_res_blocks + 1):
                resnets.append(res(ch + skips.pop(), widths[level]))
                ch = widths[level]
                if level in config.attention_levels:
                    attentions.append(attn(ch))
            up_blocks.append(UpLevel(resnets, attentions, res(ch, ch, "up") if level else None))
        self.up_blocks = nn.ModuleList(up_blocks)

        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # ADM zero-inits the output layer
        nn.init.zeros_(self.conv_out.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def condition(
        self, image_embeds: torch.Tensor, text_states: torch.Tensor, pooled_text: torch.Tensor
    ) -> UNetCondition:
        """Encoder tokens and global embedding; independent of x_t and t, so cache them."""
        image_embeds, text_states, pooled_text = (
            x.to(self.dtype) for x in (image_embeds, text_states, pooled_text)
        )
        return UNetCondition(
            tokens=self.encoder_hid_proj(image_embeds, text_states),
            embedding=self.add_embedding(image_embeds, pooled_text),
        )

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)  # recompute in backward
        return block(*args)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        condition: UNetCondition,
    ) -> torch.Tensor:
        b, _, height, width = sample.shape
        factor = 2 ** (len(self.config.widths) - 1)
        if height % factor or width % factor:
            raise InvalidInput(
                f"latent is {height}×{width}, but the UNet needs sides divisible by {factor}"
            )
        t = torch.as_tensor(timesteps, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        # sinusoids in fp32 (large t·f loses precision in half), then the module's dtype
        t_features = timestep_embedding(t, self.config.model_channels).to(self.dtype)
        emb = self.time_embedding(t_features) + condition.embedding
        tokens = condition.tokens

        h = self.conv_in(sample.to(self.dtype))
        skips = [h]
        for level in self.down_blocks:
            for i, resnet in enumerate(level.resnets):
                h = self._run(resnet, h, emb)
                if len(level.attentions):
                    h = self._run(level.attentions[i], h, tokens)
                skips.append(h)
            for down in level.downsamplers:
                h = self._run(down, h, emb)
                skips.append(h)

        mid = self.mid_block
        h = self._run(mid.resnets[0], h, emb)
        h = self._run(mid.attentions[0], h, tokens)
        h = self._run(mid.resnets[1], h, emb)

        for level in self.up_blocks:
            for i, resnet in enumerate(level.resnets):
                h = self._run(resnet, torch.cat([h, skips.pop()], dim=1), emb)
                if len(level.attentions):
                    h = self._run(level.attentions[i], h, tokens)
            for up in level.upsamplers:
                h = self._run(up, h, emb)

        return self.conv_out(F.silu(self.conv_norm_out(h)))
