"""What every mode shares: options, the per-call job, prior embeddings, start latents, decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kandinsky import engine
from kandinsky.engine import Callback, ImageNoise
from kandinsky.errors import InvalidInput
from kandinsky.imaging import latent_size
from kandinsky.loading import Components


@dataclass(frozen=True)
class PriorOptions:
    guidance_scale: float = 4.0
    num_steps: int = 25
    sampler: str = "original"  # "original" (respaced p_sample) or "unclip" (diffusers' scheduler)
    negative_prompt: str = (
        ""  # the prior's classifier-free-guidance negative (negative_prior_prompt)
    )


@dataclass(frozen=True)
class DecoderOptions:
    guidance_scale: float = 4.0
    num_steps: int = 50
    sampler: str = "ddim"
    height: int = 512
    width: int = 512


@dataclass
class Job:
    """One call: B images, each with its own noise stream and decoder negative prompt."""

    parts: Components
    noise: ImageNoise
    prior: PriorOptions
    decoder: DecoderOptions
    negative_prompts: list[str]  # per image; "" → the zero-image embedding
    prior_callback: Callback | None = None
    decoder_callback: Callback | None = None

    @property
    def batch_size(self) -> int:
        return len(self.negative_prompts)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return latent_size(
            self.decoder.height, self.decoder.width, self.parts.config.movq.downscale
        )

    @property
    def work_hw(self) -> tuple[int, int]:
        """Pixel size the model works at (next multiple of 64); outputs are cropped back."""
        h, w = self.latent_hw
        scale = self.parts.config.movq.downscale
        return h * scale, w * scale


@dataclass
class ModeOutput:
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1], cropped to the asked size
    latents: torch.Tensor
    image_embeds: torch.Tensor
    negative_image_embeds: torch.Tensor
    redone_in_fp32: bool = False
    extras: dict = field(default_factory=dict)


def prior_embeds(job: Job, prompts: list[str], latents: torch.Tensor | None = None) -> torch.Tensor:
    """The prior's image embedding for each image's prompt (B, D)."""
    return engine.run_prior(
        job.parts,
        prompts,
        [job.prior.negative_prompt] * len(prompts),
        guidance_scale=job.prior.guidance_scale,
        num_steps=job.prior.num_steps,
        method=job.prior.sampler,
        noise=job.noise.like,
        latents=latents,
        callback=job.prior_callback,
    )


def negative_embeds(job: Job) -> torch.Tensor:
    """Zero-image embedding, or the prior's embedding of the image's negative prompt (original)."""
    zero = engine.zero_image_embeds(job.parts, job.batch_size)
    wanted = [i for i, text in enumerate(job.negative_prompts) if text]
    if not wanted:
        return zero
    sub = ImageNoise([job.noise.generators[i] for i in wanted], job.noise.device, job.noise.dtype)
    embeds = engine.run_prior(
        job.parts,
        [job.negative_prompts[i] for i in wanted],
        [job.prior.negative_prompt] * len(wanted),
        guidance_scale=job.prior.guidance_scale,
        num_steps=job.prior.num_steps,
        method=job.prior.sampler,
        noise=sub.like,
    )
    zero[wanted] = embeds.to(zero.dtype)
    return zero


def embeddings(
    job: Job,
    prompts: list[str],
    image_embeds: torch.Tensor | None,
    negative_image_embeds: torch.Tensor | None,
    prior_latents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Given embeddings are used as they are (the prior is skipped); missing ones are computed."""
    positive = (
        image_embeds if image_embeds is not None else prior_embeds(job, prompts, prior_latents)
    )
    negative = negative_image_embeds if negative_image_embeds is not None else negative_embeds(job)
    return _batch(positive, job.batch_size, "image_embeds"), _batch(
        negative, job.batch_size, "negative_image_embeds"
    )


def _batch(embeds: torch.Tensor, count: int, name: str) -> torch.Tensor:
    if embeds.ndim == 1:
        embeds = embeds[None]
    if embeds.ndim != 2 or embeds.shape[0] not in (1, count):
        raise InvalidInput(
            f"{name} must have shape (D,), (1, D) or ({count}, D); got {tuple(embeds.shape)}"
        )
    return embeds.expand(count, -1) if embeds.shape[0] == 1 else embeds


def start_latents(job: Job, latents: torch.Tensor | None) -> torch.Tensor:
    channels = job.parts.config.movq.latent_channels
    shape = (job.batch_size, channels, *job.latent_hw)
    if latents is None:
        return job.noise.randn(*shape[1:])
    if tuple(latents.shape) != shape:
        raise InvalidInput(
            f"latents must have shape {shape} for this size and batch; got {tuple(latents.shape)}"
        )
    return latents


def decoder_text(job: Job, prompts: list[str]) -> tuple[engine.DecoderText, engine.DecoderText]:
    """M-CLIP condition for the prompts and the unconditional "" (the original's decoder negative)."""
    return engine.encode_decoder_text(job.parts, prompts), engine.encode_decoder_text(
        job.parts, [""] * len(prompts)
    )


def denoise_and_decode(
    job: Job,
    prompts: list[str],
    latents: torch.Tensor,
    image_embeds: torch.Tensor,
    negative_image_embeds: torch.Tensor,
    start_step: int | None = None,
    inpaint: engine.InpaintInputs | None = None,
) -> ModeOutput:
    """The decoder loop shared by every mode, then MoVQ decoding cropped to the asked size."""
    text, negative_text = decoder_text(job, prompts)
    final = engine.run_decoder(
        job.parts,
        latents=latents,
        image_embeds=image_embeds,
        negative_image_embeds=negative_image_embeds,
        text=text,
        negative_text=negative_text,
        guidance_scale=job.decoder.guidance_scale,
        sampler=job.decoder.sampler,
        num_steps=job.decoder.num_steps,
        noise=job.noise.like,
        start_step=start_step,
        inpaint=inpaint,
        callback=job.decoder_callback,
    )
    images, redone = engine.decode_latents(job.parts, final, job.decoder.height, job.decoder.width)
    return ModeOutput(images, final, image_embeds, negative_image_embeds, redone)
