"""The MoVQ trainer's adversary: a PatchGAN image discriminator (Isola et al. 2017).

The layout of taming-transformers' `NLayerDiscriminator` that VQGAN/MoVQ training uses —
4×4 convolutions, stride 2 while widening ×2 up to 8× `width`, one stride-1 layer, then a
one-channel map of logits, one per receptive-field patch — with GroupNorm in place of
BatchNorm, so one forward over real and fake images together behaves the same at any batch
size and under DDP (no running statistics to sync).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class PatchDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [−1, 1] → logits (B, 1, h, w), one per patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a PatchGAN needs at least one layer, got {layers}")
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        channels = width
        for n in range(1, layers + 1):
            out = width * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                _norm(out),
                nn.LeakyReLU(0.2),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*blocks)
        for module in self.modules():  # taming's weights_init: N(0, 0.02), norms at N(1, 0.02)
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def min_size(self) -> int:
        """The smallest image side that still yields one patch logit."""
        size = 1
        for conv in reversed([m for m in self.layers if isinstance(m, nn.Conv2d)]):
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            size = (size - 1) * s + k - 2 * p
        return size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def adaptive_gan_weight(
    reconstruction: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """VQGAN's balance: ‖∇ reconstruction‖ / ‖∇ GAN term‖ at the decoder's last layer.

    Keeps the adversarial gradient on the same scale as the reconstruction's, whatever the
    loss magnitudes; clamped to [0, 10⁴] and detached (a weight, not a path for gradients).
    """
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
