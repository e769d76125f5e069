"""Same tiny weights, same noise, same scheduler settings ⇒ the same outputs as diffusers (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

TOL = 1e-4
PROMPT = "a red circle on the left of a blue square"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """diffusers' output_type="pt" from the Kandinsky 2.1 pipelines is the raw [-1, 1] decode."""
    return (images.clamp(-1, 1) + 1) / 2


def _picture(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    array = np.stack(
        [base[None, :].repeat(size, 0), base[:, None].repeat(size, 1), np.full((size, size), 90.0)],
        -1,
    )
    array += rng.normal(0, 20, array.shape)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("steps", [5, 25])
def test_prior_equals_diffusers_prior_pipeline(pipe, diffusers_pipes, steps) -> None:
    theirs = diffusers_pipes["prior"](
        PROMPT, generator=gen(), num_inference_steps=steps, guidance_scale=4.0
    )
    embeds, negative = pipe.prior(
        PROMPT, generator=gen(), prior_steps=steps, prior_guidance_scale=4.0, prior_sampler="unclip"
    )
    assert (embeds - theirs.image_embeds).abs().max() <= TOL
    assert (negative - theirs.negative_image_embeds).abs().max() <= TOL


def test_text2img_equals_diffusers_prior_then_decoder(pipe, diffusers_pipes) -> None:
    g = gen(3)
    prior = diffusers_pipes["prior"](PROMPT, generator=g, num_inference_steps=5)
    theirs = diffusers_pipes["text2img"](
        PROMPT,
        image_embeds=prior.image_embeds,
        negative_image_embeds=prior.negative_image_embeds,
        height=64,
        width=64,
        num_inference_steps=10,
        guidance_scale=4.0,
        generator=g,
        output_type="pt",
    ).images
    theirs = as_unit(theirs)
    ours = pipe.text2img(
        PROMPT,
        generator=gen(3),
        prior_steps=5,
        prior_sampler="unclip",
        num_steps=10,
        sampler="ddim",
        height=64,
        width=64,
    )
    assert ours.pixels.shape == theirs.shape == (1, 3, 64, 64)
    assert (ours.pixels - theirs).abs().max() <= TOL


def test_text2img_with_given_embeddings_equals_diffusers_decoder_non_square(
    pipe, diffusers_pipes
) -> None:
    embeds, negative = pipe.prior(PROMPT, seed=1, prior_steps=5)
    theirs = diffusers_pipes["text2img"](
        PROMPT,
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=64,
        width=128,
        num_inference_steps=10,
        guidance_scale=4.0,
        generator=gen(5),
        output_type="pt",
    ).images
    theirs = as_unit(theirs)
    ours = pipe.text2img(
        PROMPT,
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=64,
        width=128,
        num_steps=10,
        guidance_scale=4.0,
        generator=gen(5),
    )
    assert (ours.pixels - theirs).abs().max() <= TOL


def test_mix_equals_diffusers_interpolate(pipe, diffusers_pipes) -> None:
    picture = _picture(64)
    theirs = diffusers_pipes["prior"].interpolate(
        [picture, PROMPT], [0.3, 0.7], generator=gen(7), num_inference_steps=5
    )
    ours = pipe.mix(
        [picture, PROMPT],
        [0.3, 0.7],
        generator=gen(7),
        prior_steps=5,
        prior_sampler="unclip",
        num_steps=2,
        height=64,
        width=64,
    )
    assert (ours.image_embeds - theirs.image_embeds).abs().max() <= TOL
    assert (ours.negative_image_embeds - theirs.negative_image_embeds).abs().max() <= TOL


def test_img2img_equals_diffusers_with_its_strength_convention(pipe, diffusers_pipes) -> None:
    picture = _picture(64, seed=2)
    embeds, negative = pipe.prior(PROMPT, seed=2, prior_steps=5)
    theirs = diffusers_pipes["img2img"](
        PROMPT,
        image=picture,
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=64,
        width=64,
        strength=0.3,
        num_inference_steps=10,
        guidance_scale=7.0,
        generator=gen(9),
        output_type="pt",
    ).images
    # this pipeline post-processes "pt" output to [0, 1] itself
    ours = pipe.img2img(
        picture,
        PROMPT,
        strength=0.3,
        strength_convention="diffusers",
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=64,
        width=64,
        num_steps=10,
        guidance_scale=7.0,
        generator=gen(9),
    )
    assert (ours.pixels - theirs).abs().max() <= TOL


def test_inpaint_equals_diffusers_white_repaints(pipe, diffusers_pipes) -> None:
    picture = _picture(64, seed=4)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 8:40] = 255
    mask_image = Image.fromarray(mask)
    embeds, negative = pipe.prior(PROMPT, seed=4, prior_steps=5)
    theirs = diffusers_pipes["inpaint"](
        PROMPT,
        image=picture,
        mask_image=mask_image,
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=64,
        width=64,
        num_inference_steps=10,
        guidance_scale=4.0,
        generator=gen(11),
        output_type="pt",
    ).images
    theirs = as_unit(theirs)
    ours = pipe.inpaint(
        picture,
        mask_image,
        PROMPT,
        paste_back=False,
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=64,
        width=64,
        num_steps=10,
        guidance_scale=4.0,
        generator=gen(11),
    )
    assert (ours.pixels - theirs).abs().max() <= TOL
