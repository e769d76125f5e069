"""Image to image: the image's MoVQ latent, noised part-way, then the rest of the schedule.

`convention="original"` (default): strength is the fraction of the schedule SKIPPED, so a
higher strength stays closer to the input (the original's generate_img2img, default 0.7).
`convention="diffusers"`: strength is the fraction RUN, higher = more change (default 0.3
there). Both noise the latent with the 0.0001→0.02 linear schedule, as both references do.
"""

from __future__ import annotations

import torch

from kandinsky import engine
from kandinsky.diffusion.samplers import plan_img2img
from kandinsky.diffusion.schedules import img2img_schedule, q_sample
from kandinsky.imaging import image_to_tensor, pad_to
from kandinsky.modes.common import Job, ModeOutput, denoise_and_decode, embeddings


def image_latents(job: Job, image: object) -> torch.Tensor:
    """MoVQ latent of the image resized to the working size (B copies)."""
    pixels = pad_to(image_to_tensor(image, job.decoder.height, job.decoder.width), *job.work_hw)
    latents = engine.encode_images(job.parts, pixels)
    return latents.expand(job.batch_size, -1, -1, -1)


def img2img(
    job: Job,
    image: object,
    prompts: list[str],
    strength: float,
    convention: str = "original",
    image_embeds: torch.Tensor | None = None,
    negative_image_embeds: torch.Tensor | None = None,
) -> ModeOutput:
    positive, negative = embeddings(job, prompts, image_embeds, negative_image_embeds)
    clean = image_latents(job, image)
    start_step, t_noise = plan_img2img(
        job.decoder.sampler, job.decoder.num_steps, strength, convention
    )
    noisy = q_sample(clean, t_noise, job.noise.like(clean), img2img_schedule())
    return denoise_and_decode(job, prompts, noisy, positive, negative, start_step=start_step)
