"""Decoder samplers against diffusers and against the original formulas, written out here
independently in numpy float64 the way the original arrays are built (gaussian_diffusion.py,
respace.py, samplers.py of ai-forever/Kandinsky-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from kandinsky.diffusion.samplers import resolve_sampler, sample
from kandinsky.diffusion.schedules import decoder_schedule
from kandinsky.errors import InvalidInput

AC = decoder_schedule().alphas_cumprod.numpy()  # ᾱ, float64


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Deterministic eps model: 0.1·x + sin(t/100)."""
    return 0.1 * x + torch.sin(t.to(x.dtype) / 100).view(-1, *[1] * (x.ndim - 1))


def recorded(model):
    """Wrap a model to record the timesteps it is called with."""
    calls: list[list[float]] = []

    def wrapped(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        calls.append(t.tolist())
        return model(x, t)

    return wrapped, calls


def trajectory(sampler, model, x, n, **kwargs):
    xs: list[torch.Tensor] = []
    out = sample(
        sampler, model, x, n, callback=lambda i, total, xi: xs.append(xi.clone()), **kwargs
    )
    return out, xs


# ---------------------------------------------------------------------------- DDIM vs diffusers


@pytest.mark.parametrize("n", [10, 50, 100])
def test_ddim_equals_diffusers_ddim_scheduler(n):
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    sched.set_timesteps(n)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref, ref_steps = x.clone(), []
    for t in sched.timesteps:
        ref = sched.step(toy_eps(ref, t.expand(2)), t, ref).prev_sample
        ref_steps.append(ref)
    model, calls = recorded(toy_eps)
    out, steps = trajectory("ddim", model, x, n)
    assert [c[0] for c in calls] == sched.timesteps.float().tolist()
    for ours, theirs in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- original formulas


def original_ddim_plms(x, model, n, plms, init_step=None):
    """The original DDIMSampler / PLMSSampler loops (η = 0), numpy float64."""
    ts = np.asarray(list(range(0, 1000, 1000 // n))) + 1
    if init_step is not None:
        ts = ts[ts <= init_step]
    alphas = AC[ts]
    alphas_prev = np.asarray([AC[0], *AC[ts[:-1]].tolist()])
    time_range = np.flip(ts)
    total, old_eps, out = len(ts), [], []

    def x_prev(x, e, index):
        a_t, a_prev = alphas[index], alphas_prev[index]
        pred_x0 = (x - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
        return np.sqrt(a_prev) * pred_x0 + np.sqrt(1.0 - a_prev) * e

    for i, step in enumerate(time_range):
        index = total - i - 1
        e_t = model(x, step)
        if not plms:
            x = x_prev(x, e_t, index)
        else:
            if len(old_eps) == 0:
                xp = x_prev(x, e_t, index)
                e_next = model(xp, time_range[min(i + 1, len(time_range) - 1)])
                e_prime = (e_t + e_next) / 2
            elif len(old_eps) == 1:
                e_prime = (3 * e_t - old_eps[-1]) / 2
            elif len(old_eps) == 2:
                e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
            else:
                e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
            x = x_prev(x, e_prime, index)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
        out.append(x)
    return out


def np_eps(x, t):
    return 0.1 * x + np.sin(t / 100)


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
@pytest.mark.parametrize("n", [1, 2, 10])
def test_ddim_plms_follow_original_formulas(sampler, n):
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = original_ddim_plms(x.numpy(), np_eps, n, plms=sampler == "plms")
    _, steps = trajectory(sampler, toy_eps, x, n)
    assert len(steps) == len(ref)
    for ours, theirs in zip(steps, ref, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)


def test_ddim_img2img_cut_follows_original_init_step():
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for sampler in ("ddim", "plms"):
        ref = original_ddim_plms(x.numpy(), np_eps, 100, plms=sampler == "plms", init_step=300)
        model, calls = recorded(toy_eps)
        out = sample(sampler, model, x, 100, start_step=70)
        assert calls[0] == [291.0] and calls[-1] == [1.0]
        np.testing.assert_allclose(out.numpy(), ref[-1], rtol=1e-12, atol=1e-12)


def test_plms_first_step_two_calls_then_one():
    model, calls = recorded(toy_eps)
    per_step: list[int] = []
    sample(
        "plms",
        model,
        torch.randn(1, 4, 4, 4),
        10,
        callback=lambda i, n, x: per_step.append(len(calls)),
    )
    assert np.diff([0, *per_step]).tolist() == [2] + [1] * 9
    assert [c[0] for c in calls[:3]] == [901.0, 801.0, 801.0]  # improved Euler looks one step ahead


def test_ddim_non_divisor_steps_follow_original():
    model, calls = recorded(toy_eps)
    sample("ddim", model, torch.randn(1, 4, 2, 2), 150)
    assert len(calls) == 167 and calls[0] == [997.0] and calls[-1] == [1.0]


def original_p_sample_loop(x, model, n, noises, denoised_fn):
    """The original respaced p_sample_loop with LEARNED_RANGE variance, numpy float64."""
    use = sorted({round(k * 999 / (n - 1)) for k in range(n)}) if n > 1 else [0]
    # SpacedDiffusion: new betas from the kept ᾱ
    last, betas = 1.0, []
    for i, a in enumerate(AC):
        if i in use:
            betas.append(1 - a / last)
            last = a
    betas = np.asarray(betas)
    ac = np.cumprod(1 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = np.log(np.append(post_var[1], post_var[1:])) if n > 1 else np.log(post_var)
    coef1 = betas * np.sqrt(ac_prev) / (1 - ac)
    coef2 = (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac)
    out = []
    for k, i in enumerate(reversed(range(n))):
        model_out = model(x, use[i])
        eps, v = np.split(model_out, 2, axis=1)
        frac = (v + 1) / 2
        logvar = frac * np.log(betas[i]) + (1 - frac) * post_logvar[i]
        x0 = np.sqrt(1 / ac[i]) * x - np.sqrt(1 / ac[i] - 1) * eps
        x0 = denoised_fn(np.clip(x0, -2, 2))
        s = max(np.percentile(np.abs(x0), 99.5, axis=tuple(range(1, x0.ndim)))[0], 1.0)
        x0 = np.clip(x0, -s, s) / s
        mean = coef1[i] * x0 + coef2[i] * x
        x = mean + (i != 0) * np.exp(0.5 * logvar) * noises[k]
        out.append(x)
    return out


def toy_eps_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps big enough that the ±2 clamp and the thresholding act; v in (-1, 1)."""
    scale = torch.tensor([1.0, 3.0], dtype=x.dtype).view(2, 1, 1, 1)  # row 1 louder than row 0
    eps = -scale * x + torch.cos(t.to(x.dtype) / 300).view(-1, 1, 1, 1)
    return torch.cat([eps, torch.tanh(x)], dim=1)


def np_eps_v(x, t):
    eps = -np.array([1.0, 3.0]).reshape(2, 1, 1, 1) * x + np.cos(t / 300)
    return np.concatenate([eps, np.tanh(x)], axis=1)


@pytest.mark.parametrize("n", [2, 5, 25])
def test_p_sampler_follows_original_formulas(n):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=gen) * 3
    noises = [torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=gen) for _ in range(n)]
    it = iter(noises)
    ref = original_p_sample_loop(
        x.numpy(), np_eps_v, n, [z.numpy() for z in noises], lambda a: 0.8 * a + 0.1
    )
    model, calls = recorded(toy_eps_v)
    _, steps = trajectory(
        "p_sampler",
        model,
        x,
        n,
        noise_sampler=lambda x: next(it),
        denoised_fn=lambda a: 0.8 * a + 0.1,
        p_threshold="first_image",  # the reference is the original's row-0 rule
    )
    assert next(it, None) is None  # one draw per step, the last one included
    assert calls[0] == [999.0, 999.0] and calls[-1] == [0.0, 0.0]
    for ours, theirs in zip(steps, ref, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-10)


def test_p_sampler_first_image_threshold_uses_row_zero_only():
    """Row 1 is ten times louder: its x0 is clipped at row 0's percentile, not its own."""
    x = torch.ones(2, 1, 20, 20, dtype=torch.float64) * torch.tensor(
        [1.0, 10.0], dtype=torch.float64
    ).view(2, 1, 1, 1)
    x[:, :, 0, 0] *= 1.5

    def x0_is_x(x, t):  # eps = 0 ⇒ x0 = x / √ᾱ at t = 0
        return torch.zeros_like(x)

    out = sample("p_sampler", x0_is_x, x * AC[0] ** 0.5, 1, p_threshold="first_image")
    assert out[1].max().item() == pytest.approx(1.0)  # clamp ±2, then s = max(q_row0 = 1, 1) = 1


def test_p_sampler_per_image_threshold_does_not_depend_on_the_batch():
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    alone = sample("p_sampler", toy_eps_v_one, x[1:2], 3, noise_sampler=torch.zeros_like)
    batched = sample("p_sampler", toy_eps_v_one, x, 3, noise_sampler=torch.zeros_like)
    torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-12)


def toy_eps_v_one(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-row model (no cross-row coupling): eps = −x + cos(t/300), v = tanh(x)."""
    eps = -x + torch.cos(t.to(x.dtype) / 300).view(-1, 1, 1, 1)
    return torch.cat([eps, torch.tanh(x)], dim=1)


def test_sampler_runs_in_half_precision_and_keeps_dtype():
    for sampler in ("p_sampler", "ddim", "plms", "dpmpp_2m", "euler_a"):
        for dtype in (torch.float16, torch.bfloat16):
            out = sample(
                sampler,
                toy_eps_v if sampler == "p_sampler" else toy_eps,
                torch.randn(2, 3, 4, 4).to(dtype),
                4,
            )
            assert out.dtype == dtype and torch.isfinite(out.float()).all(), (sampler, dtype)


# ---------------------------------------------------------------------------- names, noise, errors


def test_resolve_sampler_aliases_and_errors():
    assert resolve_sampler("ddim_sampler") == "ddim" and resolve_sampler("plms_sampler") == "plms"
    for name in ("p_sampler", "ddim", "plms", "dpmpp_2m", "euler_a"):
        assert resolve_sampler(name) == name
    with pytest.raises(InvalidInput, match="dpmpp_2m"):
        resolve_sampler("k_lms")
    with pytest.raises(InvalidInput):
        sample("ddim", toy_eps, torch.randn(1, 4, 2, 2), 0)
    with pytest.raises(InvalidInput):
        sample("ddim", toy_eps, torch.randn(1, 4, 2, 2), 10, start_step=11)


@pytest.mark.parametrize(
    ("sampler", "draws"),
    [("p_sampler", 5), ("euler_a", 4), ("ddim", 0), ("plms", 0), ("dpmpp_2m", 0)],
)
def test_noise_sampler_is_the_only_randomness(sampler, draws):
    model = toy_eps_v if sampler == "p_sampler" else toy_eps
    x = torch.randn(2, 3, 4, 4)
    recorded_noise: list[torch.Tensor] = []

    def record(x):
        z = torch.randn_like(x)
        recorded_noise.append(z)
        return z

    first = sample(sampler, model, x, 5, noise_sampler=record)
    assert len(recorded_noise) == draws
    replay = iter(list(recorded_noise))
    torch.manual_seed(1234)  # a different global RNG state must not matter
    second = sample(sampler, model, x, 5, noise_sampler=lambda x: next(replay))
    assert torch.equal(first, second)
