"""MoVQ autoencoder (Zheng et al. 2022): a VQGAN encoder and a decoder whose norms are
conditioned on the latent (reference: shared/reference/kandinsky21.md §5).

Images in [-1, 1] ↔ latents with 4 channels at 1/8 of the resolution. Kandinsky diffuses the
raw encoder output (scale 1) and skips quantization at inference; the codebook is kept for
training and for the quantized round trip. Module names reproduce diffusers' `VQModel`
(norm_type "spatial") state-dict keys, so its weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kandinsky.config import MoVQConfig


def _run(module: nn.Module, x: Tensor, zq: Tensor | None, enabled: bool) -> Tensor:
    """Call `module(x, zq)`, recomputing it in backward when checkpointing is on."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, x, zq, use_reentrant=False)
    return module(x, zq)


class SpatialNorm(nn.Module):
    """MoVQ's norm: GN(f)·conv_y(zq) + conv_b(zq), zq nearest-resized to f's size."""

    def __init__(self, channels: int, zq_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=eps)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


def _norm(channels: int, config: MoVQConfig, spatial: bool) -> nn.Module:
    if spatial:
        return SpatialNorm(channels, config.latent_channels, config.norm_groups, config.norm_eps)
    return nn.GroupNorm(config.norm_groups, channels, eps=config.norm_eps)


def _apply_norm(norm: nn.Module, x: Tensor, zq: Tensor | None) -> Tensor:
    return norm(x) if zq is None else norm(x, zq)


class ResnetBlock(nn.Module):
    """(norm → swish → conv3×3) twice, plus a 1×1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, config: MoVQConfig, spatial: bool) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, config, spatial)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, config, spatial)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(_apply_norm(self.norm1, x, zq)))
        h = self.conv2(F.silu(_apply_norm(self.norm2, h, zq)))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions, residual."""

    def __init__(self, channels: int, config: MoVQConfig, spatial: bool) -> None:
        super().__init__()
        # diffusers names the norm after its kind; keep both names so its keys load
        if spatial:
            self.spatial_norm = _norm(channels, config, spatial=True)
        else:
            self.group_norm = _norm(channels, config, spatial=False)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # key `to_out.0`

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.group_norm(x) if zq is None else self.spatial_norm(x, zq)
        h = h.flatten(2).transpose(1, 2)  # (B, H·W, C)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # scale C^-1/2
        h = self.to_out[0](h).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + h


