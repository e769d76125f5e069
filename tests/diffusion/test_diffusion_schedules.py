"""Schedules and timestep plans pinned to the numbers in the reference (§3.4, §4.5, §4.6)."""

from __future__ import annotations

import math

import pytest
import torch

from kandinsky.diffusion.prior_sampler import prior_timesteps
from kandinsky.diffusion.samplers import sampler_timesteps
from kandinsky.diffusion.schedules import (
    ddim_timesteps,
    decoder_schedule,
    img2img_schedule,
    prior_schedule,
    q_sample,
    space_timesteps,
)
from kandinsky.errors import InvalidInput


def test_decoder_schedule_is_linear_in_beta_float64():
    s = decoder_schedule()
    assert s.num_timesteps == 1000 and s.betas.dtype == torch.float64
    assert s.alphas_cumprod[0].item() == pytest.approx(0.99915, abs=1e-12)
    assert s.alphas_cumprod[999].item() == pytest.approx(1.579e-3, rel=1e-3)
    assert s.betas[-1].item() == pytest.approx(0.012, abs=1e-15)
    assert torch.allclose(
        s.betas.diff(), torch.full((999,), (0.012 - 0.00085) / 999, dtype=torch.float64)
    )


def test_prior_schedule_is_cosine_capped():
    s = prior_schedule()
    assert s.betas[0].item() == pytest.approx(4.13e-5, rel=1e-3)
    assert s.betas[999].item() == 0.999
    # ᾱ_t = ᾱ(t+1 / T) / ᾱ(0) below the cap
    f = [math.cos(((t / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2 for t in (0, 501)]
    assert s.alphas_cumprod[500].item() == pytest.approx(f[1] / f[0], rel=1e-12)


def test_img2img_schedule_is_ddpm_default():
    s = img2img_schedule()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[299].item() == pytest.approx(0.3964, abs=1e-4)  # the one really used
    assert decoder_schedule().alphas_cumprod[299].item() == pytest.approx(0.4692, abs=1e-4)


def test_space_timesteps_matches_original_respacing():
    steps = space_timesteps(1000, 25)
    assert steps[:4] == [0, 42, 83, 125] and steps[-3:] == [916, 957, 999] and len(steps) == 25
    assert steps == sorted(steps)
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert space_timesteps(1000, 100)[-3:] == [979, 989, 999]
    assert space_timesteps(1000, 1) == [0]
    assert space_timesteps(1000, 1000) == list(range(1000))


def test_ddim_timesteps_match_original_ddimN():
    assert ddim_timesteps(1000, 100) == list(range(1, 1000, 10))
    steps = ddim_timesteps(1000, 150)  # stride 6 → ceil(1000 / 6) steps
    assert len(steps) == 167 and steps[0] == 1 and steps[-1] == 997
    assert ddim_timesteps(1000, 500)[-1] == 999
    # where the original would plan t = 1000 (and crash), that step is dropped
    assert ddim_timesteps(1000, 501) == list(range(1, 1000))
    assert ddim_timesteps(1000, 3) == [1, 334, 667]
    assert sampler_timesteps("ddim", 100)[:2] == [991, 981]
    assert sampler_timesteps("p_sampler", 100)[:2] == [999, 989]


def test_prior_plans_differ_only_where_rounding_differs():
    for n in (5, 10, 25, 50, 100):
        assert prior_timesteps(n, "original") == prior_timesteps(n, "unclip")
    a, b = prior_timesteps(21, "original"), prior_timesteps(21, "unclip")
    assert a != b and len(a) == len(b) == 21
    assert prior_timesteps(1, "unclip") == prior_timesteps(1, "original") == [0]


@pytest.mark.parametrize("bad", [0, -3, 1001])
def test_num_steps_out_of_range_is_invalid_input(bad):
    with pytest.raises(InvalidInput):
        space_timesteps(1000, bad)
    with pytest.raises(InvalidInput):
        ddim_timesteps(1000, bad)


def test_q_sample_formula_and_dtype():
    x0, noise = torch.ones(2, 3, dtype=torch.float16), torch.full((2, 3), 2.0, dtype=torch.float16)
    s = img2img_schedule()
    ab = s.alphas_cumprod[299].item()
    out = q_sample(x0, 299, noise, s)
    assert out.dtype == torch.float16
    assert torch.allclose(
        out.float(), torch.full((2, 3), math.sqrt(ab) + 2 * math.sqrt(1 - ab)), atol=2e-3
    )
    with pytest.raises(InvalidInput):
        q_sample(x0, 1000, noise, s)
