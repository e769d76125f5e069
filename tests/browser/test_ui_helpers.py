"""The web UI's pure helpers (no browser): editor mask, outpaint canvas, seeds, sizes, mix slots."""

from __future__ import annotations

import io
import json
import random

import gradio as gr
import numpy as np
import pytest
import torch
from gradio.processing_utils import encode_pil_to_bytes
from PIL import Image

from kandinsky.errors import InvalidInput, MissingWeights
from kandinsky.pipeline import canvas_extension
from kandinsky.results import JSON_KEY, PARAMETERS_KEY, GenerationResult
from kandinsky.server import ui
from kandinsky.server.worker import QueueFull


def _editor_value(width=32, height=24, strokes=(), layer_size=None, numpy=False):
    """What gr.ImageEditor(type="pil") hands the handler: background, paint layers, composite."""
    background = Image.new("RGBA", (width, height), (10, 200, 30, 255))
    layer = np.zeros(((layer_size or (width, height))[1], (layer_size or (width, height))[0], 4))
    for x0, y0, x1, y1, alpha in strokes:
        layer[y0:y1, x0:x1] = (255, 255, 255, alpha)
    layer_image = Image.fromarray(layer.astype(np.uint8), mode="RGBA")
    if numpy:
        return {"background": np.asarray(background), "layers": [np.asarray(layer_image)]}
    return {"background": background, "layers": [layer_image], "composite": background}


# ---------------------------------------------------------------------------- mask


def test_painted_white_strokes_become_the_mask():
    image, mask = ui.mask_from_editor(_editor_value(strokes=[(4, 2, 10, 8, 255)]))
    assert image.mode == "RGB" and image.size == (32, 24)
    assert image.getpixel((0, 0)) == (10, 200, 30)
    assert mask.mode == "L" and mask.size == (32, 24)
    values = np.asarray(mask)
    expected = np.zeros((24, 32), dtype=np.uint8)
    expected[2:8, 4:10] = 255
    np.testing.assert_array_equal(values, expected)


def test_soft_edges_and_numpy_values_count_as_painted():
    _, mask = ui.mask_from_editor(_editor_value(strokes=[(0, 0, 3, 3, 40)], numpy=True))
    assert np.asarray(mask)[:3, :3].min() == 255
    assert np.asarray(mask).sum() == 9 * 255


def test_every_layer_adds_to_the_mask_and_erased_pixels_drop_out():
    value = _editor_value(strokes=[(0, 0, 4, 4, 255)])
    second = np.zeros((24, 32, 4), dtype=np.uint8)
    second[20:24, 28:32] = (255, 255, 255, 255)
    value["layers"].append(Image.fromarray(second, mode="RGBA"))
    _, mask = ui.mask_from_editor(value)
    values = np.asarray(mask)
    assert values[:4, :4].min() == 255 and values[20:, 28:].min() == 255
    assert (values > 0).sum() == 32


def test_a_layer_of_another_size_is_scaled_onto_the_image():
    value = _editor_value(strokes=[(0, 0, 32, 24, 255)], layer_size=(64, 48))
    _, mask = ui.mask_from_editor(value)
    assert mask.size == (32, 24)
    assert (np.asarray(mask)[:12, :16] == 255).all() and np.asarray(mask)[12:, 16:].max() == 0


def test_transparent_uploads_are_flattened_on_white():
    value = _editor_value(strokes=[(0, 0, 1, 1, 255)])
    value["background"] = Image.new("RGBA", (32, 24), (0, 0, 0, 0))
    image, _ = ui.mask_from_editor(value)
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_missing_image_or_mask_is_a_user_error():
    with pytest.raises(InvalidInput, match="upload an image"):
        ui.mask_from_editor(None)
    with pytest.raises(InvalidInput, match="upload an image"):
        ui.mask_from_editor({"background": None, "layers": [], "composite": None})
    with pytest.raises(InvalidInput, match="paint over"):
        ui.mask_from_editor(_editor_value())


def test_the_mask_repaints_white_in_the_pipeline_convention():
    from kandinsky.imaging import mask_to_keep

    _, mask = ui.mask_from_editor(_editor_value(strokes=[(4, 2, 10, 8, 255)]))
    keep = mask_to_keep(mask, 24, 32, polarity="white_repaints")
    assert keep[0, 0, 5, 5] == 0 and keep[0, 0, 20, 20] == 1


