"""Noise schedules and timestep plans of Kandinsky 2.1 (reference §3.4, §4.5, §4.6, §1.4).

Everything here is float64 on the CPU, as in the original `gaussian_diffusion.py`; samplers
read per-step coefficients from it as Python floats, so they work for any dtype and device.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from kandinsky.errors import InvalidInput

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Schedule:
    """A discrete variance-preserving process: β_t and ᾱ_t = Π_{s≤t} (1 − β_s), t = 0…T−1."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> Schedule:
        betas = betas.to(torch.float64).cpu()
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float (float64)."""
        return float(self.alphas_cumprod[t])


def _linear(beta_start: float, beta_end: float, num_timesteps: int) -> Schedule:
    # numpy's linspace, as the original `get_named_beta_schedule("linear")`, so betas match bit for bit
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    return Schedule.from_betas(torch.from_numpy(betas))


def decoder_schedule(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Schedule:
    """Decoder: β linear 0.00085 → 0.012 (scaled by 1000/T), linear in β, not in √β."""
    scale = NUM_TRAIN_TIMESTEPS / num_timesteps
    return _linear(0.00085 * scale, 0.012 * scale, num_timesteps)


def prior_schedule(num_timesteps: int = NUM_TRAIN_TIMESTEPS, max_beta: float = 0.999) -> Schedule:
    """Prior: cosine ᾱ(s) = cos²((s + 0.008)/1.008 · π/2), β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return Schedule.from_betas(torch.tensor(betas, dtype=torch.float64))


def img2img_schedule(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Schedule:
    """The schedule img2img really noises with: DDPM's default linear 0.0001 → 0.02.

    The original `utils.q_sample` rebuilds betas with `get_named_beta_schedule("linear", 1000)`,
    whose defaults are not the decoder's 0.00085 → 0.012 (a bug that diffusers' img2img copies in
    its own `add_noise`); we replicate it by default. Reference §1.4.
    """
    scale = NUM_TRAIN_TIMESTEPS / num_timesteps
    return _linear(0.0001 * scale, 0.02 * scale, num_timesteps)


def _check_steps(num_timesteps: int, num_steps: int) -> None:
    if not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool):
        raise InvalidInput(f"num_steps must be an integer, got {num_steps!r}")
    if not 1 <= num_steps <= num_timesteps:
        raise InvalidInput(f"num_steps must be between 1 and {num_timesteps}, got {num_steps}")


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """The original respacing `space_timesteps(T, "N")`, ascending.

    One section; a float stride (T−1)/(N−1) accumulated and rounded with Python's round
    (half to even), so some N differ by one step from `round(k·(T−1)/(N−1))`.
    """
    _check_steps(num_timesteps, num_steps)
    num_steps = int(num_steps)
    stride = (num_timesteps - 1) / (num_steps - 1) if num_steps > 1 else 1.0
    steps, position = [], 0.0
    for _ in range(num_steps):
        steps.append(round(position))
        position += stride  # accumulated, not multiplied: that is what the original does
    return sorted(set(steps))


def ddim_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """The original "ddimN" plan `range(0, T, T // N) + 1`, ascending, without t ≥ T.

    Equals diffusers' DDIM "leading" spacing with steps_offset 1 when N divides T; otherwise the
    stride T // N gives up to ceil(T / stride) steps (N=150 → 167 steps, t = 1…997). Where the
    original plans t = T (e.g. N = 3 or N > 500) it indexes past the schedule and crashes; that
    step is dropped here, which is what diffusers' plan amounts to.
    """
    _check_steps(num_timesteps, num_steps)
    stride = num_timesteps // int(num_steps)
    return [t + 1 for t in range(0, num_timesteps, stride) if t + 1 < num_timesteps]


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · noise (coefficients in float64, applied in x0's dtype)."""
    if not 0 <= t < schedule.num_timesteps:
        raise InvalidInput(f"timestep must be in [0, {schedule.num_timesteps - 1}], got {t}")
    alpha_bar = schedule.alpha_bar(t)
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise.to(x0)
