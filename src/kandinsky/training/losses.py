"""Training losses of Kandinsky 2.1, as pure functions (reference §4.5, §7).

- decoder: `mse(eps) + vb` (guided-diffusion's RESCALED_MSE with LEARNED_RANGE variance); the
  vb term is the KL, in bits, between the true posterior q(x_{t-1} | x_t, x0) and the model's
  Gaussian, with the mean built from a stop-gradient eps so that only the variance learns from
  it; at t = 0 it is the discretized-Gaussian NLL of x0 instead.
- prior: plain MSE on the x0 prediction in normalized CLIP space.
- decoder, optional: `pixel_loss`, the decoded x0 against the image, on low-noise samples.
- MoVQ: L1 reconstruction + codebook loss (+ optional perceptual and hinge-GAN terms).

Coefficient tables are computed in float64 from the `Schedule` and cast to the data's dtype
after indexing, as the original does with numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kandinsky.diffusion.schedules import NUM_TRAIN_TIMESTEPS, Schedule
from kandinsky.models.clip import encode_image
from kandinsky.training.discriminator import adaptive_gan_weight

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------- diffusion helpers


def _take(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] (float64 on the CPU) as a (B, 1, …, 1) tensor in like's dtype and device."""
    values = table[t.detach().long().cpu()].to(device=like.device, dtype=like.dtype)
    return values.view(-1, *([1] * (like.ndim - 1)))


def diffuse(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · noise with a timestep per sample (t: (B,) integers)."""
    alpha_bar = schedule.alphas_cumprod
    return _take(alpha_bar.sqrt(), t, x0) * x0 + _take((1 - alpha_bar).sqrt(), t, x0) * noise


def _posterior_tables(schedule: Schedule) -> dict[str, torch.Tensor]:
    """q(x_{t-1} | x_t, x0) coefficients for every t (float64)."""
    betas, alpha_bar = schedule.betas, schedule.alphas_cumprod
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    # β̃_0 = 0: its log is replaced by log β̃_1, as in guided-diffusion ("clipped")
    log_variance = torch.log(torch.cat([variance[1:2], variance[1:]]))
    return {
        "mean_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
        "mean_xt": (1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar),
        "log_variance": log_variance,
        "log_beta": betas.log(),
        "recip_sqrt_alpha_bar": (1 / alpha_bar).sqrt(),
        "sqrt_recip_m1_alpha_bar": (1 / alpha_bar - 1).sqrt(),
    }


def normal_kl(
    mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) ‖ N(mean2, e^log_var2)) per element, in nats."""
    return 0.5 * (
        log_var2
        - log_var1
        + torch.exp(log_var1 - log_var2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
        - 1.0
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))): the approximation guided-diffusion uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_nll(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """−log P(x) per element, in nats, for x on the 256-level grid of [−1, 1].

    Each value owns the bin x ± 1/255 under N(mean, e^{2·log_scale}); the outermost bins
    extend to ±∞ (x < −0.999 or x > 0.999), as in DDPM / guided-diffusion.
    """
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    cdf_minus = _approx_standard_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta)
    )
    return -log_probs