# ---------------------------------------------------------------------------- outpaint canvas


@pytest.mark.parametrize(
    ("size", "mode", "sides", "target"),
    [
        ((100, 60), ui.GROW_BY_SIDES, (10, 0, 10, 0), (None, None)),
        ((100, 60), ui.GROW_BY_SIDES, (5, 3, 0, 0), (None, None)),
        ((128, 96), ui.GROW_BY_SIDES, (128, 32, 128, 0), (None, None)),
        ((100, 60), ui.GROW_TO_SIZE, (0, 0, 0, 0), (256, 128)),
        ((64, 64), ui.GROW_TO_SIZE, (1, 1, 1, 1), (77.0, 64)),
    ],
)
def test_canvas_preview_has_the_size_the_pipeline_will_generate(size, mode, sides, target):
    grow = ui.outpaint_extension(size, mode, sides, target)
    placeholder = Image.new("RGB", size)
    if mode == ui.GROW_TO_SIZE:
        assert grow == canvas_extension(placeholder, None, tuple(int(t) for t in target))
    else:
        assert grow == canvas_extension(placeholder, sides, None)
    left, top, right, bottom = grow
    canvas = ui.canvas_preview(Image.new("RGB", size, (255, 0, 0)), grow)
    assert canvas.size == (size[0] + left + right, size[1] + top + bottom)
    assert canvas.width % 8 == 0 and canvas.height % 8 == 0


def test_canvas_preview_pastes_the_image_and_checkers_the_new_area():
    canvas = ui.canvas_preview(Image.new("RGB", (16, 16), (255, 0, 0)), (8, 0, 8, 16))
    pixels = np.asarray(canvas)
    assert canvas.size == (32, 32)
    assert (pixels[0:16, 8:24] == (255, 0, 0)).all()
    new_area = np.concatenate([pixels[:, :8].reshape(-1, 3), pixels[16:, :].reshape(-1, 3)])
    assert {tuple(p) for p in new_area} == {(204, 204, 204), (153, 153, 153)}


def test_the_centred_target_size_splits_the_growth():
    assert ui.outpaint_extension((64, 64), ui.GROW_TO_SIZE, (0, 0, 0, 0), (128, 96)) == (
        32,
        16,
        32,
        16,
    )


@pytest.mark.parametrize(
    ("mode", "sides", "target", "message"),
    [
        (ui.GROW_BY_SIDES, (0, 0, 0, 0), (None, None), "all zeros"),
        (ui.GROW_TO_SIZE, (0, 0, 0, 0), (32, 32), "at least the image"),
        (ui.GROW_TO_SIZE, (0, 0, 0, 0), (None, 128), "target width is empty"),
        (ui.GROW_BY_SIDES, (0, 2.5, 0, 0), (None, None), "whole number"),
        (ui.GROW_BY_SIDES, (0, 0, 5000, 0), (None, None), "between 64 and 4096"),
    ],
)
def test_impossible_canvases_say_why(mode, sides, target, message):
    with pytest.raises(InvalidInput, match=message):
        ui.outpaint_extension((64, 64), mode, sides, target)


def test_large_previews_are_scaled_down_small_ones_kept():
    small = Image.new("RGB", (300, 200))
    assert ui.preview_thumbnail(small) is small
    thumb = ui.preview_thumbnail(Image.new("RGB", (4096, 1024)), max_side=512)
    assert thumb.size == (512, 128)


# ---------------------------------------------------------------------------- seeds and sizes


def test_seed_minus_one_or_empty_draws_a_browser_safe_random_seed():
    rng = random.Random(0)
    seeds = {ui.resolve_seed(-1, rng) for _ in range(50)} | {ui.resolve_seed(None, rng)}
    assert len(seeds) > 40
    assert all(0 <= s <= ui.MAX_UI_SEED < 2**53 for s in seeds)
    assert ui.resolve_seed(float("nan"), rng) >= 0


