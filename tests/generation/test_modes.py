"""Every mode runs on tiny weights, returns the asked size, and records how to reproduce it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kandinsky import InvalidInput
from kandinsky.results import read_params

FAST = {"num_steps": 3, "prior_steps": 3}


def picture(width: int = 64, height: int = 64) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    x[..., 2] = 128
    return Image.fromarray(x)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (72, 96), (128, 64)])
def test_text2img_returns_the_asked_size(pipe, height, width) -> None:
    result = pipe.text2img("a red circle", seed=0, height=height, width=width, **FAST)
    assert result.image.size == (width, height)
    assert result.pixels.shape == (1, 3, height, width)
    assert result.seeds == [0] and result.params[0]["seed"] == 0


def test_default_size_is_the_models_own(pipe) -> None:
    from dataclasses import replace

    from kandinsky.checkpoints.diffusers_unet import from_diffusers_config, to_diffusers_config
    from kandinsky.pipeline import Kandinsky21

    assert pipe.native_size == (512, 512)  # sample_size 64 latents × MoVQ's 8
    unet = replace(pipe.parts.config.unet, sample_size=8)  # the demo model's 8×8 latents
    assert from_diffusers_config(to_diffusers_config(unet)) == unet
    small = Kandinsky21(replace(pipe.parts, config=replace(pipe.parts.config, unet=unet)))
    assert small.native_size == (64, 64)
    result = small.text2img("a red circle", seed=0, **FAST)
    assert result.image.size == (64, 64) and result.params[0]["height"] == 64
    assert small.text2img("a red circle", seed=0, width=96, **FAST).image.size == (96, 64)


@pytest.mark.parametrize("sampler", ["p_sampler", "ddim", "plms", "dpmpp_2m", "euler_a"])
def test_same_seed_gives_the_same_image_whatever_the_batch_size(pipe, sampler) -> None:
    size = {"height": 64, "width": 64, "sampler": sampler, **FAST}
    single = pipe.text2img("a red circle", seed=[11], **size)
    batch = pipe.text2img("a red circle", seed=[5, 11, 12], num_images=3, **size)
    # equal up to the float rounding of batched matrix products
    assert (batch.pixels[1] - single.pixels[0]).abs().max() < 1e-4
    assert (batch.pixels[0] - batch.pixels[1]).abs().max() > 1e-3


def test_several_prompts_each_get_num_images(pipe) -> None:
    result = pipe.text2img(
        ["a red circle", "a blue square"], num_images=2, seed=0, height=64, width=64, **FAST
    )
    assert len(result) == 4 and result.seeds == [0, 1, 2, 3]
    assert [p["prompt"] for p in result.params] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert [p["batch_index"] for p in result.params] == [0, 1, 2, 3]


@pytest.mark.parametrize("sampler", ["p_sampler", "ddim", "plms", "dpmpp_2m", "euler_a"])
def test_every_decoder_sampler_runs(pipe, sampler) -> None:
    result = pipe.text2img("a star", seed=1, sampler=sampler, height=64, width=64, **FAST)
    assert torch.isfinite(result.pixels).all()


@pytest.mark.parametrize("prior_sampler", ["original", "unclip"])
def test_both_prior_samplers_run(pipe, prior_sampler) -> None:
    embeds, negative = pipe.prior("a star", seed=0, prior_steps=4, prior_sampler=prior_sampler)
    assert embeds.shape == negative.shape == (1, pipe.parts.config.prior.clip_dim)


def test_negative_prompts_change_the_result(pipe) -> None:
    base = pipe.text2img("a star", seed=2, height=64, width=64, **FAST)
    decoder_negative = pipe.text2img(
        "a star", negative_prompt="blue", seed=2, height=64, width=64, **FAST
    )
    prior_negative = pipe.text2img(
        "a star", negative_prior_prompt="blue", seed=2, height=64, width=64, **FAST
    )
    assert (base.pixels - decoder_negative.pixels).abs().max() > 1e-4
    assert (base.pixels - prior_negative.pixels).abs().max() > 1e-4


def test_prior_embeddings_can_be_reused(pipe) -> None:
    embeds, negative = pipe.prior("a star", seed=3, prior_steps=3)
    direct = pipe.text2img("a star", seed=3, height=64, width=64, **FAST)
    reused = pipe.text2img(
        "a star",
        image_embeds=embeds,
        negative_image_embeds=negative,
        seed=3,
        height=64,
        width=64,
        num_steps=3,
    )
    assert torch.allclose(direct.image_embeds, embeds)
    assert reused.image.size == (64, 64)


def test_mix_variations_img2img_edit_run(pipe) -> None:
    photo = picture(80, 64)
    mixed = pipe.mix(
        [photo, "in the style of van gogh"], [0.6, 0.4], seed=0, height=64, width=64, **FAST
    )
    varied = pipe.variations(photo, num_images=2, seed=0, height=64, width=64, **FAST)
    moved = pipe.img2img(photo, "a cat", strength=0.5, seed=0, **FAST)
    edited = pipe.edit(photo, "make it red", seed=0, **FAST)
    assert mixed.image.size == (64, 64) and len(varied) == 2
    assert moved.image.size == (80, 64) and edited.image.size == (80, 64)


def test_inpaint_keeps_the_unmasked_pixels(pipe) -> None:
    photo = picture(64, 64)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:, 32:] = 1.0  # white (1) = repaint the right half
    result = pipe.inpaint(photo, mask, "a star", seed=0, **FAST)
    left = np.asarray(result.image)[:, :29].astype(int)
    assert np.abs(left - np.asarray(photo)[:, :29].astype(int)).max() <= 1


def test_inpaint_original_polarity_is_the_inverse(pipe) -> None:
    photo = picture(64, 64)
    keep_right = np.zeros((64, 64), dtype=np.float32)
    keep_right[:, 32:] = 1.0
    white = pipe.inpaint(photo, 1.0 - keep_right, "a star", seed=0, **FAST)
    original = pipe.inpaint(photo, keep_right, "a star", mask_polarity="original", seed=0, **FAST)
    assert torch.equal(white.pixels, original.pixels)


def test_outpaint_grows_the_canvas_in_passes(pipe) -> None:
    photo = picture(64, 64)
    result = pipe.outpaint(photo, "a field", extend=(0, 0, 96, 0), max_step=64, seed=0, **FAST)
    assert result.image.size == (160, 64)
    assert result.extras["passes"] == [(0, 0, 64, 0), (0, 0, 32, 0)]
    assert (
        np.abs(
            np.asarray(result.image)[:, :40].astype(int) - np.asarray(photo)[:, :40].astype(int)
        ).max()
        <= 1
    )


def test_outpaint_to_a_size_centres_the_image(pipe) -> None:
    result = pipe.outpaint(picture(64, 64), "a field", size=(128, 96), seed=0, **FAST)
    assert result.image.size == (128, 96)
    assert result.params[0]["extend"] == [32, 16, 32, 16]


def test_png_metadata_round_trips(pipe, tmp_path) -> None:
    result = pipe.text2img("красный круг", seed=42, height=64, width=64, **FAST)
    first, second = result.save(tmp_path) + pipe.text2img(
        "красный круг", seed=42, height=64, width=64, **FAST
    ).save(tmp_path)
    assert first != second  # never overwrites
    params = read_params(first)
    assert (
        params["seed"] == 42 and params["prompt"] == "красный круг" and params["mode"] == "text2img"
    )
    again = pipe.text2img(
        params["prompt"],
        seed=params["seed"],
        height=params["height"],
        width=params["width"],
        num_steps=params["num_steps"],
        prior_steps=params["prior_steps"],
        sampler=params["sampler"],
    )
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(again.image))
    assert "Steps: 3" in Image.open(first).text["parameters"]


BAD_CALLS = [
    ("text2img", ([],), {}, "prompt"),
    ("text2img", ("x",), {"num_steps": 0}, "num_steps"),
    ("text2img", ("x",), {"num_steps": 10_000}, "num_steps"),
    ("text2img", ("x",), {"sampler": "magic"}, "sampler"),
    ("text2img", ("x",), {"prior_sampler": "magic"}, "prior_sampler"),
    ("text2img", ("x",), {"height": 100}, "height"),
    ("text2img", ("x",), {"width": 20000}, "width"),
    ("text2img", ("x",), {"guidance_scale": float("nan")}, "guidance_scale"),
    ("text2img", ("x",), {"seed": [1, 2], "num_images": 3}, "seed"),
    ("text2img", (["a", "b"],), {"negative_prompt": ["n"]}, "negative_prompt"),
    ("text2img", ("x",), {"output_type": "jpeg"}, "output_type"),
    ("mix", ([picture(), "x"], [0.5, -0.5]), {}, "weights"),
    ("mix", (["x", "y"], [1.0]), {}, "weights"),
    ("mix", ([], []), {}, "items"),
    ("img2img", (picture(), "x"), {"strength": 1.5}, "strength"),
    ("img2img", (Image.new("RGB", (1, 1)), "x"), {}, "at least 8"),
    ("img2img", ("not an image", "x"), {}, "expected"),
    ("inpaint", (picture(), np.zeros((32, 32)), "x"), {}, "mask"),
    ("inpaint", (picture(), Image.new("L", (32, 32)), "x"), {}, "mask"),
    ("inpaint", (picture(), np.zeros((64, 64)), "x"), {"mask_polarity": "black"}, "polarity"),
    ("outpaint", (picture(), "x"), {}, "extend"),
    ("outpaint", (picture(), "x"), {"extend": (0, 0, 0, 0)}, "extend"),
    ("outpaint", (picture(), "x"), {"size": (32, 32)}, "size"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "named"), BAD_CALLS)
def test_bad_input_names_the_argument(pipe, method, args, kwargs, named) -> None:
    with pytest.raises(InvalidInput, match=named):
        getattr(pipe, method)(*args, **kwargs)


def test_image_of_20000_pixels_is_refused(pipe) -> None:
    with pytest.raises(InvalidInput, match="16384"):
        pipe.variations(np.zeros((20000, 8, 3), dtype=np.uint8))


def test_concurrent_saves_into_one_folder_never_overwrite(pipe, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    result = pipe.text2img("a star", seed=0, height=64, width=64, **FAST)
    with ThreadPoolExecutor(8) as pool:
        paths = [p for batch in pool.map(lambda _: result.save(tmp_path), range(8)) for p in batch]
    assert len(set(paths)) == 8 and len(list(tmp_path.glob("*.png"))) == 8
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_outpaint_passes_share_one_condition(pipe) -> None:
    result = pipe.outpaint(
        picture(64, 64), "a field", extend=(0, 0, 96, 0), max_step=32, seed=0, **FAST
    )
    assert len(result.extras["passes"]) == 3 and result.image_embeds.shape[0] == 1
