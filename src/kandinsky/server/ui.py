"""The Gradio web UI: one tab per mode, every call going through the server's worker queue.

`build_ui(worker, settings)` returns the `gradio.Blocks`; the server mounts it at "/"
(`gradio.mount_gradio_app`) and `launch(...)` serves it alone. The handlers only translate
widget values into `Kandinsky21` keyword arguments; the pure helpers below (mask from the
image editor, outpaint canvas preview, seeds, sizes, mix slots) carry the logic and are
tested without a browser. Every interactive element has a stable `elem_id`
("<tab>-<field>", e.g. "t2i-prompt", "inpaint-editor") for the browser tests.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gradio as gr
import numpy as np
from gradio.components import Component
from PIL import Image

from kandinsky.defaults import PRIOR_SAMPLERS, GenerationDefaults
from kandinsky.diffusion.samplers import SAMPLERS as SAMPLER_FUNCTIONS
from kandinsky.errors import InvalidInput, KandinskyError
from kandinsky.pipeline import canvas_extension
from kandinsky.results import JSON_KEY, PARAMETERS_KEY, GenerationResult, summary
from kandinsky.server.worker import QueueFull

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", *(name for name in SAMPLER_FUNCTIONS if name != "ddim"))  # default first
CUSTOM = "Custom"
INPUT_SIZE = "Input image size"
MODEL_SIZE = "Model's size"  # the size the decoder was trained at (512², 64² for the demo)
SIZE_PRESETS: dict[str, tuple[int, int] | None] = {  # label → (width, height)
    "512 × 512": (512, 512),
    "768 × 768": (768, 768),
    "1024 × 768": (1024, 768),
    "768 × 1024": (768, 1024),
    CUSTOM: None,
}
MAX_UI_SEED = 2**32 - 1  # random seeds stay exact in the browser's float64 numbers
MAX_SEED = 2**63 - 1  # what the pipeline accepts
MIX_SLOTS = 4
GROW_BY_SIDES = "Pixels per side"
GROW_TO_SIZE = "Target size"
CHECKER = 8  # checkerboard square (pixels) of the outpaint preview
PREVIEW_MAX_SIDE = 768  # larger previews are scaled down (only the picture, not the numbers)
GENERATE_QUEUE = "kandinsky-generate"  # one gradio concurrency group for every generate button


class Runner(Protocol):
    """What the UI needs of `kandinsky.server.worker.Worker`."""

    def run(
        self, mode: str, kwargs: dict[str, Any], timeout: float | None = None
    ) -> GenerationResult: ...


# ---------------------------------------------------------------------------- pure helpers


def _as_rgba(image: Image.Image | np.ndarray) -> Image.Image:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return pil.convert("RGBA")


def flatten_rgba(image: Image.Image | np.ndarray) -> Image.Image:
    """An editor/upload image as RGB, transparent parts on white."""
    rgba = _as_rgba(image)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def mask_from_editor(value: dict[str, Any] | None) -> tuple[Image.Image, Image.Image]:
    """The image editor's value → (RGB image, "L" mask: 255 = repaint, 0 = keep).

    The editor returns the uploaded picture as `background` and each paint layer as an RGBA
    image of the canvas size, transparent where nothing was painted. Every painted pixel of
    any layer (alpha > 0, whatever the brush colour) is part of the mask; erased strokes are
    transparent again, so they drop out.
    """
    background = (value or {}).get("background")
    if background is None:
        raise InvalidInput("upload an image first, then paint over the part to repaint")
    image = flatten_rgba(background)
    painted = np.zeros((image.height, image.width), dtype=bool)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        rgba = _as_rgba(layer)
        if rgba.size != image.size:
            rgba = rgba.resize(image.size, Image.Resampling.NEAREST)
        painted |= np.asarray(rgba)[..., 3] > 0
    if not painted.any():
        raise InvalidInput("paint over the part of the image to repaint (the brush marks the mask)")
    return image, Image.fromarray(painted.astype(np.uint8) * 255, mode="L")


def outpaint_extension(
    size: tuple[int, int],
    grow_mode: str,
    sides: tuple[int, int, int, int],
    target: tuple[int | None, int | None],
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) exactly as the pipeline grows an image of `size` (w, h):
    the target size is centred, and the canvas is rounded up to multiples of 8."""
    placeholder = Image.new("RGB", size)
    if grow_mode == GROW_TO_SIZE:
        width = _int(target[0], "target width")
        height = _int(target[1], "target height")
        return canvas_extension(placeholder, None, (width, height))
    if len(sides) != 4:
        raise InvalidInput(f"give four side widths (left, top, right, bottom), got {len(sides)}")
    names = ("left", "top", "right", "bottom")
    left, top, right, bottom = (_int(v, n) for v, n in zip(sides, names, strict=True))
    return canvas_extension(placeholder, (left, top, right, bottom), None)


