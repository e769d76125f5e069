"""The steps every generation mode shares, over the loaded `Components`.

prompt → CLIP text → prior (CLIP image space) → image embedding;
prompt → M-CLIP → decoder text condition; (image embedding, text) → UNet sampling loop →
MoVQ decode. Modes (kandinsky.modes) only choose the condition and the start latent.
Nothing here parses user input: callers pass checked values and tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kandinsky.diffusion.guidance import guided_eps_model, guided_x0_model
from kandinsky.diffusion.prior_sampler import sample_prior
from kandinsky.diffusion.samplers import sample
from kandinsky.errors import MissingWeights
from kandinsky.loading import Components
from kandinsky.models.clip import encode_image, encode_text, zero_image_embedding

Callback = Callable[[int, int, torch.Tensor], None]
NoiseSampler = Callable[[torch.Tensor], torch.Tensor]


class ImageNoise:
    """Per-image random streams: image i's noise depends on its own generator only.

    So the same seed gives the same image whatever the batch size. Noise is drawn on the
    CPU (identical on every device) and moved to the target device.
    """

    def __init__(
        self, generators: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype
    ):
        self.generators = list(generators)
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_seeds(
        cls, seeds: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> ImageNoise:
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds], device, dtype)

    def randn(self, *shape: int) -> torch.Tensor:
        """(len(generators), *shape) standard normal."""
        samples = [torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(samples).to(self.device, self.dtype)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The samplers' noise_sampler: fresh noise shaped like x (batch = one row per generator)."""
        if x.shape[0] != len(self.generators):
            raise ValueError(
                f"noise for a batch of {x.shape[0]} asked from {len(self.generators)} generators"
            )
        return self.randn(*x.shape[1:]).to(x.dtype)


@dataclass
class PriorText:
    states: torch.Tensor  # (N, 77, D) CLIP text states after the final LN
    pooled: torch.Tensor  # (N, D) EOT state @ projection
    mask: torch.Tensor  # (N, 77) bool, real tokens


@dataclass
class DecoderText:
    states: torch.Tensor  # (N, 77, 1024) M-CLIP token states
    pooled: torch.Tensor  # (N, 768) M-CLIP pooled


def _require(parts: Components, *names: str) -> None:
    missing = [n for n in names if getattr(parts, n) is None]
    if missing:
        raise MissingWeights(f"this step needs {', '.join(missing)}, which were not loaded.")


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters())
    return param.device, param.dtype


# ---------------------------------------------------------------------------- text and images


@torch.no_grad()
def encode_prior_text(parts: Components, prompts: Sequence[str]) -> PriorText:
    _require(parts, "clip_text", "clip_tokenizer")
    tokens = parts.clip_tokenizer(
        list(prompts),
        padding="max_length",
        max_length=parts.config.prior.text_ctx,
        truncation=True,
        return_tensors="pt",
    )
    device, _ = _device_dtype(parts.clip_text)
    states, pooled = encode_text(parts.clip_text, tokens.input_ids.to(device))
    return PriorText(states, pooled, tokens.attention_mask.to(device).bool())


@torch.no_grad()
def encode_decoder_text(parts: Components, prompts: Sequence[str]) -> DecoderText:
    _require(parts, "text_encoder", "tokenizer")
    tokens = parts.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=parts.config.text_encoder.max_length,
        truncation=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device, _ = _device_dtype(parts.text_encoder)
    states, pooled = parts.text_encoder(
        tokens.input_ids.to(device), tokens.attention_mask.to(device)
    )
    return DecoderText(states, pooled)


