"""Mixing texts and images: a weighted sum of CLIP image embeddings (the original's mix_images).

Texts go through the prior, images through CLIP's image tower; the sum is not renormalised
and the weights need not add up to 1. The decoder prompt is "" unless one is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kandinsky import engine
from kandinsky.imaging import clip_preprocess
from kandinsky.modes.common import (
    Job,
    ModeOutput,
    denoise_and_decode,
    negative_embeds,
    prior_embeds,
    start_latents,
)


def mixed_embeds(job: Job, items: Sequence[object], weights: Sequence[float]) -> torch.Tensor:
    """Σ wᵢ·embedding(itemᵢ) for every image of the batch (B, D)."""
    total: torch.Tensor | None = None
    for item, weight in zip(items, weights, strict=True):
        if isinstance(item, str):
            embeds = prior_embeds(job, [item] * job.batch_size)
        else:
            size = job.parts.config.clip.vision.image_size
            embeds = engine.image_embeddings(job.parts, clip_preprocess([item], size=size))
            embeds = embeds.expand(job.batch_size, -1)
        term = weight * embeds.float()
        total = term if total is None else total + term
    assert total is not None  # items were checked to be non-empty
    return total


def mix(
    job: Job,
    items: Sequence[object],
    weights: Sequence[float],
    prompt: str = "",
    latents: torch.Tensor | None = None,
) -> ModeOutput:
    positive = mixed_embeds(job, items, weights)
    negative = negative_embeds(job)
    return denoise_and_decode(
        job, [prompt] * job.batch_size, start_latents(job, latents), positive, negative
    )
