"""Random inpainting masks for training the 9-channel UNet (reference §1.5, §1.6, §7.1).

Convention: 1 = region to repaint (white = repaint, as at inference in this package). The
UNet's mask channel is the complementary keep-mask, `keep = 1 − repaint`, and its masked
latent is `x0 · keep` — exactly what `engine.run_decoder` feeds at inference.

Polarity note: the original `train_utils.utils.get_image_mask` returns 1 = keep / 0 = hole,
and the public trainer then does `mask = 1 − mask` before `inpaint_image = latent · mask`,
i.e. it trains with the hole's latent visible and the mask channel = 1 on the hole — the
opposite of the original's own inference (1 = keep). We treat that as a bug and train with
the inference convention (whether the released inpainting checkpoint saw the inverted masks
is unknown).

Kinds (all at the resolution asked, normally the latent's, as the original does):
- "box": one axis-aligned rectangle, sides 10 %–62 % of the image (the original's boxes);
- "brush": 1–4 thick random polylines (free-form strokes, in place of the original's
  smoothed polygons);
- "band": one border band 10 %–70 % deep (outpainting one side: doubling an image's width
  with an 8-pixel overlap needs more than half of it);
- "frame": a border frame on all four sides, rectangular or elliptic (outpainting all round);
- "any": a box with p 0.1, else a brush stroke set and/or a band/frame, mirroring the
  original's mixture.

A mixture of kinds is a mapping kind → weight (`{"box": 0.4, "band": 0.3, "any": 0.3}`): each
mask draws its kind by weight, then its shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from kandinsky.errors import InvalidInput

KINDS = ("box", "brush", "band", "frame", "any")


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y, x), each (h, w)."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    return torch.meshgrid(ys, xs, indexing="ij")


def box_mask(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    box_h = max(1, round(_uniform(generator, 0.1, 0.62) * h))
    box_w = max(1, round(_uniform(generator, 0.1, 0.62) * w))
    top, left = _randint(generator, 0, h - box_h), _randint(generator, 0, w - box_w)
    mask = torch.zeros(h, w)
    mask[top : top + box_h, left : left + box_w] = 1
    return mask


def _segment_distance(
    y: torch.Tensor, x: torch.Tensor, a: tuple[float, float], b: tuple[float, float]
) -> torch.Tensor:
    """Distance of every pixel to the segment a–b (points as (y, x))."""
    ay, ax = a
    dy, dx = b[0] - ay, b[1] - ax
    length2 = dy * dy + dx * dx
    if length2 == 0:
        return torch.hypot(y - ay, x - ax)
    s = (((y - ay) * dy + (x - ax) * dx) / length2).clamp(0, 1)
    return torch.hypot(y - (ay + s * dy), x - (ax + s * dx))


def brush_mask(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Thick random polylines with round joints (a painter's strokes)."""
    y, x = _grid(h, w)
    side = min(h, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(_randint(generator, 1, 4)):
        radius = max(0.75, _uniform(generator, 0.04, 0.1) * side)
        point = (_uniform(generator, 0, h), _uniform(generator, 0, w))
        angle = _uniform(generator, 0, 2 * math.pi)
        for _ in range(_randint(generator, 1, 5)):
            angle += _uniform(generator, -math.pi / 2, math.pi / 2)
            length = _uniform(generator, 0.15, 0.45) * side
            end = (
                min(max(point[0] + length * math.sin(angle), 0.0), float(h)),
                min(max(point[1] + length * math.cos(angle), 0.0), float(w)),
            )
            mask |= _segment_distance(y, x, point, end) <= radius
            point = end
    return mask.float()


def band_mask(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Repaint a band 10 %–70 % deep along one random side."""
    side = _randint(generator, 0, 3)  # top, bottom, left, right
    depth = _uniform(generator, 0.1, 0.7)
    mask = torch.zeros(h, w)
    rows, cols = max(1, round(depth * h)), max(1, round(depth * w))
    if side == 0:
        mask[:rows] = 1
    elif side == 1:
        mask[h - rows :] = 1
    elif side == 2:
        mask[:, :cols] = 1
    else:
        mask[:, w - cols :] = 1
    return mask


def frame_mask(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Repaint everything outside an inner rectangle or ellipse (side margins 5 %–30 %)."""
    top, bottom, left, right = (_uniform(generator, 0.05, 0.3) for _ in range(4))
    if _uniform(generator) < 0.5:
        mask = torch.ones(h, w)
        r0, r1 = round(top * h), h - round(bottom * h)
        c0, c1 = round(left * w), w - round(right * w)
        mask[r0:r1, c0:c1] = 0
        return mask
    y, x = _grid(h, w)
    cy, cx = (top * h + (1 - bottom) * h) / 2, (left * w + (1 - right) * w) / 2
    ry, rx = ((1 - bottom - top) * h) / 2, ((1 - right - left) * w) / 2
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return (~inside).float()


def _any_mask(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    if _uniform(generator) < 0.1:
        return box_mask(h, w, generator)
    actions = [_randint(generator, 0, 1), _randint(generator, 0, 1)]
    mask = torch.zeros(h, w)
    if 0 in actions:
        mask = torch.maximum(mask, brush_mask(h, w, generator))
    if 1 in actions:
        make = band_mask if _uniform(generator) < 0.5 else frame_mask
        mask = torch.maximum(mask, make(h, w, generator))
    return mask


_MAKERS = {
    "box": box_mask,
    "brush": brush_mask,
    "band": band_mask,
    "frame": frame_mask,
    "any": _any_mask,
}


MaskKind = str | Mapping[str, float]


def check_mask_kind(kind: MaskKind) -> dict[str, float]:
    """`kind` as {kind: weight} (one kind → weight 1); unknown kinds or bad weights raise."""
    if not isinstance(kind, str | Mapping):
        raise InvalidInput(
            f"mask kind must be one of {', '.join(KINDS)} or a table kind → weight, got {kind!r}"
        )
    weights = {kind: 1.0} if isinstance(kind, str) else dict(kind)
    unknown = [k for k in weights if k not in _MAKERS]
    if unknown or not weights:
        raise InvalidInput(
            f"mask kind {unknown[0] if unknown else kind!r} is unknown; choose one of "
            f"{', '.join(KINDS)} or a table of them with weights, e.g. {{box = 0.5, band = 0.5}}"
        )
    bad = {
        k: v
        for k, v in weights.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0
    }
    if bad or sum(weights.values()) <= 0:
        raise InvalidInput(f"mask kind weights must be ≥ 0 and not all 0, got {weights}")
    return {k: float(v) for k, v in weights.items()}


def random_mask(h: int, w: int, generator: torch.Generator, kind: MaskKind = "any") -> torch.Tensor:
    """A (1, h, w) float mask of 0/1, 1 = repaint; never empty and never full.

    `kind`: one of `KINDS`, or a mapping kind → weight. Deterministic given the generator's
    state. A draw that comes out empty or full (possible on tiny latents) is redrawn a few
    times, then replaced by a centred box.
    """
    weights = check_mask_kind(kind)
    if h < 2 or w < 2:
        raise InvalidInput(f"masks need at least 2×2 pixels, got {h}×{w}")
    names = list(weights)
    for _ in range(8):
        chosen = names[0]
        if len(names) > 1:
            pick = _uniform(generator, 0.0, sum(weights.values()))
            for chosen in names:
                pick -= weights[chosen]
                if pick < 0:
                    break
        mask = _MAKERS[chosen](h, w, generator)
        covered = float(mask.mean())
        if 0.0 < covered < 1.0:
            return mask[None]
    mask = torch.zeros(h, w)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 1
    return mask[None]
