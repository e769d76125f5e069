"""Inpainting with the 9-channel UNet: [noisy latent, masked image latent, keep-mask].

The mask arrives already converted to a "keep" mask (1 = keep) by kandinsky.imaging; here it
goes to latent resolution (nearest) and is eroded by one latent pixel, as the original does.
With `paste_back` the unmasked pixels of the input are restored exactly after decoding,
feathered over a few pixels at the border (the original returns the decoded latent as is).
"""

from __future__ import annotations

import torch

from kandinsky import engine
from kandinsky.imaging import image_to_tensor, latent_keep_mask, pad_to
from kandinsky.modes.common import Job, ModeOutput, denoise_and_decode, embeddings, start_latents


def inpaint(
    job: Job,
    image: object,
    keep: torch.Tensor,
    prompts: list[str],
    *,
    paste_back: bool = True,
    image_embeds: torch.Tensor | None = None,
    negative_image_embeds: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
) -> ModeOutput:
    """`keep`: (1, 1, height, width) float, 1 = keep, at the asked output size."""
    positive, negative = embeddings(job, prompts, image_embeds, negative_image_embeds)
    pixels = image_to_tensor(image, job.decoder.height, job.decoder.width)
    work_pixels = pad_to(pixels, *job.work_hw)
    work_keep = pad_to(keep, *job.work_hw, value=0.0)  # the extra working border is generated
    image_latents = engine.encode_images(job.parts, work_pixels).expand(job.batch_size, -1, -1, -1)
    keep_latent = (
        latent_keep_mask(work_keep, job.latent_hw)
        .to(image_latents)
        .expand(job.batch_size, -1, -1, -1)
    )
    inputs = engine.InpaintInputs(image_latents * keep_latent, keep_latent, image_latents)
    out = denoise_and_decode(
        job, prompts, start_latents(job, latents), positive, negative, inpaint=inputs
    )
    if paste_back:
        out.images = paste_known(out.images, pixels.to(out.images), keep.to(out.images))
    return out


def paste_known(
    generated: torch.Tensor, original: torch.Tensor, keep: torch.Tensor, feather: int = 3
) -> torch.Tensor:
    """Put the kept pixels back exactly; blend over `feather` pixels inside the repaint border."""
    alpha = keep
    if feather > 0:
        # grow the keep region softly into the repainted area: max-pool distance rings
        rings = [keep]
        grown = keep
        for _ in range(feather):
            grown = torch.nn.functional.max_pool2d(grown, 3, stride=1, padding=1)
            rings.append(grown)
        alpha = torch.stack(rings).mean(0)
        alpha = torch.where(keep >= 1, torch.ones_like(alpha), alpha)
    return generated * (1 - alpha) + original * alpha
