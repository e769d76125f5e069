"""Text to image: prior(prompt) → image embedding; noise → decoder → MoVQ."""

from __future__ import annotations

import torch

from kandinsky.modes.common import Job, ModeOutput, denoise_and_decode, embeddings, start_latents


def text2img(
    job: Job,
    prompts: list[str],
    *,
    image_embeds: torch.Tensor | None = None,
    negative_image_embeds: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    prior_latents: torch.Tensor | None = None,
) -> ModeOutput:
    positive, negative = embeddings(
        job, prompts, image_embeds, negative_image_embeds, prior_latents
    )
    return denoise_and_decode(job, prompts, start_latents(job, latents), positive, negative)
