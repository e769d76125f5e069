"""Prior sampler: "unclip" against diffusers' UnCLIPScheduler loop, "original" against the
original respaced p_sample_loop written out here in numpy (FIXED_SMALL, x0 clamp ±10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UnCLIPScheduler

from kandinsky.diffusion.prior_sampler import prior_timesteps, sample_prior
from kandinsky.diffusion.schedules import prior_schedule
from kandinsky.errors import InvalidInput


def toy_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 model that sometimes exceeds ±10, so the clamp matters."""
    return 12 * torch.tanh(x) + torch.cos(t.to(x.dtype) / 50).view(-1, 1)


def np_x0(x, t):
    return 12 * np.tanh(x) + np.cos(t / 50)


@pytest.mark.parametrize("n", [5, 25])
def test_unclip_method_equals_diffusers_unclip_scheduler(n):
    sched = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        clip_sample=True,
        clip_sample_range=10.0,
    )
    sched.set_timesteps(n)
    # the unclip method reproduces diffusers' float32 schedule arithmetic too
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 16, generator=g, dtype=torch.float64)
    for i, t in enumerate(sched.timesteps):  # KandinskyPriorPipeline's loop
        prev = None if i + 1 == len(sched.timesteps) else sched.timesteps[i + 1]
        x0 = toy_x0(latents, t.expand(3))
        latents = sched.step(
            x0, timestep=t, sample=latents, generator=g, prev_timestep=prev
        ).prev_sample

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64)
    calls: list[torch.Tensor] = []

    def model(x, t):
        assert t.dtype == torch.long and t.shape == (3,)
        calls.append(t)
        return toy_x0(x, t)

    noise = lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)  # noqa: E731
    out = sample_prior(model, x, n, method="unclip", noise_sampler=noise)
    assert [int(t[0]) for t in calls] == sched.timesteps.tolist()
    torch.testing.assert_close(out, latents, atol=1e-5, rtol=1e-5)


def original_prior_loop(x, n, noises):
    """The original respaced p_sample_loop: START_X, FIXED_SMALL, denoised_fn = clamp ±10."""
    use = set(prior_timesteps(n, "original"))
    last, betas, tmap = 1.0, [], []
    for i, a in enumerate(prior_schedule().alphas_cumprod.numpy()):
        if i in use:
            betas.append(1 - a / last)
            last = a
            tmap.append(i)
    betas = np.asarray(betas)
    ac = np.cumprod(1 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(ac_prev) / (1 - ac)
    coef2 = (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac)
    out = []
    for k, i in enumerate(reversed(range(n))):
        x0 = np.clip(np_x0(x, tmap[i]), -10, 10)
        mean = coef1[i] * x0 + coef2[i] * x
        x = mean + (i != 0) * np.exp(0.5 * post_logvar[i]) * noises[k]
        out.append(x)
    return out


@pytest.mark.parametrize("n", [2, 5, 25])
def test_original_method_follows_original_formulas(n):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, dtype=torch.float64, generator=gen)
    noises = [torch.randn(2, 16, dtype=torch.float64, generator=gen) for _ in range(n)]
    ref = original_prior_loop(x.numpy(), n, [z.numpy() for z in noises])
    it = iter(noises)
    steps: list[torch.Tensor] = []
    sample_prior(
        toy_x0,
        x,
        n,
        noise_sampler=lambda x: next(it),
        callback=lambda i, total, xi: steps.append(xi),
    )
    assert next(it, None) is None  # the original draws noise on every step, the last one too
    for ours, theirs in zip(steps, ref, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("method", "draws"), [("original", 5), ("unclip", 4)])
def test_prior_noise_sampler_replay(method, draws):
    x = torch.randn(2, 16)
    recorded: list[torch.Tensor] = []

    def record(x):
        recorded.append(torch.randn_like(x))
        return recorded[-1]

    first = sample_prior(toy_x0, x, 5, method=method, noise_sampler=record)
    assert len(recorded) == draws
    replay = iter(list(recorded))
    torch.manual_seed(99)
    assert torch.equal(
        first, sample_prior(toy_x0, x, 5, method=method, noise_sampler=lambda x: next(replay))
    )


def test_prior_errors():
    with pytest.raises(InvalidInput):
        sample_prior(toy_x0, torch.randn(1, 4), 0)
    with pytest.raises(InvalidInput):
        prior_timesteps(5, "ddim")  # type: ignore[arg-type]


def test_prior_keeps_dtype():
    out = sample_prior(toy_x0, torch.randn(2, 8, dtype=torch.float16), 5)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