def test_a_given_seed_is_used_as_is():
    assert ui.resolve_seed(0) == 0
    assert ui.resolve_seed(1234) == 1234
    assert ui.resolve_seed(1234.0) == 1234
    with pytest.raises(InvalidInput, match="whole number"):
        ui.resolve_seed(1.5)
    with pytest.raises(InvalidInput, match="out of range"):
        ui.resolve_seed(2**64)


def test_reuse_takes_the_first_seed_of_the_last_run():
    assert ui.reuse_seed([77, 78, 79], -1) == 77
    assert ui.reuse_seed([], 5) == 5
    assert ui.reuse_seed(None, -1) == -1


def test_size_presets_custom_and_input_size():
    assert ui.resolve_size("1024 × 768", 64, 64) == (1024, 768)
    assert ui.resolve_size("768 × 1024", None, None) == (768, 1024)
    assert ui.resolve_size(ui.CUSTOM, 64, 128.0) == (64, 128)
    assert ui.resolve_size(ui.INPUT_SIZE, 64, 64) == (None, None)
    assert ui.preset_size("768 × 768") == (768, 768)
    assert ui.preset_size(ui.CUSTOM) is None and ui.preset_size(ui.INPUT_SIZE) is None
    # the model's own size (64×64 for the demo model) is what "Model's size" stands for
    assert ui.resolve_size(ui.MODEL_SIZE, 512, 512, (64, 64)) == (64, 64)
    assert ui.preset_size(ui.MODEL_SIZE, (64, 48)) == (64, 48)
    with pytest.raises(InvalidInput, match="width is empty"):
        ui.resolve_size(ui.CUSTOM, None, 64)
    with pytest.raises(InvalidInput, match="unknown"):
        ui.resolve_size("huge", 64, 64)


def test_image_modes_default_to_the_input_size_rounded_to_8():
    assert ui.input_image_size(Image.new("RGB", (130, 97))) == (128, 96)
    assert ui.input_image_size(np.zeros((40, 300, 3), dtype=np.uint8)) == (296, 64)
    assert ui.input_image_size(_editor_value(width=72, height=99)) == (72, 96)
    assert ui.input_image_size(None) is None
    assert ui.input_image_size({"background": None, "layers": []}) is None


# ---------------------------------------------------------------------------- mix slots


def test_mix_slots_skip_empty_ones_and_keep_order():
    picture = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    items, weights = ui.mix_items(
        ["a cat", "", None, "  in the style of van gogh "],
        [None, None, picture, None],
        [0.5, 0.9, 0.2, 0.3],
    )
    assert items[0] == "a cat" and items[2] == "in the style of van gogh"
    assert isinstance(items[1], Image.Image) and items[1].mode == "RGB"
    assert weights == [0.5, 0.2, 0.3]


def test_mix_slots_refuse_ambiguous_or_too_few_items():
    picture = Image.new("RGB", (16, 16))
    with pytest.raises(InvalidInput, match="slot 1 has both"):
        ui.mix_items(["a cat", "a dog"], [picture, None], [0.5, 0.5])
    with pytest.raises(InvalidInput, match="at least two"):
        ui.mix_items(["a cat", ""], [None, None], [0.5, 0.5])


# ---------------------------------------------------------------------------- results


def _result(seeds=(11, 12)) -> GenerationResult:
    images = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(len(seeds))]
    params = [
        {"prompt": "a cat", "num_steps": 2, "seed": s, "width": 64, "height": 64} for s in seeds
    ]
    return GenerationResult(
        images=images, seeds=list(seeds), params=params, pixels=torch.zeros(len(seeds), 3, 64, 64)
    )


def test_gallery_images_carry_their_parameters_into_the_png_gradio_writes():
    items = ui.gallery_items(_result())
    assert [caption for _, caption in items] == ["seed 11", "seed 12"]
    png = Image.open(io.BytesIO(encode_pil_to_bytes(items[1][0], "png")))
    assert png.format == "PNG" and png.size == (64, 64)
    assert json.loads(png.text[JSON_KEY])["seed"] == 12
    assert "Seed: 12" in png.text[PARAMETERS_KEY]


def test_describe_lists_all_seeds_then_the_parameters():
    text = ui.describe(_result())
    assert text.splitlines()[0] == "Seeds: 11, 12"
    assert text.splitlines()[1] == "a cat"
    assert "Steps: 2" in text


