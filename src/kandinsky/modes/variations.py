"""Variations: new images from one image's exact CLIP embedding (no prior)."""

from __future__ import annotations

import torch

from kandinsky import engine
from kandinsky.imaging import clip_preprocess
from kandinsky.modes.common import (
    Job,
    ModeOutput,
    denoise_and_decode,
    negative_embeds,
    start_latents,
)


def image_embed(job: Job, image: object) -> torch.Tensor:
    size = job.parts.config.clip.vision.image_size
    return engine.image_embeddings(job.parts, clip_preprocess([image], size=size)).expand(
        job.batch_size, -1
    )


def variations(
    job: Job, image: object, prompt: str = "", latents: torch.Tensor | None = None
) -> ModeOutput:
    positive = image_embed(job, image)
    return denoise_and_decode(
        job, [prompt] * job.batch_size, start_latents(job, latents), positive, negative_embeds(job)
    )