def learned_range_log_variance(
    v: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    tables: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """log σ² = f · log β_t + (1 − f) · log β̃_t with f = (v + 1)/2 (v = the UNet's channels 4:8)."""
    tables = tables or _posterior_tables(schedule)
    frac = (v + 1) / 2
    return frac * _take(tables["log_beta"], t, v) + (1 - frac) * _take(tables["log_variance"], t, v)


def predicted_x0(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    tables: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """x0 = (x_t − √(1 − ᾱ_t) · eps) / √ᾱ_t, the clean latent an eps prediction implies."""
    tables = tables or _posterior_tables(schedule)
    return (
        _take(tables["recip_sqrt_alpha_bar"], t, x_t) * x_t
        - _take(tables["sqrt_recip_m1_alpha_bar"], t, x_t) * eps
    )


def vb_term(
    eps: torch.Tensor,
    v: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
) -> torch.Tensor:
    """Per-sample variational-bound term in bits: KL(q(x_{t-1}|x_t,x0) ‖ p(x_{t-1}|x_t)) for t > 0,
    the discretized-Gaussian NLL of x0 under p(x_0|x_1) for t = 0.

    The model mean comes from `eps` as given: the caller detaches it (stop-gradient) so that
    this term only trains the variance. No clipping of the x0 estimate (clip_denoised=False).
    """
    tables = _posterior_tables(schedule)
    pred_x0 = predicted_x0(eps, x_t, t, schedule, tables)
    coef_x0, coef_xt = _take(tables["mean_x0"], t, x_t), _take(tables["mean_xt"], t, x_t)
    model_mean = coef_x0 * pred_x0 + coef_xt * x_t
    model_log_var = learned_range_log_variance(v, t, schedule, tables)
    true_mean = coef_x0 * x0 + coef_xt * x_t
    true_log_var = _take(tables["log_variance"], t, x_t)

    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / LN2
    nll = discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / LN2
    return torch.where(t.to(kl.device) == 0, nll, kl)


# ---------------------------------------------------------------------------- losses


def decoder_loss(
    unet_out: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    snr_gamma: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RESCALED_MSE of the original: mean over the batch of mse(eps) + vb.

    `unet_out` (B, 2C, h, w) = [eps; v]; the vb term is scaled by T/1000 (= 1 for T = 1000).
    `snr_gamma`: Min-SNR-γ weighting of the mse term (`min_snr_weights`); None = the original.
    Returns the scalar loss and float logs {"mse", "vb"} (the unweighted mse).
    """
    channels = x_t.shape[1]
    if unet_out.shape[1] != 2 * channels:
        raise ValueError(
            f"the decoder loss needs eps and variance channels ({2 * channels}), got {unet_out.shape[1]}"
        )
    unet_out, x_t, x0, noise = (a.float() for a in (unet_out, x_t, x0, noise))
    eps, v = unet_out[:, :channels], unet_out[:, channels:]
    mse = (noise - eps).pow(2).flatten(1).mean(1)
    vb = vb_term(eps.detach(), v, x_t, x0, t, schedule) * (
        schedule.num_timesteps / NUM_TRAIN_TIMESTEPS
    )
    weight = 1.0 if snr_gamma is None else min_snr_weights(t, schedule, snr_gamma).to(mse)
    loss = (weight * mse + vb).mean()
    return loss, {"mse": float(mse.detach().mean()), "vb": float(vb.detach().mean())}


def pixel_loss(
    decode: Callable[[torch.Tensor], torch.Tensor],
    unet_out: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    images: torch.Tensor,
    schedule: Schedule,
    max_t: int,
    max_samples: int,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    embed_weight: float = 0.0,
) -> torch.Tensor:
    """MSE between `images` and the decoded x0 that the eps prediction implies, in pixels.

    Only for samples with t < `max_t` (at higher noise x0 is a blur by design), at most
    `max_samples` of them (each costs a pass through the image decoder and back). A latent
    MSE weighs every latent value alike, while the image decoder is far more sensitive to
    some: a star differs from a diamond by a few hundredths of the latent's norm, which the
    decoder turns into five points. Zero (with a graph) when no sample qualifies.

    `embed` (images in [−1, 1] → embeddings, e.g. the frozen CLIP image tower) and
    `embed_weight` > 0 add `embed_weight` · (1 − cosine) between the embeddings of the decoded
    x0 (clamped to [−1, 1]) and of the image: squared error weighs a star's points by their
    few pixels, the embedding by what kind of shape they make.
    """
    rows = torch.nonzero(t < max_t).flatten()[:max_samples].to(unet_out.device)
    if rows.numel() == 0:
        return unet_out.sum() * 0.0
    channels = x_t.shape[1]
    eps = unet_out[rows, :channels].float()
    x0 = predicted_x0(eps, x_t[rows].float(), t[rows.cpu()], schedule)
    decoded = decode(x0).float()
    target = images[rows].to(decoded)
    loss = F.mse_loss(decoded, target)
    if embed is not None and embed_weight > 0:
        with torch.no_grad():
            wanted = embed(target).float()
        got = embed(decoded.clamp(-1, 1)).float()
        loss = loss + embed_weight * (1 - F.cosine_similarity(got, wanted, dim=-1)).mean()
    return loss


def min_snr_weights(t: torch.Tensor, schedule: Schedule, gamma: float) -> torch.Tensor:
    """min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t / (1 − ᾱ_t): Min-SNR-γ for eps prediction.

    Hang et al. 2023 ("Efficient Diffusion Training via Min-SNR Weighting Strategy"): the
    nearly clean steps, whose eps targets are large but teach only fine detail, stop
    dominating the gradient, so layout and shape (decided at high noise) converge several
    times faster; γ = 5 is their default. Weights are 1 wherever SNR ≤ γ.
    """
    if gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0, got {gamma}")
    alpha_bar = schedule.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1.0 - alpha_bar)
    return (snr.clamp(max=gamma) / snr).float()


def prior_loss(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The prior predicts x0 in normalized CLIP space: plain MSE (no variational term)."""
    return F.mse_loss(x0_pred.float(), x0.float())


def movq_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    vq_loss: torch.Tensor,
    disc_logits: torch.Tensor | None = None,
    *,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    perceptual_weight: float = 1.0,
    disc_weight: float = 0.8,
    last_layer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction (+ perceptual) + codebook/commitment loss (+ hinge generator term).

    `disc_logits` are a discriminator's logits on `recon`; the generator side of the hinge
    GAN is −mean(logits), weighted by `disc_weight` and, when `last_layer` (the decoder's
    output conv weight) is given, by VQGAN's adaptive balance against the reconstruction
    (`discriminator.adaptive_gan_weight`). `perceptual(recon, target)` is any LPIPS-like
    distance (per sample or scalar). Returns the scalar loss and float logs.
    """
    recon, target = recon.float(), target.float()
    l1 = (recon - target).abs().mean()
    reconstruction = l1
    logs = {"l1": float(l1.detach()), "vq": float(vq_loss.detach())}
    if perceptual is not None:
        p = perceptual(recon, target).float().mean()
        reconstruction = reconstruction + perceptual_weight * p
        logs["perceptual"] = float(p.detach())
    loss = reconstruction + vq_loss.float()
    if disc_logits is not None:
        g = -disc_logits.float().mean()
        weight = disc_weight
        if last_layer is not None:
            weight = disc_weight * adaptive_gan_weight(reconstruction, g, last_layer)
        loss = loss + weight * g
        logs["gan"] = float(g.detach())
        logs["gan_weight"] = float(weight)
    return loss, logs


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's side of the hinge GAN: mean relu(1 − real) + mean relu(1 + fake), halved."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


# ---------------------------------------------------------------------------- CLIP input


def clip_pixels(
    images: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Images (B, 3, H, W) in [−1, 1] → the CLIP image tower's input (B, 3, size, size).

    The tensor path of `imaging.clip_preprocess`: shortest side to `size` (bicubic,
    antialiased like PIL), centre crop, [0, 1], normalize. Close to, not bit-equal with,
    the PIL path (PIL rounds to 8 bits in between).
    """
    images = (images.float() + 1) / 2
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(
            images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[..., top : top + size, left : left + size].clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_image_embeds(parts: Any, images: torch.Tensor) -> torch.Tensor:
    """Raw CLIP image embeddings of images (B, 3, H, W) in [−1, 1] by `parts.clip_vision`,
    differentiable w.r.t. the images (the caller decides on no_grad)."""
    clip, vision = parts.config.clip, parts.clip_vision
    pixels = clip_pixels(images, clip.vision.image_size, clip.image_mean, clip.image_std)
    return encode_image(vision, pixels.to(next(vision.parameters()).device))
