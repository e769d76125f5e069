"""Prior sampler: ancestral DDPM over an x0-predicting model in normalized CLIP space.

Reference §3.4. The model is `model(x_t (B, D), t (B,) long original timesteps) -> x0 (B, D)`,
already guided. Two timestep plans, one loop:

- "original": the original `PriorDiffusionModel` — respaced `p_sample_loop`
  (`space_timesteps(1000, N)`), FIXED_SMALL variance; noise is drawn on every step, the last
  one included (and unused there), as the original consumes its RNG.
- "unclip": diffusers `UnCLIPScheduler(variance_type="fixed_small_log",
  prediction_type="sample", clip_sample_range=10)` as `KandinskyPriorPipeline` steps it —
  timesteps round(k·999/(N−1)) reversed; noise drawn only when t > 0.

Both: x0 clamped to ±10; posterior mean and variance of the process restricted to the plan
(ᾱ_prev = ᾱ at the next planned timestep, 1 after the last); noise drawn after the model call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from kandinsky.diffusion.samplers import Callback, NoiseSampler
from kandinsky.diffusion.schedules import NUM_TRAIN_TIMESTEPS, prior_schedule, space_timesteps
from kandinsky.errors import InvalidInput

PriorModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PriorMethod = Literal["original", "unclip"]

# x0 clamp in normalized units: the original's denoised_fn, diffusers' clip_sample_range
CLIP_RANGE = 10.0


def prior_timesteps(num_steps: int, method: PriorMethod = "original") -> list[int]:
    """Original timesteps the prior visits, descending.

    original: `space_timesteps(1000, N)` (float stride accumulated, Python round);
    unclip: numpy round(k·999/(N−1)), k = 0…N−1 (differs by one for some N, e.g. 21, 23, 31).
    """
    if method == "original":
        return space_timesteps(NUM_TRAIN_TIMESTEPS, num_steps)[::-1]
    if method == "unclip":
        space_timesteps(NUM_TRAIN_TIMESTEPS, num_steps)  # same validation of num_steps
        if num_steps == 1:
            return [0]  # diffusers divides by N−1 here; one step can only be the last one
        ratio = (NUM_TRAIN_TIMESTEPS - 1) / (num_steps - 1)
        return [int(t) for t in (np.arange(num_steps) * ratio).round()[::-1]]
    raise InvalidInput(f"prior method must be 'original' or 'unclip', got {method!r}")


def sample_prior(
    model: PriorModel,
    x: torch.Tensor,
    num_steps: int,
    *,
    method: PriorMethod = "original",
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Sample normalized CLIP image embeddings from x ~ N(0, I) (B, D); returns x at t = 0."""
    timesteps = prior_timesteps(num_steps, method)
    coefficients = _unclip_coefficients if method == "unclip" else _original_coefficients
    noise_sampler = noise_sampler if noise_sampler is not None else torch.randn_like
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        last = i + 1 == n
        coef_x0, coef_xt, std = coefficients(t, None if last else timesteps[i + 1])
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = model(x, t_batch).clamp(-CLIP_RANGE, CLIP_RANGE)
        mean = coef_x0 * x0 + coef_xt * x
        if last:  # t = 0: no noise
            if method == "original":
                noise_sampler(x)  # drawn and masked by the original; unclip draws only for t > 0
            x = mean
        else:
            x = mean + std * noise_sampler(x)
        if callback is not None:
            callback(i, n, x)
    return x


def _original_coefficients(t: int, t_prev: int | None) -> tuple[float, float, float]:
    """Posterior q(x_prev | x_t, x0) of the planned process, in float64 (the original)."""
    schedule = prior_schedule()
    alpha_bar = schedule.alpha_bar(t)
    alpha_bar_prev = 1.0 if t_prev is None else schedule.alpha_bar(t_prev)
    beta = 1.0 - alpha_bar / alpha_bar_prev  # the planned process's β'
    coef_x0 = math.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar)
    coef_xt = math.sqrt(alpha_bar / alpha_bar_prev) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    variance = max(beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar), 1e-20)
    return coef_x0, coef_xt, math.sqrt(variance)


def _unclip_coefficients(t: int, t_prev: int | None) -> tuple[float, float, float]:
    """The same posterior with diffusers' float32 schedule and operation order (UnCLIPScheduler).

    float32 ᾱ shifts the first prior step by ~0.3 % against float64; matching it is the point
    of this method.
    """
    betas = prior_schedule().betas.to(torch.float32)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = t - 1 if t_prev is None else t_prev
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    if prev == t - 1:
        beta = betas[t]
        alpha = 1 - beta
    else:
        beta = 1 - alpha_prod_t / alpha_prod_t_prev
        alpha = 1 - beta
    coef_x0 = alpha_prod_t_prev ** (0.5) * beta / beta_prod_t
    coef_xt = alpha ** (0.5) * beta_prod_t_prev / beta_prod_t
    variance = beta_prod_t_prev / beta_prod_t * beta
    std = torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))
    return float(coef_x0), float(coef_xt), float(std)
