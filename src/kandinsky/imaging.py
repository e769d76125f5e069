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