def checkerboard(width: int, height: int, square: int = CHECKER) -> Image.Image:
    """A light-gray checkerboard: how the preview shows the area still to be painted."""
    ys, xs = np.mgrid[0:height, 0:width]
    light = ((ys // square + xs // square) % 2 == 0)[..., None]
    pixels = np.where(light, np.uint8(204), np.uint8(153)).repeat(3, axis=2)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def canvas_preview(image: Image.Image, extend: tuple[int, int, int, int]) -> Image.Image:
    """The grown canvas: `image` at (left, top), the new area checkered; full size."""
    left, top, right, bottom = extend
    canvas = checkerboard(image.width + left + right, image.height + top + bottom)
    canvas.paste(flatten_rgba(image), (left, top))
    return canvas


def preview_thumbnail(canvas: Image.Image, max_side: int = PREVIEW_MAX_SIDE) -> Image.Image:
    if max(canvas.size) <= max_side:
        return canvas
    thumb = canvas.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.NEAREST)
    return thumb


def resolve_seed(value: float | int | None, rng: random.Random | None = None) -> int:
    """The seed field → a concrete seed; empty or negative (-1) draws a random one."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value < 0:
        return (rng or random).randint(0, MAX_UI_SEED)
    if float(value) != int(value):
        raise InvalidInput(f"seed must be a whole number, got {value}")
    if int(value) > MAX_SEED:
        raise InvalidInput(f"seed {int(value)} is out of range; use 0 … 2**63 - 1 (or -1: random)")
    return int(value)


def reuse_seed(last_seeds: Sequence[int] | None, current: float | int | None) -> float | int | None:
    """The "reuse" button: the first seed of the last run (its batch follows as seed + i)."""
    return last_seeds[0] if last_seeds else current


def resolve_size(
    preset: str, width: Any, height: Any, native: tuple[int, int] = (512, 512)
) -> tuple[int | None, int | None]:
    """(width, height) for the call; (None, None) = the input image's own size.

    `native`: the model's (width, height), what `MODEL_SIZE` stands for.
    """
    if preset == INPUT_SIZE:
        return None, None
    if preset == MODEL_SIZE:
        return native
    fixed = SIZE_PRESETS.get(preset)
    if fixed is not None:
        return fixed
    if preset != CUSTOM:
        raise InvalidInput(f"size preset {preset!r} is unknown")
    return _int(width, "width"), _int(height, "height")


def preset_size(preset: str, native: tuple[int, int] = (512, 512)) -> tuple[int, int] | None:
    """The width/height a preset puts into the size fields (None: Custom / input size keep them)."""
    return native if preset == MODEL_SIZE else SIZE_PRESETS.get(preset)


def input_image_size(value: Any) -> tuple[int, int] | None:
    """The size an image mode generates at by default (as the pipeline picks it): the input's,
    rounded down to a multiple of 8, at least 64. `value` is an image or an editor value."""
    if isinstance(value, dict):
        value = value.get("background")
    if value is None:
        return None
    width, height = value.size if isinstance(value, Image.Image) else np.shape(value)[1::-1]
    return max(64, width // 8 * 8), max(64, height // 8 * 8)


def mix_items(
    texts: Sequence[str | None],
    images: Sequence[Image.Image | None],
    weights: Sequence[float | None],
) -> tuple[list[str | Image.Image], list[float]]:
    """The mix slots → (items, weights); empty slots are skipped, a slot holds a text OR an image."""
    items: list[str | Image.Image] = []
    used: list[float] = []
    for index, (text, image, weight) in enumerate(zip(texts, images, weights, strict=True), 1):
        text = (text or "").strip()
        if text and image is not None:
            raise InvalidInput(f"mix slot {index} has both a text and an image; keep one of them")
        if not text and image is None:
            continue
        if weight is None:
            raise InvalidInput(f"mix slot {index} has no weight")
        items.append(text if text else flatten_rgba(image))  # type: ignore[arg-type]
        used.append(float(weight))
    if len(items) < 2:
        raise InvalidInput("fill at least two mix slots (each a text or an image)")
    return items, used


def describe(result: GenerationResult) -> str:
    """The text under the gallery: the seeds, the mix (if any), the parameters (A1111 style)."""
    lines = ["Seeds: " + ", ".join(str(s) for s in result.seeds)]
    if result.params:
        params = result.params[0]
        if params.get("items"):
            parts = zip(params["items"], params.get("weights", []), strict=False)
            lines.append("Mix: " + " + ".join(f"{w:g} × {item}" for item, w in parts))
        lines += [line for line in summary(params).splitlines() if line]
    return "\n".join(lines)


def gallery_items(result: GenerationResult) -> list[tuple[Image.Image, str]]:
    """Each image with its parameters as PNG text chunks (kept in downloads) and its seed."""
    items = []
    for image, params, seed in zip(result.images, result.params, result.seeds, strict=True):
        tagged = image.copy()
        tagged.info[PARAMETERS_KEY] = summary(params)
        tagged.info[JSON_KEY] = json.dumps(params, ensure_ascii=False, sort_keys=True)
        items.append((tagged, f"seed {seed}"))
    return items


def _int(value: Any, name: str) -> int:
    if value is None or value == "":
        raise InvalidInput(f"{name} is empty")
    if float(value) != int(float(value)):
        raise InvalidInput(f"{name} must be a whole number, got {value}")
    return int(float(value))


# ---------------------------------------------------------------------------- widgets


@dataclass(frozen=True)
class PageSettings:
    """What the page's controls need to know: limits and the model's (width, height)."""

    max_steps: int = 150
    max_images: int = 4
    native_size: tuple[int, int] = (512, 512)
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)  # the sliders' start


@dataclass
class Options:
    """The controls every tab shares: size, count, the "Advanced" accordion, seed."""

    preset: gr.Radio | None
    width: gr.Number | None
    height: gr.Number | None
    num_images: gr.Slider
    negative_prompt: gr.Textbox
    negative_prior_prompt: gr.Textbox | None
    guidance_scale: gr.Slider
    num_steps: gr.Slider
    sampler: gr.Dropdown
    prior_guidance_scale: gr.Slider
    prior_steps: gr.Slider
    prior_sampler: gr.Dropdown
    seed: gr.Number
    last_seeds: gr.State
    native: tuple[int, int] = (512, 512)  # the model's (width, height)

    def inputs(self) -> set[Component]:
        fields = (
            self.preset,
            self.width,
            self.height,
            self.num_images,
            self.negative_prompt,
            self.negative_prior_prompt,
            self.guidance_scale,
            self.num_steps,
            self.sampler,
            self.prior_guidance_scale,
            self.prior_steps,
            self.prior_sampler,
            self.seed,
        )
        return {f for f in fields if f is not None}

    def kwargs(self, data: dict[Component, Any]) -> dict[str, Any]:
        """The shared keyword arguments of a `Kandinsky21` call from the widget values."""
        kwargs: dict[str, Any] = {
            "negative_prompt": data[self.negative_prompt] or "",
            "num_images": _int(data[self.num_images], "number of images"),
            "guidance_scale": float(data[self.guidance_scale]),
            "num_steps": _int(data[self.num_steps], "steps"),
            "sampler": data[self.sampler],
            "prior_guidance_scale": float(data[self.prior_guidance_scale]),
            "prior_steps": _int(data[self.prior_steps], "prior steps"),
            "prior_sampler": data[self.prior_sampler],
            "seed": resolve_seed(data[self.seed]),
        }
        if self.negative_prior_prompt is not None:
            kwargs["negative_prior_prompt"] = data[self.negative_prior_prompt] or ""
        if self.preset is not None:
            width, height = resolve_size(
                data[self.preset], data.get(self.width), data.get(self.height), self.native
            )
            if width is not None:
                kwargs.update(width=width, height=height)
        return kwargs


@dataclass
class Output:
    generate: gr.Button
    gallery: gr.Gallery
    params: gr.Textbox


def _size_controls(
    prefix: str, *, from_image: bool, native: tuple[int, int]
) -> tuple[gr.Radio, gr.Number, gr.Number]:
    presets = [MODEL_SIZE, *(p for p, v in SIZE_PRESETS.items() if v != native)]
    choices = [INPUT_SIZE, *presets] if from_image else presets
    with gr.Row(equal_height=True):
        preset = gr.Radio(
            choices,
            value=choices[0],
            label="Size (width × height)",
            elem_id=f"{prefix}-size-preset",
            scale=3,
        )
        width, height = (
            gr.Number(
                value=side,
                label=label,
                precision=0,
                step=8,
                elem_id=f"{prefix}-{label.lower()}",
                min_width=90,
            )
            for label, side in (("Width", native[0]), ("Height", native[1]))
        )

    def fill_size(choice: str) -> tuple[Any, Any]:
        fixed = preset_size(choice, native)  # no update otherwise: it could undo a size being typed
        return fixed if fixed is not None else (gr.skip(), gr.skip())

    preset.input(fill_size, inputs=preset, outputs=[width, height], api_visibility="private")
    # typing a size switches the preset to Custom (`.input` fires on user edits only)
    for box in (width, height):
        box.input(lambda: CUSTOM, outputs=preset, api_visibility="private")
    return preset, width, height


def _options(
    prefix: str,
    page: PageSettings,
    *,
    size: str = "presets",  # "presets" | "image" (input size first) | "none"
    negative_prior: bool = True,
) -> Options:
    max_steps, max_images, native = page.max_steps, page.max_images, page.native_size
    start = page.defaults
    preset = width = height = None
    if size != "none":
        preset, width, height = _size_controls(prefix, from_image=size == "image", native=native)
    num_images = gr.Slider(
        1, max(1, max_images), value=1, step=1, label="Images", elem_id=f"{prefix}-num-images"
    )
    with gr.Accordion("Advanced", open=False, elem_id=f"{prefix}-advanced"):
        negative_prompt = gr.Textbox(
            label="Negative prompt (decoder)",
            placeholder="what the picture should not show, e.g. low quality, blurry",
            elem_id=f"{prefix}-negative-prompt",
        )
        negative_prior_prompt = None
        if negative_prior:
            negative_prior_prompt = gr.Textbox(
                label="Negative prior prompt (image embedding)",
                elem_id=f"{prefix}-negative-prior-prompt",
            )
        with gr.Row():
            guidance_scale = gr.Slider(
                0,
                20,
                value=start.guidance_scale,
                step=0.5,
                label="Guidance scale",
                elem_id=f"{prefix}-guidance",
            )
            num_steps = gr.Slider(
                1,
                max_steps,
                value=min(start.num_steps, max_steps),
                step=1,
                label="Steps",
                elem_id=f"{prefix}-steps",
            )
            sampler = gr.Dropdown(
                list(SAMPLERS), value=start.sampler, label="Sampler", elem_id=f"{prefix}-sampler"
            )
        with gr.Row():
            prior_guidance_scale = gr.Slider(
                0,
                20,
                value=start.prior_guidance_scale,
                step=0.5,
                label="Prior guidance scale",
                elem_id=f"{prefix}-prior-guidance",
            )
            prior_steps = gr.Slider(
                1,
                max_steps,
                value=min(start.prior_steps, max_steps),
                step=1,
                label="Prior steps",
                elem_id=f"{prefix}-prior-steps",
            )
            prior_sampler = gr.Dropdown(
                list(PRIOR_SAMPLERS),
                value=start.prior_sampler,
                label="Prior sampler",
                elem_id=f"{prefix}-prior-sampler",
            )
        with gr.Row(equal_height=True):
            seed = gr.Number(
                value=-1, precision=0, label="Seed (-1 = random)", elem_id=f"{prefix}-seed", scale=3
            )
            with gr.Column(scale=1, min_width=140):
                reuse = gr.Button("Reuse last seed", size="sm", elem_id=f"{prefix}-seed-reuse")
                fresh = gr.Button("Random (-1)", size="sm", elem_id=f"{prefix}-seed-random")
    last_seeds = gr.State([])
    reuse.click(reuse_seed, inputs=[last_seeds, seed], outputs=seed, api_visibility="private")
    fresh.click(lambda: -1, outputs=seed, api_visibility="private")
    return Options(
        preset,
        width,
        height,
        num_images,
        negative_prompt,
        negative_prior_prompt,
        guidance_scale,
        num_steps,
        sampler,
        prior_guidance_scale,
        prior_steps,
        prior_sampler,
        seed,
        last_seeds,
        native,
    )


def _output(prefix: str, label: str) -> Output:
    generate = gr.Button(label, variant="primary", elem_id=f"{prefix}-generate")
    gallery = gr.Gallery(
        label="Result",
        format="png",
        columns=2,
        height=420,
        object_fit="contain",
        interactive=False,
        elem_id=f"{prefix}-gallery",
    )
    params = gr.Textbox(
        label="Parameters",
        lines=3,
        max_lines=8,
        interactive=False,
        buttons=["copy"],
        elem_id=f"{prefix}-params",
    )
    return Output(generate, gallery, params)


def _wire(
    worker: Runner,
    mode: str,
    options: Options,
    output: Output,
    inputs: Sequence[Component],
    mode_kwargs: Callable[[dict[Component, Any]], dict[str, Any]],
) -> None:
    """Generate button → worker.run(mode, options + mode arguments) → gallery, text, seeds."""

    def handler(data: dict[Component, Any]) -> tuple[Any, str, list[int]]:
        try:
            kwargs = {**options.kwargs(data), **mode_kwargs(data)}
            result = run_job(worker, mode, kwargs)
        except InvalidInput as e:
            raise gr.Error(str(e), title="Invalid input", print_exception=False) from None
        return gallery_items(result), describe(result), list(result.seeds)

    output.generate.click(
        handler,
        inputs={*options.inputs(), *inputs},
        outputs=[output.gallery, output.params, options.last_seeds],
        concurrency_id=GENERATE_QUEUE,
        concurrency_limit=1,
        api_name=f"ui_{mode}",
        api_visibility="undocumented",
    )


def run_job(worker: Runner, mode: str, kwargs: dict[str, Any]) -> GenerationResult:
    """One worker call; every failure becomes a one-line message for the user, never a traceback."""
    try:
        return worker.run(mode, kwargs)
    except InvalidInput:
        raise
    except QueueFull as e:
        raise gr.Error(f"{e}", title="Busy", print_exception=False) from None
    except KandinskyError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except TimeoutError:
        raise gr.Error(
            "the generation took too long and was stopped; try fewer steps or a smaller size",
            print_exception=False,
        ) from None
    except Exception as e:
        log.exception("%s failed", mode)
        raise gr.Error(f"{mode} failed: {type(e).__name__}: {e}", print_exception=False) from None


def _image_input(prefix: str, label: str) -> gr.Image:
    return gr.Image(
        label=label,
        type="pil",
        image_mode="RGBA",
        sources=["upload", "clipboard"],
        height=280,
        elem_id=f"{prefix}-image",
    )


def _prompt(prefix: str, label: str = "Prompt", placeholder: str = "") -> gr.Textbox:
    return gr.Textbox(
        label=label,
        lines=2,
        placeholder=placeholder or "a red cat sitting on a windowsill, 4k photo",
        elem_id=f"{prefix}-prompt",
    )


def _follow_image(source: gr.Image | gr.ImageEditor, options: Options) -> None:
    """With the "input image size" preset, show an uploaded image's size in the size fields."""

    def fill(value: Any, preset: str) -> tuple[Any, Any]:
        size = input_image_size(value)
        return size if size is not None and preset == INPUT_SIZE else (gr.skip(), gr.skip())

    source.upload(
        fill,
        inputs=[source, options.preset],
        outputs=[options.width, options.height],
        show_progress="hidden",
        api_visibility="private",
    )


def _image(value: Any, what: str) -> Image.Image:
    if value is None:
        raise InvalidInput(f"upload {what} first")
    return flatten_rgba(value)


# ---------------------------------------------------------------------------- tabs


def _text2img_tab(worker: Runner, page: PageSettings) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            prompt = _prompt("t2i")
            options = _options("t2i", page)
        with gr.Column(scale=4):
            output = _output("t2i", "Generate")
    _wire(worker, "text2img", options, output, [prompt], lambda d: {"prompt": d[prompt]})


def _mix_tab(worker: Runner, page: PageSettings) -> None:
    texts: list[gr.Textbox] = []
    images: list[gr.Image] = []
    weights: list[gr.Slider] = []
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown("Blend texts and images: each slot holds a text **or** an image.")
            for i in range(1, MIX_SLOTS + 1):
                with gr.Row(equal_height=True):
                    texts.append(
                        gr.Textbox(label=f"Text {i}", lines=2, elem_id=f"mix-text-{i}", scale=3)
                    )
                    images.append(
                        gr.Image(
                            label=f"Image {i}",
                            type="pil",
                            image_mode="RGBA",
                            sources=["upload", "clipboard"],
                            height=130,
                            elem_id=f"mix-image-{i}",
                            scale=2,
                        )
                    )
                    weights.append(
                        gr.Slider(
                            -1,
                            1,
                            value=0.5 if i <= 2 else 0.3,
                            step=0.05,
                            label=f"Weight {i}",
                            elem_id=f"mix-weight-{i}",
                            scale=2,
                        )
                    )
            prompt = _prompt("mix", "Decoder prompt (optional)", "extra text for the decoder")
            options = _options("mix", page)
        with gr.Column(scale=4):
            output = _output("mix", "Mix")

    def mode_kwargs(data: dict[Component, Any]) -> dict[str, Any]:
        items, used = mix_items(
            [data[t] for t in texts], [data[m] for m in images], [data[w] for w in weights]
        )
        return {"items": items, "weights": used, "prompt": data[prompt] or ""}

    _wire(worker, "mix", options, output, [*texts, *images, *weights, prompt], mode_kwargs)


def _variations_tab(worker: Runner, page: PageSettings) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            image = _image_input("var", "Image")
            prompt = _prompt("var", "Decoder prompt (optional)", "extra text for the decoder")
            options = _options("var", page, negative_prior=False)
        with gr.Column(scale=4):
            output = _output("var", "Make variations")

    def mode_kwargs(data: dict[Component, Any]) -> dict[str, Any]:
        return {"image": _image(data[image], "an image"), "prompt": data[prompt] or ""}

    _wire(worker, "variations", options, output, [image, prompt], mode_kwargs)


def _img2img_tab(worker: Runner, page: PageSettings) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            image = _image_input("i2i", "Image")
            prompt = _prompt("i2i")
            with gr.Row():
                strength = gr.Slider(
                    0, 1, value=0.7, step=0.05, label="Strength", elem_id="i2i-strength"
                )
                convention = gr.Radio(
                    ["original", "diffusers"],
                    value="original",
                    label="Strength convention",
                    info="original: share of the steps skipped (high keeps more); "
                    "diffusers: share run (high changes more)",
                    elem_id="i2i-strength-convention",
                )
            options = _options("i2i", page, size="image")
        with gr.Column(scale=4):
            output = _output("i2i", "Generate")

    def mode_kwargs(data: dict[Component, Any]) -> dict[str, Any]:
        return {
            "image": _image(data[image], "an image"),
            "prompt": data[prompt],
            "strength": float(data[strength]),
            "strength_convention": data[convention],
        }

    _follow_image(image, options)
    _wire(worker, "img2img", options, output, [image, prompt, strength, convention], mode_kwargs)


def _inpaint_tab(worker: Runner, page: PageSettings) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            editor = gr.ImageEditor(
                label="Image: paint over the part to repaint",
                type="pil",
                image_mode="RGBA",
                sources=["upload", "clipboard"],
                brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                eraser=gr.Eraser(),
                layers=False,
                transforms=[],
                height=420,
                elem_id="inpaint-editor",
            )
            prompt = _prompt("inpaint", placeholder="what to paint in the masked area")
            paste_back = gr.Checkbox(
                value=True,
                label="Paste the unmasked pixels back exactly",
                elem_id="inpaint-paste-back",
            )
            options = _options("inpaint", page, size="image")
        with gr.Column(scale=4):
            output = _output("inpaint", "Inpaint")

    def mode_kwargs(data: dict[Component, Any]) -> dict[str, Any]:
        image, mask = mask_from_editor(data[editor])
        return {
            "image": image,
            "mask": mask,
            "prompt": data[prompt],
            "mask_polarity": "white_repaints",
            "paste_back": bool(data[paste_back]),
        }

    _follow_image(editor, options)
    _wire(worker, "inpaint", options, output, [editor, prompt, paste_back], mode_kwargs)


def _outpaint_tab(worker: Runner, page: PageSettings) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            image = _image_input("outpaint", "Image")
            prompt = _prompt("outpaint", placeholder="what the wider picture shows")
            grow_mode = gr.Radio(
                [GROW_BY_SIDES, GROW_TO_SIZE],
                value=GROW_BY_SIDES,
                label="Grow the canvas by",
                elem_id="outpaint-grow-mode",
            )
            slider: dict[str, gr.Slider] = {}
            with gr.Column() as sides_box:
                for pair in (("left", "right"), ("top", "bottom")):
                    with gr.Row():
                        for side in pair:
                            slider[side] = gr.Slider(
                                0,
                                1024,
                                value=128 if side in ("left", "right") else 0,
                                step=8,
                                label=f"{side.capitalize()} (pixels added)",
                                elem_id=f"outpaint-{side}",
                            )
            sides = [slider[side] for side in ("left", "top", "right", "bottom")]
            with gr.Row(visible=False) as target_row:
                target_width = gr.Number(
                    value=768,
                    precision=0,
                    step=8,
                    label="Target width (image centred)",
                    elem_id="outpaint-target-width",
                )
                target_height = gr.Number(
                    value=512,
                    precision=0,
                    step=8,
                    label="Target height (image centred)",
                    elem_id="outpaint-target-height",
                )
            options = _options("outpaint", page, size="none")
        with gr.Column(scale=4):
            preview = gr.Image(
                label="Canvas preview (checkered = to be painted)",
                type="pil",
                interactive=False,
                format="png",
                height=300,
                elem_id="outpaint-preview",
            )
            canvas_info = gr.Markdown(
                "Upload an image to see the grown canvas.", elem_id="outpaint-canvas"
            )
            output = _output("outpaint", "Outpaint")

    geometry = [image, grow_mode, *sides, target_width, target_height]
    grow_mode.change(
        lambda mode: (
            gr.update(visible=mode == GROW_BY_SIDES),
            gr.update(visible=mode == GROW_TO_SIZE),
        ),
        inputs=grow_mode,
        outputs=[sides_box, target_row],
        api_visibility="private",
    )

    def extension(values: Sequence[Any]) -> tuple[Image.Image, tuple[int, int, int, int]]:
        source, mode, left, top, right, bottom, width, height = values
        picture = _image(source, "an image")
        grow = outpaint_extension(picture.size, mode, (left, top, right, bottom), (width, height))
        return picture, grow

    def update_preview(*values: Any) -> tuple[Image.Image | None, str]:
        if values[0] is None:
            return None, "Upload an image to see the grown canvas."
        try:
            picture, grow = extension(values)
        except InvalidInput as e:
            return None, f"⚠ {e}"
        canvas = canvas_preview(picture, grow)
        left, top, right, bottom = grow
        return preview_thumbnail(canvas), (
            f"Canvas **{canvas.width} × {canvas.height}** "
            f"(image {picture.width} × {picture.height}; added left {left}, top {top}, "
            f"right {right}, bottom {bottom})"
        )

    # one listener, one at a time, latest wins: a slow stale preview never lands last
    gr.on(
        [control.change for control in geometry],
        update_preview,
        inputs=geometry,
        outputs=[preview, canvas_info],
        show_progress="hidden",
        trigger_mode="always_last",
        concurrency_limit=1,
        api_visibility="private",
    )

    def mode_kwargs(data: dict[Component, Any]) -> dict[str, Any]:
        picture, grow = extension([data[c] for c in geometry])
        return {"image": picture, "prompt": data[prompt], "extend": grow}

    _wire(worker, "outpaint", options, output, [*geometry, prompt], mode_kwargs)


# ---------------------------------------------------------------------------- the app


TABS: tuple[tuple[str, str, Callable[[Runner, PageSettings], None]], ...] = (
    ("Text to image", "t2i", _text2img_tab),
    ("Mix", "mix", _mix_tab),
    ("Variations", "var", _variations_tab),
    ("Image to image", "i2i", _img2img_tab),
    ("Inpaint", "inpaint", _inpaint_tab),
    ("Outpaint", "outpaint", _outpaint_tab),
)


class SizeLimited:
    """The server's per-image output-size limit for page requests too (the page calls the
    worker directly, not through the HTTP checks). Outpaint canvases are checked by size only
    when the page gives one; everything else passes through."""

    def __init__(self, worker: Runner, max_output_pixels: int | None):
        self.worker = worker
        self.pipe = getattr(worker, "pipe", None)
        self.max_output_pixels = max_output_pixels

    def run(
        self, mode: str, kwargs: dict[str, Any], timeout: float | None = None
    ) -> GenerationResult:
        height, width = kwargs.get("height"), kwargs.get("width")
        if kwargs.get("size"):
            width, height = kwargs["size"]
        limit = self.max_output_pixels
        if limit and isinstance(height, int) and isinstance(width, int) and height * width > limit:
            raise InvalidInput(
                f"{width}×{height} is {height * width} pixels; this server allows at most {limit} "
                "pixels per image — choose a smaller size"
            )
        return self.worker.run(mode, kwargs, timeout=timeout)


def build_ui(worker: Runner, settings: Any = None) -> gr.Blocks:
    """The whole UI over `worker` (anything with `run(mode, kwargs, timeout=None)`).

    `settings` may carry `max_steps`, `max_images`, `model_id` and `max_output_pixels`;
    missing ones get defaults. The size controls offer the model's own size first.
    """
    model_id = (
        getattr(settings, "model_id", "")
        or getattr(getattr(worker, "pipe", None), "model_id", "")
        or ""
    )
    pipe = getattr(worker, "pipe", None)
    height, width = getattr(pipe, "native_size", (512, 512))
    page = PageSettings(
        max_steps=int(getattr(settings, "max_steps", 150)),
        max_images=int(getattr(settings, "max_images", 4)),
        native_size=(width, height),
        defaults=getattr(pipe, "defaults", None) or GenerationDefaults(),
    )
    worker = SizeLimited(worker, getattr(settings, "max_output_pixels", None))
    with gr.Blocks(title="Kandinsky 2.1", analytics_enabled=False) as demo:
        gr.Markdown(
            "## Kandinsky 2.1" + (f" · `{model_id}`" if model_id else ""),
            elem_id="header",
        )
        with gr.Tabs(elem_id="modes"):
            for label, prefix, make in TABS:
                with gr.Tab(label, id=prefix, elem_id=f"tab-{prefix}"):
                    make(worker, page)
    return demo


def launch(
    worker: Runner,
    settings: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
) -> gr.Blocks:
    """Serve the UI alone with gradio's own server (the API server mounts `build_ui` instead)."""
    demo = build_ui(worker, settings)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        footer_links=["api", "settings"],
    )
    return demo
