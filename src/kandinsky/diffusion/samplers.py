"""Decoder samplers: plain functions over an eps model (k-diffusion style).

Each sampler walks a descending list of original timesteps and knows nothing about prompts,
guidance or modes. `sample` builds the plan, cuts it for img2img and calls the sampler.

The model is `model(x_t, t) -> (B, 2C, H, W)`: channels [:C] are eps (already guided by the
caller), [C:] the learned-range value v ∈ [-1, 1] (only p_sampler reads it). A C-channel
output means no learned variance. `t` is a (B,) float32 tensor of original timesteps (0…999).

Per-step coefficients are computed in float64 as Python floats, so the loop state stays in
x's dtype and device. Formulas: reference §4.5–§4.6 and the original `gaussian_diffusion.py`,
`respace.py`, `samplers.py` (ai-forever/Kandinsky-2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch

from kandinsky.diffusion.schedules import (
    NUM_TRAIN_TIMESTEPS,
    Schedule,
    ddim_timesteps,
    decoder_schedule,
    space_timesteps,
)
from kandinsky.errors import InvalidInput

DecoderModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]
DenoisedFn = Callable[[torch.Tensor], torch.Tensor]


class SamplerFn(Protocol):
    def __call__(
        self,
        model: DecoderModel,
        x: torch.Tensor,
        timesteps: Sequence[int],
        schedule: Schedule,
        *,
        noise_sampler: NoiseSampler,
        denoised_fn: DenoisedFn | None,
        callback: Callback | None,
    ) -> torch.Tensor: ...


def _t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def _eps(model: DecoderModel, x: torch.Tensor, t: int) -> torch.Tensor:
    return model(x, _t(t, x))[:, : x.shape[1]]


# ---------------------------------------------------------------------------- p_sampler


def sample_p(
    model: DecoderModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    *,
    noise_sampler: NoiseSampler,
    denoised_fn: DenoisedFn | None = None,
    callback: Callback | None = None,
    threshold: Literal["per_image", "first_image"] = "per_image",
) -> torch.Tensor:
    """Ancestral DDPM on the respaced process (the original `p_sample_loop`).

    `timesteps` is the respaced plan, descending and ending at 0; the respaced β'_i comes from
    consecutive kept timesteps (ᾱ_prev = 1 after the last). Each step: x0 from eps, clamp ±2,
    `denoised_fn` (inpaint blend), dynamic thresholding (99.5th percentile s of |x0|, s = max(s, 1),
    x0 = clamp(x0, ±s)/s), posterior mean, and learned-range
    noise log σ² = f·log β' + (1−f)·log β̃ with f = (v+1)/2 (v = −1, i.e. σ² = β̃, without variance
    channels). Noise is drawn after the model call on every step, and unused on the last one.

    threshold="per_image" (default) takes each image's own percentile, so an image does not
    depend on what else is in the batch; "first_image" is the original's rule (row 0's
    percentile for the whole batch), identical to per_image for a batch of one.
    """
    channels, n = x.shape[1], len(timesteps)
    for i, t in enumerate(timesteps):
        alpha_bar = schedule.alpha_bar(t)
        alpha_bar_prev = schedule.alpha_bar(timesteps[i + 1]) if i + 1 < n else 1.0
        beta = 1.0 - alpha_bar / alpha_bar_prev  # the respaced process's β'
        out = model(x, _t(t, x))
        eps = out[:, :channels]
        x0 = math.sqrt(1.0 / alpha_bar) * x - math.sqrt(1.0 / alpha_bar - 1.0) * eps
        x0 = x0.clamp(-2.0, 2.0)  # the original's denoised_fun clamps before anything else
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        x0 = _dynamic_threshold(x0, threshold)
        coef_x0 = math.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar)
        coef_xt = math.sqrt(alpha_bar / alpha_bar_prev) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        mean = coef_x0 * x0 + coef_xt * x
        noise = noise_sampler(x)  # the original draws on every step, the last one included
        if i + 1 < n:
            posterior_variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
            min_log, max_log = math.log(posterior_variance), math.log(beta)
            if out.shape[1] > channels:
                frac = (out[:, channels:] + 1.0) / 2.0
                log_variance = frac * max_log + (1.0 - frac) * min_log
                x = mean + torch.exp(0.5 * log_variance) * noise
            else:
                x = mean + math.exp(0.5 * min_log) * noise
        else:
            x = mean  # no noise at the final step (respaced index 0)
        if callback is not None:
            callback(i, n, x)
    return x


# ---------------------------------------------------------------------------- DDIM / PLMS


def _ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    denoised_fn: DenoisedFn | None,
) -> torch.Tensor:
    """x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·eps with η = 0 (DDIM eq. 12)."""
    x0 = (x - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    if denoised_fn is not None:  # re-derive eps from the processed x0, as guided-diffusion does
        x0 = denoised_fn(x0)
        eps = (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)
    return math.sqrt(alpha_bar_prev) * x0 + math.sqrt(1.0 - alpha_bar_prev) * eps


def _dynamic_threshold(x0: torch.Tensor, rule: str) -> torch.Tensor:
    """x0 = clamp(x0, ±s)/s with s = max(99.5th percentile of |x0|, 1) (linear interpolation, as
    np.percentile); per image, or row 0's for all (the original: `np.percentile(…)[0]`)."""
    magnitudes = x0.abs().flatten(1)
    magnitudes = (
        magnitudes if magnitudes.dtype in (torch.float32, torch.float64) else magnitudes.float()
    )
    if rule == "first_image":
        magnitudes = magnitudes[:1]
    elif rule != "per_image":
        raise InvalidInput(f"threshold {rule!r} is unknown; use 'per_image' or 'first_image'")
    s = torch.quantile(magnitudes, 0.995, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s


def sample_ddim(
    model: DecoderModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    *,
    noise_sampler: NoiseSampler,
    denoised_fn: DenoisedFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (η = 0), the original `DDIMSampler`.

    ᾱ_prev of a step is ᾱ at the next timestep of the plan and ᾱ_0 (not 1) after the last, so
    the result is x at t = 0, not the final x0 prediction. No noise is drawn (the original
    draws an unused σ=0 tensor per step; that only shifts a global RNG we do not share).
    `denoised_fn`, if given, acts on x0 and eps is re-derived from it (the original passes none).
    """
    n, final_alpha_bar = len(timesteps), schedule.alpha_bar(0)
    for i, t in enumerate(timesteps):
        alpha_bar_prev = schedule.alpha_bar(timesteps[i + 1]) if i + 1 < n else final_alpha_bar
        eps = _eps(model, x, t)
        x = _ddim_step(x, eps, schedule.alpha_bar(t), alpha_bar_prev, denoised_fn)
        if callback is not None:
            callback(i, n, x)
    return x


def sample_plms(
    model: DecoderModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    *,
    noise_sampler: NoiseSampler,
    denoised_fn: DenoisedFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Pseudo linear multistep (the original/LDM `PLMSSampler`), on the DDIM plan.

    Step 1 is a pseudo improved Euler step (2 model calls: at (x, t) and at the DDIM
    x_prev with the next timestep — the same t on a one-step plan — eps' = mean of both);
    later steps use Adams–Bashforth 2/3/4 over the stored raw eps (1 call each). The update
    itself is the DDIM step with eps'.
    """
    n, final_alpha_bar = len(timesteps), schedule.alpha_bar(0)
    old_eps: list[torch.Tensor] = []
    for i, t in enumerate(timesteps):
        alpha_bar = schedule.alpha_bar(t)
        alpha_bar_prev = schedule.alpha_bar(timesteps[i + 1]) if i + 1 < n else final_alpha_bar
        eps = _eps(model, x, t)
        if not old_eps:
            x_prev = _ddim_step(x, eps, alpha_bar, alpha_bar_prev, denoised_fn)
            eps_next = _eps(model, x_prev, timesteps[min(i + 1, n - 1)])
            eps_prime = (eps + eps_next) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = _ddim_step(x, eps_prime, alpha_bar, alpha_bar_prev, denoised_fn)
        old_eps = [*old_eps, eps][-3:]  # raw eps, not eps', as the original keeps
        if callback is not None:
            callback(i, n, x)
    return x


# ---------------------------------------------------------------------------- sigma space


def _sigma(alpha_bar: float) -> float:
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def _sigma_space(
    model: DecoderModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    denoised_fn: DenoisedFn | None,
) -> tuple[torch.Tensor, list[float], Callable[[torch.Tensor, int], torch.Tensor]]:
    """k-diffusion view of the VP process: σ_t = √((1−ᾱ_t)/ᾱ_t), x_σ = x_t/√ᾱ_t.

    The sigmas are those of the plan's own timesteps plus a final 0, so the model is always
    called at an integer training timestep (no σ→t interpolation). Returns x_σ, the sigmas and
    `denoise(x_σ, i)` = x0 prediction at step i (x_σ − σ_i·eps, then `denoised_fn`).
    """
    sigmas = [_sigma(schedule.alpha_bar(t)) for t in timesteps] + [0.0]

    def denoise(x_sigma: torch.Tensor, i: int) -> torch.Tensor:
        scale = 1.0 / math.sqrt(1.0 + sigmas[i] ** 2)  # √ᾱ_t
        eps = _eps(model, x_sigma * scale, timesteps[i])
        x0 = x_sigma - sigmas[i] * eps
        return denoised_fn(x0) if denoised_fn is not None else x0

    # the given x is x_t at the plan's first timestep (pure noise, or a q_sample'd latent)
    return x * math.sqrt(1.0 + sigmas[0] ** 2), sigmas, denoise


def _to_vp(x_sigma: torch.Tensor, sigma: float) -> torch.Tensor:
    return x_sigma / math.sqrt(1.0 + sigma**2)


def sample_dpmpp_2m(
    model: DecoderModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    *,
    noise_sampler: NoiseSampler,
    denoised_fn: DenoisedFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (k-diffusion `sample_dpmpp_2m`) on the DDIM timesteps, ending at σ = 0.

    With λ = −log σ and h = λ_next − λ: x ← (σ_next/σ)·x − (e^{−h} − 1)·D, where D is the x0
    prediction, or from step 2 on the extrapolation (1 + 1/2r)·D − (1/2r)·D_prev with
    r = h_prev/h; the last step (to σ = 0) is first order and returns D. Deterministic.
    """
    x, sigmas, denoise = _sigma_space(model, x, timesteps, schedule, denoised_fn)
    n, old_denoised = len(timesteps), None
    for i in range(n):
        denoised = denoise(x, i)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            x = denoised  # σ_next/σ = 0 and e^{−h} − 1 = −1
        else:
            h = math.log(sigma) - math.log(sigma_next)
            d = denoised
            if old_denoised is not None:
                r = (math.log(sigmas[i - 1]) - math.log(sigma)) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_denoised = denoised
        if callback is not None:
            callback(i, n, _to_vp(x, sigma_next))
    return x


def sample_euler_a(
    model: DecoderModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    *,
    noise_sampler: NoiseSampler,
    denoised_fn: DenoisedFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler ancestral, η = 1 (k-diffusion `sample_euler_ancestral`) on the DDIM timesteps.

    σ_up = min(σ_next, √(σ_next²(σ²−σ_next²)/σ²)), σ_down = √(σ_next² − σ_up²);
    x ← x + (x − D)/σ·(σ_down − σ) + σ_up·z, with z drawn only when σ_next > 0.
    """
    x, sigmas, denoise = _sigma_space(model, x, timesteps, schedule, denoised_fn)
    n = len(timesteps)
    for i in range(n):
        denoised = denoise(x, i)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_next > 0.0:
            x = x + sigma_up * noise_sampler(x)
        if callback is not None:
            callback(i, n, _to_vp(x, sigma_next))
    return x


# ---------------------------------------------------------------------------- entry points

SAMPLERS: dict[str, SamplerFn] = {
    "p_sampler": sample_p,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler_a": sample_euler_a,
}
_ALIASES = {"ddim_sampler": "ddim", "plms_sampler": "plms"}  # the original's names


def resolve_sampler(name: str) -> str:
    """Canonical sampler name; accepts the original's "ddim_sampler" / "plms_sampler"."""
    key = _ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in SAMPLERS:
        choices = ", ".join([*SAMPLERS, *_ALIASES])
        raise InvalidInput(f"unknown sampler {name!r}; choose one of: {choices}")
    return key


def sampler_timesteps(
    sampler: str, num_steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> list[int]:
    """The full plan of original timesteps a sampler visits, descending.

    p_sampler: the respaced `space_timesteps` (999 … 0); every other sampler: the DDIM plan
    `range(0, T, T // N) + 1` (991 … 1 for N = 100).
    """
    name = resolve_sampler(sampler)
    plan = space_timesteps if name == "p_sampler" else ddim_timesteps
    return plan(num_timesteps, num_steps)[::-1]


def sample(
    sampler: str,
    model: DecoderModel,
    x: torch.Tensor,
    num_steps: int,
    schedule: Schedule | None = None,
    *,
    start_step: int | None = None,
    noise_sampler: NoiseSampler | None = None,
    denoised_fn: DenoisedFn | None = None,
    callback: Callback | None = None,
    p_threshold: Literal["per_image", "first_image"] = "per_image",
) -> torch.Tensor:
    """Run `sampler` for `num_steps` from x (x_t at the plan's first timestep kept).

    start_step: img2img, how many leading steps of the full plan to skip (see `plan_img2img`);
    x must then be the latent noised to the matching timestep. noise_sampler: the only source of
    randomness (default `torch.randn_like`). denoised_fn: applied to every x0 prediction — for
    p_sampler after the ±2 clamp and before dynamic thresholding (the original's inpaint blend);
    for ddim/plms eps is re-derived from the processed x0; for dpmpp_2m/euler_a it processes D.
    callback(i, n, x) after each step, x in the model's (variance-preserving) scale.
    p_threshold: p_sampler's dynamic-thresholding rule (see `sample_p`).
    """
    name = resolve_sampler(sampler)
    schedule = schedule if schedule is not None else decoder_schedule()
    timesteps = sampler_timesteps(name, num_steps, schedule.num_timesteps)
    if start_step is not None:
        if not 0 <= start_step <= len(timesteps):
            raise InvalidInput(
                f"start_step must be between 0 and {len(timesteps)} for {num_steps} {name} "
                f"steps, got {start_step}"
            )
        timesteps = timesteps[start_step:]
    if not timesteps:
        return x
    extra = {"threshold": p_threshold} if name == "p_sampler" else {}
    return SAMPLERS[name](
        model,
        x,
        timesteps,
        schedule,
        noise_sampler=noise_sampler if noise_sampler is not None else torch.randn_like,
        denoised_fn=denoised_fn,
        callback=callback,
        **extra,
    )


def plan_img2img(
    sampler: str,
    num_steps: int,
    strength: float,
    convention: Literal["original", "diffusers"] = "original",
) -> tuple[int, int]:
    """(start_step for `sample`, timestep t_noise to `q_sample` the init latent to).

    convention="original" (`generate_img2img`): strength is the fraction of the schedule
    *skipped* (higher ⇒ closer to the input). start = int(T_s·(1 − strength)) with T_s = 1000
    for the DDIM-plan samplers (ddim, plms, dpmpp_2m, euler_a), which keep the plan's
    timesteps ≤ start, and T_s = num_steps for p_sampler, which keeps respaced indices
    start−1 … 0; t_noise = timestep_map[start − 1] (start − 1 for the DDIM plan). ddim, N=100,
    strength 0.7 → (70, 299): 30 steps 291 … 1.

    convention="diffusers" (`KandinskyImg2ImgPipeline`): strength is the fraction *run*:
    the last min(int(n·strength), n) steps of the n-step plan run, t_noise = int(1000·strength) − 2.
    N=100, strength 0.3 → (70, 298).

    Both noise with `img2img_schedule()` (the original's q_sample bug). Degenerate ends, where
    nothing runs (original strength 1, diffusers int(n·strength) = 0), return t_noise = 0 instead
    of the originals' negative index (original: t 999; diffusers: t 998), so the input comes back.
    """
    name = resolve_sampler(sampler)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise InvalidInput(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise InvalidInput(f"strength must be in [0, 1], got {strength}")
    if convention not in ("original", "diffusers"):
        raise InvalidInput(f"convention must be 'original' or 'diffusers', got {convention!r}")
    plan = sampler_timesteps(name, num_steps)
    if convention == "diffusers":
        run = min(int(len(plan) * strength), len(plan))
        t_noise = max(int(NUM_TRAIN_TIMESTEPS * strength) - 2, 0) if run > 0 else 0
        return len(plan) - run, t_noise
    if name == "p_sampler":
        start = int(len(plan) * (1 - strength))  # respaced diffusion: num_timesteps = num_steps
        t_noise = plan[::-1][start - 1] if start > 0 else 0
        return len(plan) - start, t_noise
    start = int(NUM_TRAIN_TIMESTEPS * (1 - strength))  # un-respaced diffusion: 1000
    kept = sum(1 for t in plan if t <= start)
    return len(plan) - kept, start - 1 if start > 0 else 0
