"""A tiny pipeline (ours) and the diffusers pipelines on the very same converted weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from kandinsky.pipeline import Kandinsky21


@pytest.fixture(scope="session")
def pipe(tiny_diffusers: Path) -> Kandinsky21:
    return Kandinsky21.from_pretrained(tiny_diffusers, inpainting=True)


@pytest.fixture(scope="session")
def diffusers_pipes(tiny_diffusers: Path) -> dict:
    from diffusers import (
        KandinskyImg2ImgPipeline,
        KandinskyInpaintPipeline,
        KandinskyPipeline,
        KandinskyPriorPipeline,
    )
    from diffusers.utils import logging

    logging.set_verbosity_error()
    decoder = tiny_diffusers / "kandinsky-2-1"
    pipes = {
        "prior": KandinskyPriorPipeline.from_pretrained(tiny_diffusers / "kandinsky-2-1-prior"),
        "text2img": KandinskyPipeline.from_pretrained(decoder),
        "img2img": KandinskyImg2ImgPipeline.from_pretrained(decoder),
        "inpaint": KandinskyInpaintPipeline.from_pretrained(
            tiny_diffusers / "kandinsky-2-1-inpaint"
        ),
    }
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes
