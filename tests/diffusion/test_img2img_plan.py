"""img2img plans: the original's strength (fraction skipped) and diffusers' (fraction run)."""

from __future__ import annotations

import pytest
import torch

from kandinsky.diffusion.samplers import plan_img2img, sample, sampler_timesteps
from kandinsky.diffusion.schedules import space_timesteps
from kandinsky.errors import InvalidInput


def planned_timesteps(sampler: str, num_steps: int, start_step: int) -> list[int]:
    calls: list[int] = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    sample(sampler, model, torch.zeros(1, 4, 2, 2), num_steps, start_step=start_step)
    return calls


def test_original_ddim_strength_is_fraction_skipped():
    start, t_noise = plan_img2img("ddim_sampler", 100, 0.7)
    assert (start, t_noise) == (70, 299)
    assert planned_timesteps("ddim", 100, start) == list(range(291, 0, -10))  # 30 steps
    assert plan_img2img("plms", 100, 0.7) == (70, 299)
    assert plan_img2img("ddim", 50, 0.75) == (37, 249)  # keep t ≤ 250: 241 … 1, 13 steps
    assert plan_img2img("ddim", 100, 0.0) == (0, 999)


def test_diffusers_strength_is_fraction_run():
    start, t_noise = plan_img2img("ddim", 100, 0.3, convention="diffusers")
    assert (start, t_noise) == (70, 298)
    assert planned_timesteps("ddim", 100, start)[0] == 291
    assert plan_img2img("ddim", 100, 1.0, convention="diffusers") == (0, 998)


def test_original_p_sampler_uses_respaced_indices():
    # start = int(100 · 0.3) = 30: respaced indices 29 … 0, noise to timestep_map[29]
    start, t_noise = plan_img2img("p_sampler", 100, 0.7)
    assert start == 70 and t_noise == space_timesteps(1000, 100)[29] == 293
    calls = planned_timesteps("p_sampler", 100, start)
    assert len(calls) == 30 and calls[0] == 293 and calls[-1] == 0
    assert plan_img2img("p_sampler", 5, 0.5) == (3, 250)  # int(5 · 0.5) = 2 → indices 1, 0


def test_sigma_samplers_use_the_ddim_plan():
    assert plan_img2img("dpmpp_2m", 100, 0.7) == plan_img2img("euler_a", 100, 0.7) == (70, 299)


def test_degenerate_strengths_run_nothing():
    assert plan_img2img("ddim", 100, 1.0) == (100, 0)
    assert plan_img2img("p_sampler", 100, 1.0) == (100, 0)
    assert plan_img2img("ddim", 100, 0.0, convention="diffusers") == (100, 0)
    x = torch.randn(1, 4, 2, 2)
    assert sample("ddim", lambda x, t: x, x, 100, start_step=100) is x


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5"])
def test_strength_outside_unit_interval_is_invalid(strength):
    with pytest.raises(InvalidInput):
        plan_img2img("ddim", 100, strength)


def test_unknown_convention_is_invalid():
    with pytest.raises(InvalidInput):
        plan_img2img("ddim", 100, 0.5, convention="k-diffusion")  # type: ignore[arg-type]
    assert len(sampler_timesteps("ddim", 100)) == 100