class Downsample(nn.Module):
    """Pad right and bottom by one, then a 3×3 stride-2 conv (VQGAN's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResnetBlocks, each followed by an AttnBlock at the lowest level."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        num_layers: int,
        attention: bool,
        config: MoVQConfig,
        spatial: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, config, spatial)
            for i in range(num_layers)
        )
        n_attn = num_layers if attention else 0
        self.attentions = nn.ModuleList(AttnBlock(out_ch, config, spatial) for _ in range(n_attn))

    def _blocks(self, x: Tensor, zq: Tensor | None) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if self.attentions:
                x = self.attentions[i](x, zq)
        return x


class DownLevel(_Level):
    """Encoder level, then Downsample except at the lowest resolution."""

    def __init__(self, in_ch: int, out_ch: int, lowest: bool, config: MoVQConfig) -> None:
        super().__init__(in_ch, out_ch, config.layers_per_block, lowest, config, spatial=False)
        self.downsamplers = nn.ModuleList([] if lowest else [Downsample(out_ch)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self._blocks(x, None)
        for sampler in self.downsamplers:
            x = sampler(x)
        return x


class UpLevel(_Level):
    """Decoder level (one ResnetBlock more than the encoder's), then Upsample except last."""

    def __init__(
        self, in_ch: int, out_ch: int, lowest: bool, highest: bool, config: MoVQConfig
    ) -> None:
        super().__init__(in_ch, out_ch, config.layers_per_block + 1, lowest, config, spatial=True)
        self.upsamplers = nn.ModuleList([] if highest else [Upsample(out_ch)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self._blocks(x, zq)
        for sampler in self.upsamplers:
            x = sampler(x)
        return x


class MidBlock(nn.Module):
    """ResnetBlock → AttnBlock → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, config: MoVQConfig, spatial: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, config, spatial) for _ in range(2)
        )
        self.attentions = nn.ModuleList([AttnBlock(channels, config, spatial)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x, zq)
        x = self.attentions[0](x, zq)
        return self.resnets[1](x, zq)


class Encoder(nn.Module):
    """Image → pre-quantization latent (plain VQGAN encoder, GroupNorm everywhere)."""

    def __init__(self, config: MoVQConfig) -> None:
        super().__init__()
        widths, last = config.widths, len(config.widths) - 1
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownLevel(widths[max(i - 1, 0)], width, lowest=i == last, config=config)
            for i, width in enumerate(widths)
        )
        self.mid_block = MidBlock(widths[-1], config, spatial=False)
        self.conv_norm_out = _norm(widths[-1], config, spatial=False)
        self.conv_out = nn.Conv2d(widths[-1], config.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in [*self.down_blocks, self.mid_block]:
            x = _run(block, x, None, self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latent → image; every norm is a SpatialNorm conditioned on `zq`.

    `up_blocks[0]` is the lowest resolution (with attention), as in diffusers; each level has
    one ResnetBlock more than the encoder's.
    """

    def __init__(self, config: MoVQConfig) -> None:
        super().__init__()
        widths = tuple(reversed(config.widths))
        last = len(widths) - 1
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], config, spatial=True)
        self.up_blocks = nn.ModuleList(
            UpLevel(widths[max(i - 1, 0)], width, lowest=i == 0, highest=i == last, config=config)
            for i, width in enumerate(widths)
        )
        self.conv_norm_out = _norm(widths[-1], config, spatial=True)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z: Tensor, zq: Tensor) -> Tensor:
        x = self.conv_in(z)
        for block in [self.mid_block, *self.up_blocks]:
            x = _run(block, x, zq, self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(x, zq)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry by L2 with a straight-through gradient (taming's VectorQuantizer2)."""

    def __init__(self, num_embeddings: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(num_embeddings, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        indices = torch.cdist(flat, self.embedding.weight).argmin(dim=1)
        zq = self.embedding(indices).view(b, h, w, c).permute(0, 3, 1, 2)
        # "legacy" weighting of the released model: beta lands on the codebook term
        loss = F.mse_loss(zq.detach(), z) + self.beta * F.mse_loss(zq, z.detach())
        zq = z + (zq - z).detach()  # straight-through: gradients skip the argmin
        return zq.contiguous(), indices.view(b, h, w), loss


class MoVQ(nn.Module):
    """Encoder, 1×1 quant convs, codebook and spatially conditioned decoder."""

    def __init__(self, config: MoVQConfig) -> None:
        super().__init__()
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(latent, latent, 1)
        self.quantize = VectorQuantizer(config.num_embeddings, latent)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)
        self.decoder = Decoder(config)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of 8 → latents (B, 4, H/8, W/8), unquantized."""
        images = images.to(self.quant_conv.weight.dtype)
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: Tensor, quantize: bool = False) -> Tensor:
        """Latents (B, 4, h, w) → images (B, 3, 8h, 8w) in about [-1, 1]."""
        latents = latents.to(self.quant_conv.weight.dtype)
        if quantize:
            latents = self.quantize_latents(latents)[0]
        # the norms see the latent before post_quant_conv (MoVQ's zq)
        return self.decoder(self.post_quant_conv(latents), latents)

    def quantize_latents(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantized latents with straight-through grad, code indices (B, h, w), VQ loss)."""
        return self.quantize(latents)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Training round trip: (reconstruction through the codebook, VQ loss)."""
        quantized, _, vq_loss = self.quantize_latents(self.encode(images))
        return self.decoder(self.post_quant_conv(quantized), quantized), vq_loss
