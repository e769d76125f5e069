"""Outpainting: grow the canvas and let the inpainting model fill the new border.

The new area starts as an edge-replicated extension of the image; the keep-mask also frees
an `overlap` band inside the old border so the model redraws the seam, and the kept pixels
are pasted back with a feathered edge. Extensions larger than `max_step` pixels per side are
done in several passes, each growing the previous result.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from kandinsky.engine import ImageNoise
from kandinsky.imaging import tensor_to_pil, to_rgb_pil
from kandinsky.modes.common import Job, ModeOutput
from kandinsky.modes.inpaint import inpaint

Extend = tuple[int, int, int, int]  # left, top, right, bottom, in pixels


def plan_passes(extend: Extend, max_step: int) -> list[Extend]:
    """Split an extension into passes of at most `max_step` pixels per side (multiples of 8)."""
    passes: list[Extend] = []
    remaining = list(extend)
    while any(remaining):
        step = [min(r, max_step) for r in remaining]
        passes.append((step[0], step[1], step[2], step[3]))
        remaining = [r - s for r, s in zip(remaining, step, strict=True)]
    return passes


def canvas_and_keep(
    image: Image.Image, extend: Extend, overlap: int
) -> tuple[Image.Image, torch.Tensor]:
    """The grown canvas (edge-replicated fill) and its keep-mask (1 = keep)."""
    left, top, right, bottom = extend
    pixels = np.asarray(image.convert("RGB"))
    grown = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    keep = np.zeros(grown.shape[:2], dtype=np.float32)
    h, w = pixels.shape[:2]
    # free an overlap band only on the sides that grow, so the seam is redrawn
    y0, x0 = top + (overlap if top else 0), left + (overlap if left else 0)
    y1, x1 = top + h - (overlap if bottom else 0), left + w - (overlap if right else 0)
    keep[y0:y1, x0:x1] = 1.0
    return Image.fromarray(grown), torch.from_numpy(keep)[None, None]


def outpaint(
    job: Job,
    image: object,
    prompts: list[str],
    extend: Extend,
    *,
    max_step: int = 256,
    overlap: int = 16,
) -> ModeOutput:
    """One image per generator of the job; each grows through `plan_passes(extend, max_step)`."""
    source = to_rgb_pil(image)
    passes = plan_passes(extend, max_step)
    results: list[ModeOutput] = []
    for index, generator in enumerate(job.noise.generators):
        current = source
        out: ModeOutput | None = None
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None  # one condition for every pass
        for step in passes:
            canvas, keep = canvas_and_keep(current, step, overlap)
            sub = replace(
                job,
                noise=ImageNoise([generator], job.noise.device, job.noise.dtype),
                decoder=replace(job.decoder, height=canvas.height, width=canvas.width),
                negative_prompts=[job.negative_prompts[index]],
            )
            out = inpaint(
                sub,
                canvas,
                keep,
                [prompts[index]],
                image_embeds=embeds[0] if embeds else None,
                negative_image_embeds=embeds[1] if embeds else None,
            )
            embeds = (out.image_embeds, out.negative_image_embeds)
            current = tensor_to_pil(out.images)[0]
        assert out is not None  # at least one pass: extend was checked to be non-zero
        results.append(out)
    return ModeOutput(
        images=torch.cat([r.images for r in results]),
        latents=torch.cat([r.latents for r in results]),
        image_embeds=torch.cat([r.image_embeds for r in results]),
        negative_image_embeds=torch.cat([r.negative_image_embeds for r in results]),
        redone_in_fp32=any(r.redone_in_fp32 for r in results),
        extras={"passes": passes},
    )
