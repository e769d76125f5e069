"""The demo model's quality gates, scored by the independent judge (`kandinsky.demo.judge`).

`evaluate(pipe, judge, n_prompts, seed)` returns a table (list of rows: name, value,
threshold, passed); `format_table` prints it. `n_prompts` is per group; the CI version uses
16 (64 text-to-image prompts in all). Gates:

- text2img adherence ("all" of `judge.score`: every object right at its position and the
  background right): EN one-object ≥ 0.90, EN two-object ≥ 0.70; RU within 0.05 of EN.
- inpaint: a two-object scene rendered without object B, B's cell masked, prompt = the full
  caption. Unmasked pixels change ≤ 2/255 (max over all images); B (kind, colour) appears at
  its position ≥ 0.80.
- outpaint: the left half of a scene with A on the left and B on the right, extended by 32 px
  to the right; B appears on the right ≥ 0.80; seam: mean |Δ| across the seam column minus
  the mean |Δ| of the neighbouring columns ≤ 6/255.
- variations: kind, colour and background of a one-object image kept (mean of the three
  rates) ≥ 0.80.
- mixing two one-object images (weights 0.5/0.5): documented behaviour is "both objects, or
  one object blending their attributes": an object whose kind is one of the two kinds and
  whose colour is one of the two colours ≥ 0.80; the share with both objects is reported.
- domain Fréchet distance (judge features) of generated vs held-out real images, next to the
  same for the untrained model (same architecture, fresh initialisation): trained < untrained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from kandinsky.demo import data
from kandinsky.demo import judge as judge_lib

Row = dict[str, Any]


def _row(name: str, value: float, threshold: str, passed: bool | None) -> Row:
    return {"name": name, "value": float(value), "threshold": threshold, "passed": passed}


def evaluate(
    pipe: Any,
    judge: judge_lib.Judge,
    n_prompts: int = 64,
    seed: int = 0,
    *,
    size: int = 64,
    steps: int | None = None,
    prior_steps: int | None = None,
    guidance_scale: float | None = None,
    prior_guidance_scale: float | None = None,
    untrained: Any | bool = True,
    n_real: int = 500,
) -> list[Row]:
    """Run every gate with `n_prompts` per group; `untrained` a pipeline, True (build one), or False.

    Sampling settings left None are the model's own (`pipe.defaults`): the gates measure
    what a user gets without options."""
    opts = {
        "seed": seed,
        "num_steps": steps,
        "prior_steps": prior_steps,
        "guidance_scale": guidance_scale,
        "prior_guidance_scale": prior_guidance_scale,
    }
    rows: list[Row] = []
    generated: list[Image.Image] = []
    rates: dict[tuple[str, int], float] = {}
    for shapes in (1, 2):
        for language in ("en", "ru"):
            prompts = data.eval_prompts(n_prompts, seed, language=language, num_shapes=shapes)
            images = _text2img([t for t, _ in prompts], pipe, size, opts)
            if language == "en":
                generated += images
            scores = judge_lib.adherence([s for _, s in prompts], judge.predict(images))
            rates[(language, shapes)] = scores["all"]
    rows.append(
        _row("text2img EN 1-object adherence", rates[("en", 1)], ">= 0.90", rates[("en", 1)] >= 0.9)
    )
    rows.append(
        _row("text2img EN 2-object adherence", rates[("en", 2)], ">= 0.70", rates[("en", 2)] >= 0.7)
    )
    for shapes in (1, 2):
        gap = rates[("en", shapes)] - rates[("ru", shapes)]
        rows.append(_row(f"text2img RU {shapes}-object adherence", rates[("ru", shapes)], "", None))
        rows.append(_row(f"text2img EN-RU gap, {shapes}-object", gap, "<= 0.05", gap <= 0.05))
    rows += _inpaint_rows(pipe, judge, n_prompts, seed, size, opts)
    rows += _outpaint_rows(pipe, judge, n_prompts, seed, size, opts)
    rows += _variation_rows(pipe, judge, n_prompts, seed, size, opts)
    rows += _mix_rows(pipe, judge, n_prompts, seed, size, opts)

    real = [e.image for e in data.generate(n_real, seed, size=size, split="heldout")]
    real_features = judge.features(real)
    fd = judge_lib.frechet_distance(judge.features(generated), real_features)
    if untrained is True:
        untrained = untrained_pipeline(pipe, seed)
    if untrained:
        prompts = [t for t, _ in data.eval_prompts(n_prompts, seed, "en", 1)]
        prompts += [t for t, _ in data.eval_prompts(n_prompts, seed, "en", 2)]
        base = _text2img(prompts, untrained, size, opts)
        fd_base = judge_lib.frechet_distance(judge.features(base), real_features)
        rows.append(_row(f"Fréchet distance, untrained model (N={len(base)})", fd_base, "", None))
        rows.append(
            _row(
                f"Fréchet distance, demo model (N={len(generated)})",
                fd,
                "< untrained",
                fd < fd_base,
            )
        )
    else:
        rows.append(_row(f"Fréchet distance, demo model (N={len(generated)})", fd, "", None))
    return rows


def _cell_box(position: str, size: int, half: float = 0.2) -> tuple[int, int, int, int]:
    cx, cy = data.POSITIONS[position]
    return (
        max(0, round((cx - half) * size)),
        max(0, round((cy - half) * size)),
        min(size, round((cx + half) * size)),
        min(size, round((cy + half) * size)),
    )


def _has(scene: data.Scene, kind: str, color: str, position: str | None = None) -> bool:
    return any(
        s.kind == kind and s.color == color and (position is None or s.position == position)
        for s in scene.shapes
    )


def _text2img(prompts: list[str], pipe: Any, size: int, opts: dict, chunk: int = 32) -> list:
    """One image per prompt, `chunk` prompts per call (a call makes at most 64); image i
    gets seed + i whatever the chunking."""
    images = []
    for start in range(0, len(prompts), chunk):
        part = {**opts, "seed": opts["seed"] + start}
        images += pipe.text2img(
            prompts[start : start + chunk], height=size, width=size, **part
        ).images
    return images


def _inpaint_rows(pipe, judge, n, seed, size, opts) -> list[Row]:
    prompts = data.eval_prompts(n, seed + 1, "en", num_shapes=2)
    sources, masks, texts, targets = [], [], [], []
    for text, scene in prompts:
        keep_shape, new_shape = scene.shapes
        sources.append(data.render(data.Scene((keep_shape,), scene.background), size=size))
        mask = np.zeros((size, size), dtype=np.float32)
        x0, y0, x1, y1 = _cell_box(new_shape.position, size)
        mask[y0:y1, x0:x1] = 1.0  # white = repaint
        masks.append(mask)
        texts.append(text)
        targets.append(new_shape)
    changes, hits = [], []
    for source, mask, text, target in zip(sources, masks, texts, targets, strict=True):
        out = pipe.inpaint(source, mask, text, **opts).images[0]
        a = np.asarray(out, dtype=np.int16)
        b = np.asarray(source, dtype=np.int16)
        keep = mask < 0.5
        changes.append(int(np.abs(a - b)[keep].max()))
        predicted = judge.predict([out])[0]
        hits.append(_has(predicted, target.kind, target.color, target.position))
    worst, rate = max(changes), float(np.mean(hits))
    return [
        _row("inpaint unmasked change (max, /255)", worst, "<= 2", worst <= 2),
        _row("inpaint masked region adherence", rate, ">= 0.80", rate >= 0.8),
    ]


def _outpaint_rows(pipe, judge, n, seed, size, opts) -> list[Row]:
    half = size // 2
    rng = np.random.default_rng(seed + 2)
    hits, seams = [], []
    for _, scene in data.eval_prompts(n, seed + 2, "en", num_shapes=2):
        a, b = scene.shapes
        scene = data.Scene(
            (replace(a, position="left"), replace(b, position="right")), scene.background
        )
        template = data.complete_templates("en")[
            int(rng.integers(len(data.complete_templates("en"))))
        ]
        text = data.caption(scene, "en", rng, template)
        source = data.render(scene, size=size).crop((0, 0, half, size))
        out = pipe.outpaint(source, text, extend=(0, 0, size - half, 0), overlap=8, **opts).images[
            0
        ]
        predicted = judge.predict([out])[0]
        hits.append(_has(predicted, b.kind, b.color, "right"))
        x = np.asarray(out, dtype=np.float32)
        grad = np.abs(np.diff(x, axis=1)).mean(axis=(0, 2))  # grad[i] = |col i+1 − col i|
        neighbours = np.r_[grad[half - 5 : half - 1], grad[half : half + 4]]
        seams.append(float(grad[half - 1] - neighbours.mean()))
    rate, seam = float(np.mean(hits)), float(np.mean(seams))
    return [
        _row("outpaint new region adherence", rate, ">= 0.80", rate >= 0.8),
        _row("outpaint seam excess (mean abs step, /255)", seam, "<= 6", seam <= 6),
    ]


def _variation_rows(pipe, judge, n, seed, size, opts) -> list[Row]:
    scenes = [s for _, s in data.eval_prompts(n, seed + 3, "en", num_shapes=1)]
    outputs = []
    for scene in scenes:
        source = data.render(scene, size=size)
        outputs.append(pipe.variations(source, height=size, width=size, **opts).images[0])
    scores = judge_lib.adherence(scenes, judge.predict(outputs))
    kept = float(np.mean([scores["shape"], scores["color"], scores["background"]]))
    return [_row("variations keep kind/colour/background", kept, ">= 0.80", kept >= 0.8)]


def _mix_rows(pipe, judge, n, seed, size, opts) -> list[Row]:
    scenes = [s for _, s in data.eval_prompts(2 * n, seed + 4, "en", num_shapes=1)]
    both, blend = [], []
    pairs = [(scenes[2 * i], scenes[2 * i + 1]) for i in range(n)]
    for first, second in pairs:
        a, b = first.shapes[0], second.shapes[0]
        images = [data.render(first, size=size), data.render(second, size=size)]
        out = pipe.mix(images, [0.5, 0.5], height=size, width=size, **opts).images[0]
        predicted = judge.predict([out])[0]
        both.append(_has(predicted, a.kind, a.color) and _has(predicted, b.kind, b.color))
        blend.append(
            any(
                s.kind in (a.kind, b.kind) and s.color in (a.color, b.color)
                for s in predicted.shapes
            )
        )
    rate_both, rate_blend = float(np.mean(both)), float(np.mean(blend))
    return [
        _row("mix: both objects", rate_both, "", None),
        _row("mix: both objects or a blend", rate_blend, ">= 0.80", rate_blend >= 0.8),
    ]


def untrained_pipeline(pipe: Any, seed: int = 0) -> Any:
    """`pipe`'s architecture, tokenizers and sampling settings with freshly initialised networks."""
    from kandinsky.loading import Components, build_network
    from kandinsky.pipeline import Kandinsky21

    parts = pipe.parts
    fresh = Components(
        config=parts.config,
        tokenizer=parts.tokenizer,
        clip_tokenizer=parts.clip_tokenizer,
        defaults=parts.defaults,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in (
            "prior",
            "unet",
            "inpaint_unet",
            "movq",
            "text_encoder",
            "clip_text",
            "clip_vision",
        ):
            setattr(fresh, name, build_network(name, parts.config).eval())
    return Kandinsky21(fresh, model_id="untrained")


def passed(rows: Sequence[Row]) -> bool:
    return all(r["passed"] is not False for r in rows)


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the rows."""
    lines = ["| gate | value | threshold | pass |", "|---|---:|---|---|"]
    for r in rows:
        mark = {True: "yes", False: "**NO**", None: ""}[r["passed"]]
        lines.append(f"| {r['name']} | {r['value']:.3f} | {r['threshold']} | {mark} |")
    return "\n".join(lines)
