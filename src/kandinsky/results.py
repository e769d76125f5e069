"""What a generation returns: images, the seeds used and every parameter, ready to save as PNG."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"  # AUTOMATIC1111-style one-line summary
JSON_KEY = "kandinsky"  # the full parameters as JSON


@dataclass
class GenerationResult:
    """Images (PIL), one seed and one parameter record per image, plus the tensors behind them."""

    images: list[Image.Image]
    seeds: list[int]
    params: list[dict[str, Any]]
    pixels: torch.Tensor  # (B, 3, H, W) in [0, 1]
    latents: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    negative_image_embeds: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image(self) -> Image.Image:
        """The first image (convenient for single-image calls)."""
        return self.images[0]

    def numpy(self) -> np.ndarray:
        """(B, H, W, 3) float32 in [0, 1]."""
        return self.pixels.permute(0, 2, 3, 1).cpu().numpy()

    def save(self, folder: str | os.PathLike[str], prefix: str = "kandinsky") -> list[Path]:
        """Write each image as PNG with its parameters; never overwrites (numbered names)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            save_numbered(image, params, folder, prefix)
            for image, params in zip(self.images, self.params, strict=True)
        ]


def save_numbered(image: Image.Image, params: dict[str, Any], folder: Path, prefix: str) -> Path:
    """Write under the first free `prefix-NNNNN.png`; safe when several writers share a folder.

    The PNG goes to a private temporary file first, then is hard-linked to the candidate name:
    the link fails instead of replacing when another writer took that name (then try the next).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{prefix}-", suffix=".partial", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        image.save(tmp, format="PNG", pnginfo=png_info(params))
        index = len(list(folder.glob(f"{prefix}-*.png")))
        while True:
            path = folder / f"{prefix}-{index:05d}.png"
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                index += 1
    finally:
        tmp.unlink(missing_ok=True)


def png_info(params: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, summary(params))
    info.add_text(JSON_KEY, json.dumps(params, ensure_ascii=False, sort_keys=True))
    return info


def read_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON parameters stored in a PNG written by this package."""
    from kandinsky.errors import InvalidInput

    try:
        with Image.open(path) as image:
            text = image.text.get(JSON_KEY) if hasattr(image, "text") else None
    except FileNotFoundError as e:
        raise InvalidInput(f"{path}: no such file") from e
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path} is not a readable PNG ({e})") from e
    if not text:
        raise InvalidInput(f"{path} carries no kandinsky parameters (was it written by kandinsky?)")
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path}: its kandinsky parameters are not valid JSON ({e})") from e
    if not isinstance(params, dict):
        raise InvalidInput(f"{path}: its kandinsky parameters are not a JSON object")
    return params


def summary(params: dict[str, Any]) -> str:
    """One line in AUTOMATIC1111's style: prompt, then 'Negative prompt:', then key: value pairs."""
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    keys = (
        "num_steps",
        "sampler",
        "guidance_scale",
        "seed",
        "width",
        "height",
        "prior_steps",
        "prior_guidance_scale",
        "model",
    )
    names = (
        "Steps",
        "Sampler",
        "CFG scale",
        "Seed",
        "Width",
        "Height",
        "Prior steps",
        "Prior CFG scale",
        "Model",
    )
    pairs = [f"{n}: {params[k]}" for k, n in zip(keys, names, strict=True) if k in params]
    lines.append(", ".join(pairs))
    return "\n".join(lines)
