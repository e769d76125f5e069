"""Request and response bodies of the HTTP API: the Python API's parameters, names and defaults.

Images travel as base64 PNG/JPEG/WebP text (raw base64 or a data URL such as
`data:image/png;base64,iVBOR...`). Unknown fields are refused (`extra="forbid"`), so a typo
is an error rather than a silently ignored option. Ranges (sizes, scales, samplers, …) are
checked by the pipeline itself, which names the argument in its message.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Base64Image = str  # raw base64 or a data URL; decoded and checked by the app


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- shared groups
# Field order in the docs follows the reversed order of the base classes, so each request
# lists its mixins from the most generic (left) to the most specific (right).


_MODEL_DEFAULT = " Default (null): the model's, listed by /v1/models."


class _Common(_Base):
    num_images: int = Field(1, description="Images per prompt.")
    seed: int | list[int] | None = Field(
        None,
        description="One int (image i gets seed + i), one seed per image, or null for random seeds.",
    )
    # null: the model's default (its generation_defaults.json, else the original's), which
    # /v1/models lists and every image's parameters record
    guidance_scale: float | None = Field(
        None, description="Decoder classifier-free guidance scale." + _MODEL_DEFAULT
    )
    num_steps: int | None = Field(None, description="Decoder denoising steps." + _MODEL_DEFAULT)
    sampler: str | None = Field(
        None,
        description="Decoder sampler: ddim, plms, p_sampler, dpmpp_2m, euler_a." + _MODEL_DEFAULT,
    )
    prior_guidance_scale: float | None = Field(
        None, description="Prior classifier-free guidance scale." + _MODEL_DEFAULT
    )
    prior_steps: int | None = Field(None, description="Prior denoising steps." + _MODEL_DEFAULT)
    prior_sampler: str | None = Field(
        None, description="Prior sampler: original or unclip." + _MODEL_DEFAULT
    )


_SERVER_LIMIT = " The server may allow less: see max_output_pixels in /v1/models limits."


_NATIVE = " Default: the model's native size (512 for Kandinsky 2.1, 64 for the demo model)."


class _Size(_Base):
    height: int | None = Field(
        None,
        description="Output height in pixels (multiple of 8, 64…4096)." + _NATIVE + _SERVER_LIMIT,
    )
    width: int | None = Field(
        None,
        description="Output width in pixels (multiple of 8, 64…4096)." + _NATIVE + _SERVER_LIMIT,
    )


class _SizeFromImage(_Base):
    height: int | None = Field(
        None,
        description="Output height; default: the image's height rounded down to 8." + _SERVER_LIMIT,
    )
    width: int | None = Field(
        None,
        description="Output width; default: the image's width rounded down to 8." + _SERVER_LIMIT,
    )


class _NegativePrompts(_Base):
    negative_prompt: str | list[str] = Field(
        "", description="Decoder negative prompt: one for all, or one per prompt."
    )
    negative_prior_prompt: str = Field("", description="Prior negative prompt.")


class _Prompts(_Base):
    prompt: str | list[str] = Field(description="The prompt, or a list of prompts.")


class _Image(_Base):
    image: Base64Image = Field(description="Input image: base64 (raw or a data URL).")


# ---------------------------------------------------------------------------- one per mode


class Text2ImgRequest(_Common, _Size, _NegativePrompts, _Prompts):
    """`Kandinsky21.text2img`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "a red cat, 4k photo", "seed": 0}]}
    )


class TextItem(_Base):
    text: str


class ImageItem(_Base):
    image: Base64Image = Field(description="base64 image (raw or a data URL)")


MixItem = str | TextItem | ImageItem


class MixRequest(_Common, _Size, _NegativePrompts):
    """`Kandinsky21.mix`: a weighted mixture of texts and images."""

    items: list[MixItem] = Field(
        description='Texts and images to mix: a string or {"text": ...} is a text, '
        '{"image": "<base64>"} an image.'
    )
    weights: list[float] = Field(description="One weight per item.")
    prompt: str = Field("", description="Decoder text prompt.")
    negative_prompt: str = Field("", description="Decoder negative prompt.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": ["a castle on a hill", "in the style of van gogh"],
                    "weights": [0.6, 0.4],
                    "seed": 0,
                }
            ]
        }
    )


class VariationsRequest(_Common, _Size, _Image):
    """`Kandinsky21.variations`: new images with the content and style of `image`."""

    prompt: str = Field("", description="Decoder text prompt.")
    negative_prompt: str = Field("", description="Decoder negative prompt.")
    negative_prior_prompt: str = Field(
        "", description="Prior negative prompt (the unconditional side of prior guidance)."
    )


class Img2ImgRequest(_Common, _SizeFromImage, _NegativePrompts, _Prompts, _Image):
    """`Kandinsky21.img2img`."""

    strength: float = Field(
        0.7,
        description='With strength_convention="original": the share of the schedule SKIPPED '
        '(high keeps more of the image); with "diffusers": the share RUN.',
    )
    strength_convention: str = Field("original", description="original or diffusers.")


class InpaintRequest(_Common, _SizeFromImage, _NegativePrompts, _Prompts, _Image):
    """`Kandinsky21.inpaint`: repaint the white part of `mask`."""

    mask: Base64Image = Field(
        description="Mask of the image's size, base64. White = repaint (default polarity)."
    )
    mask_polarity: str = Field(
        "white_repaints",
        description='"white_repaints" (white = generate) or "original" (white = keep).',
    )
    paste_back: bool = Field(True, description="Paste the kept pixels back over the result.")


class OutpaintRequest(_Common, _NegativePrompts, _Prompts, _Image):
    """`Kandinsky21.outpaint`: grow the canvas by `extend` or to `size`."""

    extend: tuple[int, int, int, int] | None = Field(
        None, description="Pixels to add: [left, top, right, bottom]. Give this or size."
    )
    size: tuple[int, int] | None = Field(
        None, description="Final canvas [width, height], image centred. Give this or extend."
    )
    max_step: int = Field(256, description="Largest extension per pass, in pixels.")
    overlap: int = Field(16, description="Context overlap between passes, in pixels (0…64).")


REQUESTS: dict[str, type[_Base]] = {
    "text2img": Text2ImgRequest,
    "mix": MixRequest,
    "variations": VariationsRequest,
    "img2img": Img2ImgRequest,
    "inpaint": InpaintRequest,
    "outpaint": OutpaintRequest,
}
IMAGE_FIELDS = ("image", "mask")  # request fields holding one base64 image


# ---------------------------------------------------------------------------- responses


class ImageOut(BaseModel):
    png_base64: str = Field(description="The image as base64 PNG, parameters in its text chunks.")
    seed: int
    width: int
    height: int


class GenerationResponse(BaseModel):
    images: list[ImageOut]
    params: list[dict[str, Any]] = Field(description="Every parameter, one record per image.")
    elapsed_s: float = Field(description="Seconds from receiving the request to the answer.")


class ErrorResponse(BaseModel):
    error: str = Field(description="A stable code: invalid_input, validation_error, …")
    detail: Any = Field(description="What was wrong, in words.")


class HealthResponse(BaseModel):
    status: str
    queue: int


class ModelInfo(BaseModel):
    id: str
    components: list[str]
    device: str
    dtype: str
    inpainting: bool
    defaults: dict[str, Any] = Field(
        description="The sampling settings a request that leaves them null gets."
    )


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    samplers: list[str]
    prior_samplers: list[str]
    modes: list[str]
    limits: dict[str, Any]