@torch.no_grad()
def image_embeddings(parts: Components, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings of preprocessed pixels (N, 3, 224, 224)."""
    _require(parts, "clip_vision")
    device, _ = _device_dtype(parts.clip_vision)
    return encode_image(parts.clip_vision, pixels.to(device))


@torch.no_grad()
def zero_image_embeds(parts: Components, batch_size: int) -> torch.Tensor:
    """The negative image condition when no negative prompt is given (CLIP of a blank input)."""
    _require(parts, "clip_vision")
    return zero_image_embedding(parts.clip_vision, batch_size)


# ---------------------------------------------------------------------------- prior


@torch.no_grad()
def run_prior(
    parts: Components,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    guidance_scale: float,
    num_steps: int,
    method: str,
    noise: NoiseSampler,
    latents: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """CLIP image embeddings (B, D), un-normalised, for `prompts` guided away from `negative_prompts`."""
    _require(parts, "prior")
    prior = parts.prior
    device, dtype = _device_dtype(prior)
    cond = encode_prior_text(parts, prompts)
    if guidance_scale != 1.0:
        uncond = encode_prior_text(parts, negative_prompts)
        text = PriorText(
            *(torch.cat([a, b]) for a, b in zip(_fields(cond), _fields(uncond), strict=True))
        )
    else:
        text = cond

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return prior(x.to(dtype), t, text.pooled, text.states, text.mask).to(x.dtype)

    model = guided_x0_model(network, guidance_scale)
    x = (
        latents
        if latents is not None
        else noise(torch.empty(len(prompts), parts.config.prior.clip_dim))
    )
    x = x.to(device, torch.float32)  # the sampler state stays fp32 whatever the network's dtype
    x0 = sample_prior(model, x, num_steps, method=method, noise_sampler=noise, callback=callback)
    return prior.denormalize(x0)


def _fields(text: PriorText) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return text.states, text.pooled, text.mask


# ---------------------------------------------------------------------------- decoder


@dataclass
class InpaintInputs:
    """The inpainting UNet's extra channels: masked image latent and the keep-mask (1 = keep)."""

    masked_latents: torch.Tensor  # (B, 4, h, w) = image latent · keep
    keep: torch.Tensor  # (B, 1, h, w)
    image_latents: torch.Tensor  # (B, 4, h, w), for p_sampler's x0 blend


@torch.no_grad()
def run_decoder(
    parts: Components,
    *,
    latents: torch.Tensor,
    image_embeds: torch.Tensor,
    negative_image_embeds: torch.Tensor,
    text: DecoderText,
    negative_text: DecoderText,
    guidance_scale: float,
    sampler: str,
    num_steps: int,
    noise: NoiseSampler,
    start_step: int | None = None,
    inpaint: InpaintInputs | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The decoder's sampling loop: one function for every mode; returns final latents."""
    unet = parts.inpaint_unet if inpaint is not None else parts.unet
    _require(parts, "inpaint_unet" if inpaint is not None else "unet")
    device, dtype = _device_dtype(unet)
    guided = guidance_scale != 1.0
    if guided:
        condition = unet.condition(
            torch.cat([image_embeds, negative_image_embeds]).to(device, dtype),
            torch.cat([text.states, negative_text.states]).to(device, dtype),
            torch.cat([text.pooled, negative_text.pooled]).to(device, dtype),
        )
    else:
        condition = unet.condition(
            image_embeds.to(device, dtype),
            text.states.to(device, dtype),
            text.pooled.to(device, dtype),
        )
    extra = None
    if inpaint is not None:
        extra = torch.cat([inpaint.masked_latents, inpaint.keep], dim=1).to(device, dtype)
        if guided:
            extra = torch.cat([extra, extra])
    channels = latents.shape[1]

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_in = x if extra is None else torch.cat([x, extra.to(x.dtype)], dim=1)
        return unet(model_in.to(dtype), t, condition).to(x.dtype)

    denoised_fn = None
    if inpaint is not None:
        keep, known = inpaint.keep.to(device), inpaint.image_latents.to(device)

        def denoised_fn(
            x0: torch.Tensor,
        ) -> torch.Tensor:  # p_sampler: paste the known latent into x0
            return x0 * (1 - keep.to(x0.dtype)) + known.to(x0.dtype) * keep.to(x0.dtype)

    model = guided_eps_model(network, guidance_scale, channels)
    return sample(
        sampler,
        model,
        latents.to(device, torch.float32),  # fp32 sampler state, as the original keeps it
        num_steps,
        start_step=start_step,
        noise_sampler=noise,
        denoised_fn=denoised_fn if sampler == "p_sampler" else None,
        callback=callback,
    )


# ---------------------------------------------------------------------------- MoVQ


@torch.no_grad()
def encode_images(parts: Components, pixels: torch.Tensor) -> torch.Tensor:
    """MoVQ latents (no quantization, scale 1) of images in [-1, 1]."""
    _require(parts, "movq")
    device, dtype = _device_dtype(parts.movq)
    return parts.movq.encode(pixels.to(device, dtype))


@torch.no_grad()
def decode_latents(
    parts: Components, latents: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, bool]:
    """Images in [-1, 1] cropped to (height, width), and whether a non-finite result was redone in fp32.

    fp16 MoVQ decoders overflow on some inputs (black or NaN images); such a batch is decoded
    again in float32 rather than handed to the user.
    """
    _require(parts, "movq")
    movq = parts.movq
    device, dtype = _device_dtype(movq)
    images = movq.decode(latents.to(device, dtype))
    redone = False
    if dtype != torch.float32 and not torch.isfinite(images).all():
        movq.float()
        try:
            images = movq.decode(latents.to(device, torch.float32))
        finally:
            movq.to(dtype)
        redone = True
    return images[:, :, :height, :width].float(), redone


def warn_fp32_fallback() -> None:
    warnings.warn(
        "the MoVQ decoder overflowed in reduced precision; the images were decoded again in float32 "
        "(load with dtype='bf16' or 'fp32' to avoid the extra pass)",
        RuntimeWarning,
        stacklevel=3,
    )
