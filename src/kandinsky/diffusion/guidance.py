"""Classifier-free guidance, in one place, arranged as the original code does.

The batch is `[conditional rows, unconditional rows]`; the network sees the same x in both
halves. For the decoder only the eps channels are guided and the learned-variance channels
come from the conditional half; for the prior the x0 prediction is guided.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale · (cond − uncond)."""
    return uncond + scale * (cond - uncond)


def guided_eps_model(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scale: float,
    latent_channels: int,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap `network(x2, t2) -> (2B, 2C, H, W)` into the sampler's `model(x, t) -> (B, 2C, H, W)`.

    `network` evaluates the doubled batch (cond first); with `scale == 1` the caller passes a
    network over the conditional rows only and no doubling happens.
    """
    if scale == 1.0:
        return network

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = network(torch.cat([x, x]), torch.cat([t, t]))
        cond, uncond = out.chunk(2)
        eps = guide(cond[:, :latent_channels], uncond[:, :latent_channels], scale)
        return torch.cat([eps, cond[:, latent_channels:]], dim=1)

    return model


def guided_x0_model(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Prior: `network(x2, t2) -> x0 (2B, D)` (cond first) into `model(x, t) -> guided x0 (B, D)`."""
    if scale == 1.0:
        return network

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = network(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
        return guide(cond, uncond, scale)

    return model
