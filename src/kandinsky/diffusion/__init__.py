"""Diffusion processes and samplers: schedules, decoder samplers, prior sampler, guidance."""

from kandinsky.diffusion.prior_sampler import PriorModel, prior_timesteps, sample_prior
from kandinsky.diffusion.samplers import (
    SAMPLERS,
    Callback,
    DecoderModel,
    NoiseSampler,
    plan_img2img,
    resolve_sampler,
    sample,
    sampler_timesteps,
)
from kandinsky.diffusion.schedules import (
    Schedule,
    ddim_timesteps,
    decoder_schedule,
    img2img_schedule,
    prior_schedule,
    q_sample,
    space_timesteps,
)

__all__ = [
    "SAMPLERS",
    "Callback",
    "DecoderModel",
    "NoiseSampler",
    "PriorModel",
    "Schedule",
    "ddim_timesteps",
    "decoder_schedule",
    "img2img_schedule",
    "plan_img2img",
    "prior_schedule",
    "prior_timesteps",
    "q_sample",
    "resolve_sampler",
    "sample",
    "sample_prior",
    "sampler_timesteps",
    "space_timesteps",
]