def test_describe_spells_out_a_mix():
    result = _result(seeds=(5,))
    result.params[0].update(prompt="", items=["a cat", "<image 64x64>"], weights=[0.7, 0.3])
    lines = ui.describe(result).splitlines()
    assert lines[:2] == ["Seeds: 5", "Mix: 0.7 × a cat + 0.3 × <image 64x64>"]
    assert lines[2].startswith("Steps: 2")


class _FailingWorker:
    def __init__(self, error: BaseException):
        self.error = error

    def run(self, mode, kwargs, timeout=None):
        raise self.error


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (QueueFull("the server is busy: 8 jobs are waiting", retry_after=3), "server is busy"),
        (TimeoutError("late"), "took too long"),
        (MissingWeights("inpainting needs the inpainting UNet"), "inpainting UNet"),
        (RuntimeError("CUDA out of memory"), "text2img failed: RuntimeError: CUDA out of memory"),
    ],
)
def test_worker_failures_become_one_line_messages(error, shown):
    with pytest.raises(gr.Error) as caught:
        ui.run_job(_FailingWorker(error), "text2img", {})
    assert shown in caught.value.message
    assert "Traceback" not in caught.value.message


def test_invalid_input_passes_through_for_the_handler_to_show():
    with pytest.raises(InvalidInput):
        ui.run_job(_FailingWorker(InvalidInput("width is 65")), "text2img", {})


# ---------------------------------------------------------------------------- the page


def _elem_ids(demo: gr.Blocks) -> list[str]:
    return [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]


def test_every_tab_has_its_controls_with_stable_unique_ids():
    demo = ui.build_ui(_FailingWorker(RuntimeError()), None)
    ids = _elem_ids(demo)
    assert len(ids) == len(set(ids))
    for prefix in ("t2i", "mix", "var", "i2i", "inpaint", "outpaint"):
        for field in (
            "generate",
            "gallery",
            "params",
            "advanced",
            "negative-prompt",
            "guidance",
            "steps",
            "sampler",
            "prior-guidance",
            "prior-steps",
            "prior-sampler",
            "seed",
            "seed-reuse",
            "seed-random",
            "num-images",
        ):
            assert f"{prefix}-{field}" in ids, f"{prefix}-{field}"
    for elem_id in (
        "t2i-prompt",
        "t2i-size-preset",
        "t2i-width",
        "t2i-height",
        "t2i-negative-prior-prompt",
        "mix-text-1",
        "mix-image-4",
        "mix-weight-2",
        "var-image",
        "i2i-strength",
        "inpaint-editor",
        "inpaint-paste-back",
        "outpaint-image",
        "outpaint-left",
        "outpaint-bottom",
        "outpaint-target-width",
        "outpaint-preview",
    ):
        assert elem_id in ids, elem_id
    assert "var-negative-prior-prompt" not in ids  # variations() has no negative prior prompt


def test_settings_limit_the_sliders_and_name_the_model():
    class Settings:
        max_steps = 30
        max_images = 3
        model_id = "my/model"

    demo = ui.build_ui(_FailingWorker(RuntimeError()), Settings())
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["t2i-steps"].maximum == 30 and by_id["t2i-steps"].value == 30
    assert by_id["t2i-prior-steps"].value == 25
    assert by_id["inpaint-num-images"].maximum == 3
    assert "my/model" in by_id["header"].value


def test_page_requests_obey_the_output_size_limit() -> None:
    import pytest as _pytest

    from kandinsky.errors import InvalidInput
    from kandinsky.server.ui import SizeLimited

    calls = []

    class Recorder:
        def run(self, mode, kwargs, timeout=None):
            calls.append((mode, kwargs))
            return "ok"

    limited = SizeLimited(Recorder(), max_output_pixels=64 * 64)
    assert limited.run("text2img", {"height": 64, "width": 64}) == "ok"
    with _pytest.raises(InvalidInput, match="at most 4096"):
        limited.run("text2img", {"height": 128, "width": 64})
    with _pytest.raises(InvalidInput):
        limited.run("outpaint", {"size": (128, 128)})
    assert len(calls) == 1
