"""Non-finite decodes are redone in fp32 with one warning; progress reaches the caller."""

from __future__ import annotations

import warnings

import pytest
import torch

from kandinsky.models.movq import MoVQ
from kandinsky.pipeline import Kandinsky21

FAST = {"num_steps": 2, "prior_steps": 2, "height": 64, "width": 64}


@pytest.fixture()
def half_pipe(tiny_diffusers, monkeypatch) -> Kandinsky21:
    """A bf16 pipeline whose MoVQ decoder 'overflows' (returns inf) whenever it runs below fp32."""
    pipe = Kandinsky21.from_pretrained(tiny_diffusers, dtype="bf16")
    original = MoVQ.decode

    def overflowing(self, latents, quantize=False):
        out = original(self, latents, quantize)
        return out if out.dtype == torch.float32 else torch.full_like(out, float("inf"))

    monkeypatch.setattr(MoVQ, "decode", overflowing)
    return pipe


def test_overflowing_decoder_is_redone_in_fp32_and_warns_once(half_pipe) -> None:
    with pytest.warns(RuntimeWarning, match="float32"):
        first = half_pipe.text2img("a star", seed=0, **FAST)
    assert torch.isfinite(first.pixels).all()
    assert next(half_pipe.parts.movq.parameters()).dtype == torch.bfloat16  # put back afterwards
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = half_pipe.text2img("a star", seed=0, **FAST)
    assert torch.isfinite(second.pixels).all()


def test_callback_sees_every_prior_and_decoder_step(pipe) -> None:
    seen: list[tuple[str, int, int]] = []
    pipe.text2img(
        "a star",
        seed=0,
        callback=lambda stage, step, total: seen.append((stage, step, total)),
        num_steps=3,
        prior_steps=4,
        height=64,
        width=64,
    )
    assert [s for s in seen if s[0] == "prior"] == [("prior", i, 4) for i in range(4)]
    assert [s for s in seen if s[0] == "decoder"] == [("decoder", i, 3) for i in range(3)]


def test_progress_bar_runs(pipe, capsys) -> None:
    pipe.text2img("a star", seed=0, progress=True, **FAST)
    assert "decoder" in capsys.readouterr().err
