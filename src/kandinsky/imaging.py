"""Images at the package boundary: PIL / numpy / torch input → tensors of known shape and range.

Pure functions only. CLIP preprocessing reproduces OpenAI `clip.preprocess` (torchvision
`Resize(224, BICUBIC)` on PIL → `CenterCrop(224)` → RGB → `ToTensor` → `Normalize`), see
shared/reference/kandinsky21.md §1.3 and §2.3, without depending on torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from kandinsky.config import CLIPConfig
from kandinsky.errors import InvalidInput

ImageInput = Image.Image | np.ndarray | torch.Tensor

MAX_SIDE = 16384  # larger sides are almost certainly a mistake (and cost GiBs)

_ACCEPTED = (
    "a PIL image, a numpy array H×W×3 (uint8, or float in [0, 1]) "
    "or a torch tensor 3×H×W (uint8, or float in [0, 1])"
)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InvalidInput(f"image is {width}×{height} pixels; it must be at least 1×1")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InvalidInput(
            f"image is {width}×{height} pixels; each side must be at most {MAX_SIDE}"
        )


def _array_to_pil(array: np.ndarray, what: str) -> Image.Image:
    """H×W×3 uint8, or float in [0, 1] (rounded to the nearest 8-bit level), → RGB PIL image."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInput(f"got {what} of shape {tuple(array.shape)}; expected {_ACCEPTED}")
    _check_size(array.shape[1], array.shape[0])
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array))
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInput(f"got {what} of dtype {array.dtype}; expected {_ACCEPTED}")
    low, high = float(np.min(array)), float(np.max(array))
    if not (low >= 0.0 and high <= 1.0):  # also catches NaN
        raise InvalidInput(
            f"got {what} with values in [{low:.3g}, {high:.3g}]; float images must lie in [0, 1]"
        )
    levels = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    return Image.fromarray(levels)


def _as_pil(image: object) -> Image.Image:
    """Any accepted input as a PIL image; PIL images keep their own mode (converted later)."""
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height)
        return image
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, "a numpy array")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InvalidInput(
                f"got a torch tensor of shape {tuple(image.shape)}; expected {_ACCEPTED}"
            )
        array = image.detach().to("cpu").permute(1, 2, 0)
        if array.dtype not in (
            torch.uint8,
            torch.float16,
            torch.bfloat16,
            torch.float32,
            torch.float64,
        ):
            raise InvalidInput(f"got a torch tensor of dtype {image.dtype}; expected {_ACCEPTED}")
        if array.dtype in (torch.float16, torch.bfloat16):
            array = array.float()
        return _array_to_pil(array.numpy(), "a torch tensor")
    raise InvalidInput(f"got {type(image).__name__}; expected {_ACCEPTED}")


def to_rgb_pil(image: ImageInput) -> Image.Image:
    """Any accepted image as an RGB PIL image (PIL modes through `.convert("RGB")`, as clip does)."""
    return _as_pil(image).convert("RGB")


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(size)`: shortest side → size, longest → int(size · long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision `CenterCrop`: offsets int(round(d / 2)) (round half to even, as Python does)."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def clip_preprocess(
    images: Sequence[ImageInput] | ImageInput,
    size: int = 224,
    mean: tuple[float, float, float] = CLIPConfig.image_mean,
    std: tuple[float, float, float] = CLIPConfig.image_std,
) -> torch.Tensor:
    """CLIP image-tower input (N, 3, size, size) float32, exactly as OpenAI `clip.preprocess`.

    Resize and crop happen in the image's own PIL mode and RGB conversion comes last, in
    clip's order (so a palette image resizes with NEAREST, which PIL forces for mode "P").
    """
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise InvalidInput(f"got {type(images).__name__}; expected an image or a list of images")
    if len(images) == 0:
        raise InvalidInput("got an empty list of images; pass at least one image")
    if size < 1:
        raise InvalidInput(f"size must be a positive number of pixels, got {size}")
    pixels = []
    for image in images:
        pil = _as_pil(image)
        resized = pil.resize(_resized_size(pil.width, pil.height, size), Image.Resampling.BICUBIC)
        cropped = resized.crop(_center_crop_box(resized.width, resized.height, size)).convert("RGB")
        array = np.asarray(cropped, dtype=np.uint8)
        pixels.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    batch = torch.stack(pixels).to(torch.float32).div(255)  # ToTensor
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


# ---------------------------------------------------------------------------- generation sizes

MIN_SIDE = 64  # the UNet halves the latent three times: smaller images have no room
MAX_GENERATION_SIDE = 4096  # beyond this the MoVQ decoder's full attention needs > 100 GB


def check_generation_size(height: int, width: int) -> None:
    """Output sizes: any multiple of 8 in [64, 4096]; the model works at the next multiple of 64."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidInput(f"{name} must be an integer number of pixels, got {value!r}")
        if value % 8 or not MIN_SIDE <= value <= MAX_GENERATION_SIDE:
            raise InvalidInput(
                f"{name} is {value}; it must be a multiple of 8 between {MIN_SIDE} and {MAX_GENERATION_SIDE}"
            )


def latent_size(height: int, width: int, downscale: int = 8) -> tuple[int, int]:
    """Latent rows/cols of the original: ceil(side / 64) · 8 (decoded image is cropped back)."""
    block = downscale * 8
    return -(-height // block) * 8, -(-width // block) * 8


def image_to_tensor(image: ImageInput, height: int, width: int) -> torch.Tensor:
    """(1, 3, height, width) in [-1, 1]: RGB, resized exactly to the size (bicubic, reducing_gap=1)."""
    pil = to_rgb_pil(image)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=1)
    array = np.asarray(pil, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] → PIL images, as the original: round((x + 1) · 127.5) clamped."""
    levels = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in levels]


# ---------------------------------------------------------------------------- masks

MaskInput = Image.Image | np.ndarray | torch.Tensor


def mask_to_keep(
    mask: MaskInput,
    height: int,
    width: int,
    *,
    polarity: str = "white_repaints",
    binarize: bool = True,
) -> torch.Tensor:
    """The user's mask → (1, 1, height, width) float "keep" mask (1 = keep, 0 = repaint).

    The one place mask polarity is converted. `polarity="white_repaints"` (default, as
    diffusers ≥ 0.19 and most tools): white / 1 = region to generate. `"original"`: the
    original Kandinsky code's 1 = keep, 0 = generate. PIL masks are read as luminance and
    resized with LANCZOS (as diffusers does); array and tensor masks must already have the
    image's size. Values in [0, 1] (uint8 masks are divided by 255); `binarize` thresholds
    at 0.5 like diffusers (the original used the float mask as is).
    """
    if polarity not in ("white_repaints", "original"):
        raise InvalidInput(
            f"mask polarity {polarity!r} is unknown; use 'white_repaints' or 'original'"
        )
    if isinstance(mask, Image.Image):
        _check_size(mask.width, mask.height)
        gray = mask.convert("L")
        if gray.size != (width, height):
            gray = gray.resize((width, height), Image.Resampling.LANCZOS)
        values = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
    elif isinstance(mask, np.ndarray | torch.Tensor):
        values = torch.as_tensor(
            np.asarray(mask) if isinstance(mask, np.ndarray) else mask.detach().cpu()
        )
        values = values.squeeze()
        if values.ndim == 3 and values.shape[-1] in (3, 4):
            values = values[..., 0]  # an RGB(A) array mask: take one channel
        if values.ndim != 2:
            raise InvalidInput(
                f"mask has shape {tuple(np.shape(mask))}; expected H×W (one channel)"
            )
        if values.dtype == torch.uint8:
            values = values.float() / 255.0
        elif values.dtype == torch.bool:
            values = values.float()
        values = values.float()
        if tuple(values.shape) != (height, width):
            raise InvalidInput(
                f"mask is {values.shape[1]}×{values.shape[0]} but the image is {width}×{height}; "
                "pass a mask of the image's size (or a PIL image, which is resized)"
            )
        if torch.isnan(values).any() or values.min() < 0 or values.max() > 1:
            raise InvalidInput("mask values must lie in [0, 1] (or be uint8 0…255)")
    else:
        raise InvalidInput(
            f"mask is a {type(mask).__name__}; pass a PIL image, a numpy array or a torch tensor"
        )
    if binarize:
        values = (values >= 0.5).float()
    keep = 1.0 - values if polarity == "white_repaints" else values
    return keep[None, None]


# Neighbours zeroed around every latent pixel that is not fully "keep" (the original's prepare_mask).
_ERODE_OFFSETS = ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1))


def erode_keep_mask(keep: torch.Tensor) -> torch.Tensor:
    """Shrink the keep region by one latent pixel in 6 of 8 directions, as the original does.

    For each pixel whose value is not exactly 1, its neighbours at the offsets above are set
    to 0; neighbours are decided from the un-eroded mask (one pass).
    """
    not_kept = (keep != 1).float()
    hit = torch.zeros_like(keep)
    height, width = keep.shape[-2:]
    for di, dj in _ERODE_OFFSETS:
        # a pixel p is zeroed when p - (di, dj) is not kept
        src = not_kept[..., max(-di, 0) : height - max(di, 0), max(-dj, 0) : width - max(dj, 0)]
        hit[..., max(di, 0) : height - max(-di, 0), max(dj, 0) : width - max(-dj, 0)] += src
    return torch.where(hit > 0, torch.zeros_like(keep), keep)


def latent_keep_mask(keep: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel keep-mask → latent resolution (nearest) → eroded, as the inpainting UNet expects."""
    small = torch.nn.functional.interpolate(keep, size=latent_hw, mode="nearest")
    return erode_keep_mask(small)


def pad_to(x: torch.Tensor, height: int, width: int, value: float | None = None) -> torch.Tensor:
    """Grow (N, C, h, w) to (height, width) at the bottom/right: edge-replicated, or `value`."""
    pad = (0, width - x.shape[-1], 0, height - x.shape[-2])
    if pad[1] == 0 and pad[3] == 0:
        return x
    if value is None:
        return torch.nn.functional.pad(x, pad, mode="replicate")
    return torch.nn.functional.pad(x, pad, value=value)
