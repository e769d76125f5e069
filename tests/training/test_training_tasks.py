"""Training tasks, losses and masks on the tiny model: each trainer overfits a few images.

Overfit tests use AdamW with a large lr and, except for the one through `train()`, the same
generator seed every step (same timesteps, noise, dropouts and masks), and state the factor
by which the mean loss of the last 5 steps must be below that of the first 5.
"""

from __future__ import annotations

import csv
import math
import types
from pathlib import Path

import pytest
import torch

from kandinsky import engine
from kandinsky.diffusion.schedules import decoder_schedule
from kandinsky.errors import InvalidInput
from kandinsky.imaging import clip_preprocess, tensor_to_pil
from kandinsky.loading import load
from kandinsky.testing import write_tiny_model
from kandinsky.training.config import DataConfig, OptimConfig, TrainConfig
from kandinsky.training.discriminator import PatchDiscriminator, adaptive_gan_weight
from kandinsky.training.loop import train
from kandinsky.training.lora import lora_state_dict, read_lora
from kandinsky.training.losses import (
    clip_pixels,
    decoder_loss,
    diffuse,
    discretized_gaussian_nll,
    min_snr_weights,
    movq_loss,
    pixel_loss,
    predicted_x0,
    prior_loss,
    vb_term,
)
from kandinsky.training.masks import KINDS, random_mask
from kandinsky.training.tasks import TaskOptions, make_task

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "two stars"]
CPU = types.SimpleNamespace(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def images(n: int, size: int) -> torch.Tensor:
    """Distinct flat-colour images with a band, in [-1, 1]."""
    x = torch.full((n, 3, size, size), -0.6)
    for i in range(n):
        x[i, i % 3] = 0.7
        x[i, :, (i * size) // n : ((i + 1) * size) // n, size // 4 :] = 0.2 * (i - 1)
    return x


def batch(n: int = 2, size: int = 64) -> dict:
    return {"image": images(n, size), "caption": CAPTIONS[:n], "key": [str(i) for i in range(n)]}


def config(task: str, model: str | Path, tmp_path: Path, size: int = 64, **kw) -> TrainConfig:
    return TrainConfig(
        task=task,
        model=str(model),
        output_dir=str(tmp_path / "out"),
        data=DataConfig(source="<memory>", image_size=size),
        **kw,
    )


def overfit(task, data: dict, steps: int, lr: float) -> list[float]:
    """A minimal loop: same generator seed each step, AdamW."""
    params = [p for p in task.trainable().parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, logs = task.loss(data, torch.Generator().manual_seed(1))
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in logs.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def fell_by(losses: list[float]) -> float:
    return (sum(losses[:5]) / 5) / (sum(losses[-5:]) / 5)


# ---------------------------------------------------------------------------- overfitting


def test_decoder_overfits_two_images_with_resblocks_frozen(tiny_model, tmp_path):
    cfg = config("decoder", tiny_model, tmp_path)
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    unet = task.net
    frozen = unet.down_blocks[0].resnets[0].conv1.weight.detach().clone()
    shortcut = unet.up_blocks[0].resnets[0].conv_shortcut.weight  # the 1×1 skip trains
    assert not unet.down_blocks[0].resnets[0].conv1.weight.requires_grad
    assert not unet.mid_block.resnets[0].time_emb_proj.weight.requires_grad
    assert shortcut.requires_grad and unet.mid_block.attentions[0].to_q.weight.requires_grad

    losses = overfit(task, batch(), steps=20, lr=1e-3)
    assert fell_by(losses) >= 2.0, losses
    assert torch.equal(unet.down_blocks[0].resnets[0].conv1.weight, frozen)


def test_inpaint_overfits_two_images_with_masked_latents(tiny_model, tmp_path):
    cfg = config("inpaint", tiny_model, tmp_path)
    task = make_task("inpaint", cfg)
    task.setup(cfg, CPU)
    assert task.net.config.in_channels == 9

    x0 = torch.randn(3, 4, 8, 8)
    extra = task.extra_channels(x0, torch.Generator().manual_seed(3))
    keep = extra[:, 4:]
    assert set(keep.unique().tolist()) <= {0.0, 1.0} and 0 < keep.mean() < 1
    torch.testing.assert_close(extra[:, :4], x0 * keep)  # the inference convention: 1 = keep

    losses = overfit(task, batch(), steps=20, lr=1e-3)
    assert fell_by(losses) >= 2.0, losses


def test_prior_overfits_through_the_real_train_loop(tiny_model, tmp_path):
    cfg = config(
        "prior",
        tiny_model,
        tmp_path,
        optim=OptimConfig(name="adamw", lr=1e-3),
        batch_size=4,
        max_steps=30,
        checkpoint_every=1000,
        log_every=10,
    )
    data = batch(4)
    items = [{"image": data["image"][i], "caption": CAPTIONS[i], "key": str(i)} for i in range(4)]
    task = make_task("prior", cfg)
    result = train(cfg, task, dataset=items)
    assert len(result.losses) == 30
    assert fell_by(result.losses) >= 5.0, result.losses  # the loop varies t and noise per step
    assert not task.net.clip_mean.requires_grad  # the CLIP statistics are not trained

    reloaded = load(result.output_dir / "final", components=["prior"]).prior
    for name, value in task.net.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0)


def test_movq_overfits_two_images(tiny_model, tmp_path):
    cfg = config("movq", tiny_model, tmp_path, size=16, task_options={"quantize": False})
    task = make_task("movq", cfg)
    task.setup(cfg, CPU)
    losses = overfit(task, batch(2, 16), steps=30, lr=2e-3)
    assert fell_by(losses) >= 2.0, losses
    paths = task.sample(30, tmp_path / "samples")  # input | reconstruction pairs
    assert len(paths) == 2 and all(p.is_file() for p in paths)


def test_movq_reconstructs_through_the_codebook_by_default(tiny_model, tmp_path):
    cfg = config("movq", tiny_model, tmp_path, size=16)
    task = make_task("movq", cfg)
    task.setup(cfg, CPU)
    loss, logs = task.loss(batch(2, 16), torch.Generator().manual_seed(0))
    loss.backward()
    assert logs["vq"] > 0 and task.net.quantize.embedding.weight.grad is not None


def test_patch_discriminator_scores_patches_and_adaptive_weight_balances_gradients():
    disc = PatchDiscriminator(3, width=8, layers=3)
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # one logit per patch
    assert disc.min_size() == 24 and disc(torch.randn(5, 3, 24, 24)).shape == (5, 1, 1, 1)

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec, gan = (w * 3).sum(), (w * w).sum()  # ∇rec = (3, 3), ∇gan = 2w = (2, 4)
    weight = adaptive_gan_weight(rec, gan, w)
    torch.testing.assert_close(weight, torch.tensor(18**0.5 / (20**0.5 + 1e-4)))
    assert not weight.requires_grad


def _movq_gan_cfg(model, tmp_path, name, max_steps, **options):
    return config(
        "movq",
        model,
        tmp_path / name,
        size=16,
        optim=OptimConfig(name="adamw", lr=1e-3),
        batch_size=2,
        max_steps=max_steps,
        checkpoint_every=2,
        log_every=1,
        task_options={
            "quantize": False,
            "disc_weight": 0.8,
            "disc_start": 2,
            "disc_width": 8,
            "disc_layers": 2,
            **options,
        },
    )


def _movq_items():
    data = batch(4, 16)
    return [{"image": data["image"][i], "caption": "", "key": str(i)} for i in range(4)]


def test_movq_discriminator_too_deep_for_the_image_size_is_refused(tiny_model, tmp_path):
    cfg = _movq_gan_cfg(tiny_model, tmp_path, "deep", 1, disc_layers=3)
    with pytest.raises(InvalidInput, match="at least 24 px.*disc_layers"):
        make_task("movq", cfg).setup(cfg, CPU)


def test_movq_generator_loss_leaves_the_discriminator_alone(tiny_model, tmp_path):
    cfg = _movq_gan_cfg(tiny_model, tmp_path, "g", 1, disc_start=0)
    task = make_task("movq", cfg)
    task.setup(cfg, CPU)
    loss, logs = task.loss(batch(2, 16), torch.Generator().manual_seed(0))
    loss.backward()
    assert logs["gan_weight"] > 0 and "gan" in logs
    assert all(p.grad is None for p in task.adversary().parameters())
    assert task.net.decoder.conv_out.weight.grad is not None
    d_loss, d_logs = task.adversary_loss()
    d_loss.backward()
    assert all(p.grad is not None for p in task.adversary().parameters())
    assert {"disc", "logits_real", "logits_fake"} <= d_logs.keys()


def test_movq_adversary_trains_from_its_start_step_and_resumes_exactly(tiny_model, tmp_path):
    from safetensors.torch import load_file

    straight_task = make_task("movq", _movq_gan_cfg(tiny_model, tmp_path, "straight", 4))
    start = {k: v.clone() for k, v in _disc_state(tiny_model, tmp_path).items()}
    train(_movq_gan_cfg(tiny_model, tmp_path, "straight", 4), straight_task, dataset=_movq_items())
    after = straight_task.adversary().state_dict()
    assert any(not torch.equal(after[k], v) for k, v in start.items())
    with open(tmp_path / "straight" / "out" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [bool(r["disc"]) for r in rows] == [False, False, True, True]  # from disc_start on
    assert all(r["gan"] and r["logits_real"] for r in rows[2:]) and rows[0]["l1"]

    first = make_task("movq", _movq_gan_cfg(tiny_model, tmp_path, "resumed", 2))
    train(_movq_gan_cfg(tiny_model, tmp_path, "resumed", 2), first, dataset=_movq_items())
    untouched = first.adversary().state_dict()  # steps 0 and 1 are before disc_start
    assert all(torch.equal(untouched[k], v) for k, v in start.items())
    checkpoint = tmp_path / "resumed" / "out" / "checkpoints" / "step-000002"
    assert (checkpoint / "model_1.safetensors").is_file()  # the discriminator is checkpointed
    second = make_task("movq", _movq_gan_cfg(tiny_model, tmp_path, "resumed", 4))
    train(_movq_gan_cfg(tiny_model, tmp_path, "resumed", 4), second, dataset=_movq_items())

    resumed = second.adversary().state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in after.items())
    weights = "final/movq/diffusion_pytorch_model.safetensors"
    a = load_file(tmp_path / "straight" / "out" / weights)
    b = load_file(tmp_path / "resumed" / "out" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_trains_the_same_decoder_and_exports_plain_weights(tiny_model, tmp_path):
    from safetensors.torch import load_file

    data = batch(2)
    items = [{"image": data["image"][i], "caption": CAPTIONS[i], "key": str(i)} for i in range(2)]
    exported, layouts, losses = {}, {}, {}
    for order in (True, False):
        out = tmp_path / str(order)
        cfg = config(
            "decoder",
            tiny_model,
            out,
            optim=OptimConfig(name="adamw", lr=1e-3),
            batch_size=2,
            max_steps=3,
            checkpoint_every=2,
            channels_last=order,
        )
        task = make_task("decoder", cfg)
        losses[order] = torch.tensor(train(cfg, task, dataset=items).losses)
        conv = task.net.conv_in.weight
        layouts[order] = conv.is_contiguous(memory_format=torch.channels_last) and not (
            conv.is_contiguous()
        )
        exported[order] = load_file(
            out / "out" / "final" / "unet" / "diffusion_pytorch_model.safetensors"
        )
    assert layouts == {True: True, False: False}
    assert all(value.is_contiguous() for value in exported[True].values())
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=0)
    # the same training up to float rounding, which Adam lifts to a share of one step (lr 1e-3)
    # where a gradient is nearly zero: a handful of weights, never most
    diff = torch.cat([(exported[True][k] - v).abs().flatten() for k, v in exported[False].items()])
    assert (diff > 1e-5).float().mean() < 0.01 and diff.max() < 1e-3


def _disc_state(model, tmp_path):
    cfg = _movq_gan_cfg(model, tmp_path, "probe", 1)
    task = make_task("movq", cfg)
    task.setup(cfg, CPU)
    return task.adversary().state_dict()


def test_lora_on_the_prior_overfits_and_saves_only_the_adapter(tiny_model, tmp_path):
    cfg = config("lora", tiny_model, tmp_path, task_options={"lora_network": "prior"})
    task = make_task("lora", cfg)
    task.setup(cfg, CPU)
    base = {k: v.clone() for k, v in task.net.state_dict().items() if "lora_" not in k}
    losses = overfit(task, batch(), steps=20, lr=1e-2)
    assert fell_by(losses) >= 2.0, losses
    after = task.net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())

    task.save_weights(tmp_path / "final", task.trainable().state_dict())
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["lora.safetensors"]
    _, saved = read_lora(tmp_path / "final" / "lora.safetensors")
    expected = lora_state_dict(task.net)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], v) for k, v in expected.items())


def test_lora_on_the_decoder_trains_only_attention_adapters(tiny_model, tmp_path):
    cfg = config("lora", tiny_model, tmp_path, task_options={"lora_rank": 8})
    task = make_task("lora", cfg)
    task.setup(cfg, CPU)
    trainable = [n for n, p in task.trainable().named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert any("add_k_proj.lora_A" in n for n in trainable)
    losses = overfit(task, batch(), steps=6, lr=1e-2)
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------------------- task plumbing


def test_decoder_weights_export_and_load_back(tiny_model, tmp_path):
    cfg = config("decoder", tiny_model, tmp_path)
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    overfit(task, batch(), steps=1, lr=1e-3)
    task.save_weights(tmp_path / "final", task.trainable().state_dict())
    parts = load([tmp_path / "final", tiny_model], components=["unet", "movq"])
    assert parts.sources["unet"].startswith(str(tmp_path / "final"))
    for name, value in task.net.state_dict().items():
        assert torch.equal(parts.unet.state_dict()[name], value), name


def test_decoder_samples_with_the_current_weights(tiny_model, tmp_path):
    options = {"sample_steps": 2, "sample_prior_steps": 2}
    cfg = config("decoder", tiny_model, tmp_path, sample_prompts=["a cat"], task_options=options)
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    paths = task.sample(7, tmp_path / "samples")  # prior and CLIP text load on first use
    assert [p.name for p in paths] == ["decoder-0000007-0.png"] and paths[0].is_file()
    assert task.net.training  # back in training mode

    task.cfg = config("decoder", tiny_model, tmp_path)  # no sample_prompts
    assert task.sample(8, tmp_path / "none") == []


def test_dropped_image_is_the_zero_image_embedding_and_dropped_text_is_empty(tiny_model, tmp_path):
    options = {"drop_text_prob": 1.0, "drop_image_prob": 1.0}
    cfg = config("decoder", tiny_model, tmp_path, task_options=options)
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    x = images(2, 64)
    dropped = task._clip_embeds(x, {"key": ["a", "b"]}, torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], engine.zero_image_embeds(task.parts, 1)[0])
    assert not torch.allclose(dropped[1], dropped[0])

    from kandinsky.training.tasks import _drop_captions

    g = torch.Generator().manual_seed(0)
    assert _drop_captions(CAPTIONS, 1.0, g) == [""] * 4
    assert _drop_captions(CAPTIONS, 0.0, g) == CAPTIONS


def test_scratch_tiny_needs_no_files(tmp_path):
    cfg = config("decoder", "scratch:tiny", tmp_path)
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    loss, logs = task.loss(batch(), torch.Generator().manual_seed(0))
    assert math.isfinite(loss.item())
    assert logs["mse"] == pytest.approx(1.0, abs=0.3)  # zero-initialised output: eps ≈ 0


def test_task_options_are_checked():
    assert TaskOptions.from_dict({"lora_targets": "to_q,to_v"}).lora_targets == ("to_q", "to_v")
    with pytest.raises(InvalidInput, match="unknown task option"):
        TaskOptions.from_dict({"drop_txt_prob": 0.1})
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        TaskOptions.from_dict({"drop_image_prob": 1.5})
    with pytest.raises(InvalidInput, match="snr_gamma must be > 0"):
        TaskOptions.from_dict({"snr_gamma": 0})
    with pytest.raises(InvalidInput, match="pixel_weight must be ≥ 0"):
        TaskOptions.from_dict({"pixel_weight": -1.0})
    with pytest.raises(InvalidInput, match="clip_weight must be ≥ 0"):
        TaskOptions.from_dict({"clip_weight": -1.0, "pixel_weight": 1.0})
    with pytest.raises(InvalidInput, match="set pixel_weight > 0 too"):
        TaskOptions.from_dict({"clip_weight": 0.3})
    with pytest.raises(InvalidInput, match="unknown"):
        make_task("vae", types.SimpleNamespace(task_options={}))


def test_clip_pixels_match_the_pil_preprocessing():
    y, x = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 64), indexing="ij")
    image = torch.stack([x, y, x * y])[None] * 0.8  # smooth, so resampling filters agree
    ours = clip_pixels(image, 32, (0.48, 0.45, 0.40), (0.27, 0.26, 0.27))
    reference = clip_preprocess(tensor_to_pil(image), 32, (0.48, 0.45, 0.40), (0.27, 0.26, 0.27))
    assert ours.shape == reference.shape == (1, 3, 32, 32)
    assert (ours - reference).abs().max() < 0.1  # < 7 of 255 levels after normalization


# ---------------------------------------------------------------------------- losses


def test_vb_term_equals_a_hand_computed_kl():
    schedule = decoder_schedule()
    t, x0_value, noise_value, eps_value, v_value = 500, 0.3, -0.7, -0.5, 0.2
    betas = schedule.betas.tolist()
    alpha_bar = schedule.alphas_cumprod.tolist()
    ab, ab_prev, beta = alpha_bar[t], alpha_bar[t - 1], betas[t]
    x_t = math.sqrt(ab) * x0_value + math.sqrt(1 - ab) * noise_value
    posterior_var = beta * (1 - ab_prev) / (1 - ab)
    c0 = beta * math.sqrt(ab_prev) / (1 - ab)
    ct = (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
    true_mean = c0 * x0_value + ct * x_t
    pred_x0 = (x_t - math.sqrt(1 - ab) * eps_value) / math.sqrt(ab)
    model_mean = c0 * pred_x0 + ct * x_t
    frac = (v_value + 1) / 2
    model_log_var = frac * math.log(beta) + (1 - frac) * math.log(posterior_var)
    kl = 0.5 * (
        model_log_var
        - math.log(posterior_var)
        + posterior_var / math.exp(model_log_var)
        + (true_mean - model_mean) ** 2 / math.exp(model_log_var)
        - 1
    )
    expected = kl / math.log(2)

    def full(value: float) -> torch.Tensor:
        return torch.full((1, 1, 2, 2), value, dtype=torch.float64)

    got = vb_term(
        full(eps_value), full(v_value), full(x_t), full(x0_value), torch.tensor([t]), schedule
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_vb_term_is_zero_when_the_model_matches_the_posterior():
    schedule = decoder_schedule()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 300, 999])
    x_t = diffuse(x0, t, noise, schedule)
    v = torch.full_like(x0, -1.0)  # variance = the posterior's β̃_t
    assert vb_term(noise, v, x_t, x0, t, schedule).abs().max() < 1e-4
    assert vb_term(noise + 0.5, v, x_t, x0, t, schedule).min() > 0


def test_vb_term_at_t0_is_the_discretized_gaussian_nll():
    schedule = decoder_schedule()
    x0 = torch.tensor([-1.0, -0.2, 0.0, 0.5, 1.0]).view(1, 5, 1, 1)
    mean, log_scale = x0 + 0.01, torch.full_like(x0, math.log(0.05))
    nll = discretized_gaussian_nll(x0, mean, log_scale)
    normal = torch.distributions.Normal(mean, log_scale.exp())
    inner = normal.cdf(x0 + 1 / 255) - normal.cdf(x0 - 1 / 255)
    exact = torch.where(
        x0 < -0.999,
        normal.cdf(x0 + 1 / 255),
        torch.where(x0 > 0.999, 1 - normal.cdf(x0 - 1 / 255), inner),
    )
    torch.testing.assert_close(nll, -exact.log(), rtol=1e-2, atol=1e-3)  # tanh-approximated Φ

    x_t = diffuse(x0, torch.tensor([0]), torch.zeros_like(x0), schedule)
    noise = torch.zeros_like(x0)
    term = vb_term(noise, torch.zeros_like(x0), x_t, x0, torch.tensor([0]), schedule)
    assert term.item() > 0


def test_decoder_loss_trains_the_mean_by_mse_and_the_variance_by_vb():
    schedule = decoder_schedule()
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 700])
    x_t = diffuse(x0, t, noise, schedule)
    out = torch.randn(2, 8, 8, 8, requires_grad=True)
    loss, logs = decoder_loss(out, x_t, x0, noise, t, schedule)
    loss.backward()
    eps_grad = 2 * (out[:, :4] - noise).detach() / (4 * 8 * 8) / 2  # only the mse term
    torch.testing.assert_close(out.grad[:, :4], eps_grad)
    assert out.grad[:, 4:].abs().sum() > 0
    assert loss.item() == pytest.approx(logs["mse"] + logs["vb"], rel=1e-5)


def test_min_snr_weighting_scales_the_nearly_clean_steps_only():
    schedule = decoder_schedule()
    t = torch.tensor([0, 10, 100, 999])
    alpha_bar = schedule.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weights = min_snr_weights(t, schedule, 5.0)
    torch.testing.assert_close(weights, (5.0 / snr).clamp(max=1.0).float())
    assert weights[0] < weights[1] < weights[2] <= 1.0 and weights[3] == 1.0  # SNR ≤ γ: 1

    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    x_t = diffuse(x0, t, noise, schedule)
    out = torch.randn(4, 8, 8, 8, requires_grad=True)
    loss, logs = decoder_loss(out, x_t, x0, noise, t, schedule, snr_gamma=5.0)
    loss.backward()
    per_image = 2 * (out[:, :4] - noise).detach() / (4 * 8 * 8) / 4
    torch.testing.assert_close(out.grad[:, :4], per_image * weights.view(4, 1, 1, 1))
    plain, _ = decoder_loss(out.detach(), x_t, x0, noise, t, schedule)
    assert loss.item() < plain.item()  # logs keep the unweighted mse
    assert logs["mse"] == pytest.approx(
        float((out.detach()[:, :4] - noise).pow(2).mean()), rel=1e-5
    )


def test_decoder_task_trains_with_min_snr_weighting(tiny_model, tmp_path):
    cfg = config("decoder", tiny_model, tmp_path, task_options={"snr_gamma": 5.0})
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    assert task.options.snr_gamma == 5.0
    losses = overfit(task, batch(), steps=20, lr=1e-3)
    assert fell_by(losses) >= 2.0, losses


def test_predicted_x0_undoes_the_forward_diffusion():
    schedule = decoder_schedule()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 250, 999])
    x_t = diffuse(x0, t, noise, schedule)
    torch.testing.assert_close(predicted_x0(noise, x_t, t, schedule), x0, atol=2e-4, rtol=1e-4)


def test_pixel_loss_decodes_only_low_noise_samples_up_to_the_cap():
    schedule = decoder_schedule()
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([10, 900, 100, 200])
    x_t = diffuse(x0, t, noise, schedule)
    decoded_rows = []

    def decode(latents: torch.Tensor) -> torch.Tensor:  # a stand-in "image decoder": 2× upsample
        decoded_rows.append(latents.shape[0])
        return torch.nn.functional.interpolate(latents[:, :3], scale_factor=2)

    target = torch.nn.functional.interpolate(x0[:, :3], scale_factor=2)
    out = torch.cat([noise, torch.randn(4, 4, 8, 8)], dim=1).requires_grad_(True)
    exact = pixel_loss(decode, out, x_t, t, target, schedule, max_t=250, max_samples=2)
    assert decoded_rows == [2] and exact.item() == pytest.approx(0.0, abs=1e-8)

    wrong = out.detach().clone()
    wrong[:, :4] += 0.5  # every eps off by 0.5
    wrong.requires_grad_(True)
    loss = pixel_loss(decode, wrong, x_t, t, target, schedule, max_t=250, max_samples=2)
    loss.backward()
    assert loss.item() > 0
    assert wrong.grad[[0, 2], :3].abs().sum() > 0  # the first two rows below max_t
    assert wrong.grad[[1, 3]].abs().sum() == 0 and wrong.grad[:, 4:].abs().sum() == 0

    none = pixel_loss(decode, wrong, x_t, t, target, schedule, max_t=5, max_samples=2)
    assert none.item() == 0.0 and none.requires_grad


@pytest.mark.parametrize("clip_weight", [0.0, 0.5])
def test_decoder_task_adds_the_pixel_loss_through_the_image_decoder(
    tiny_model, tmp_path, clip_weight
):
    options = {"pixel_weight": 1.0, "pixel_max_t": 1000, "pixel_samples": 2}
    options["clip_weight"] = clip_weight  # 0.5: with the CLIP-embedding term inside it
    cfg = config("decoder", tiny_model, tmp_path, task_options=options)
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    frozen = {name: getattr(task.parts, name) for name in ("movq", "clip_vision")}
    before = {
        name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in frozen.items()
    }
    losses = overfit(task, batch(), steps=20, lr=1e-3)
    _, logs = task.loss(batch(), torch.Generator().manual_seed(1))
    assert logs["pixel"] > 0 and fell_by(losses) >= 2.0, losses
    for name, net in frozen.items():  # the image decoder and the CLIP tower stay frozen
        for key, value in net.state_dict().items():
            torch.testing.assert_close(value, before[name][key])


def test_pixel_loss_adds_the_embedding_cosine_of_decoded_and_real_images():
    schedule = decoder_schedule()
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 100])
    x_t = diffuse(x0, t, noise, schedule)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(latents[:, :3], scale_factor=2)

    def embed(images: torch.Tensor) -> torch.Tensor:  # a stand-in "image tower"
        return images.flatten(2).mean(-1) + torch.tensor([0.1, 0.2, 0.3])

    target = decode(x0).clamp(-1, 1)
    exact = torch.cat([noise, torch.zeros(2, 4, 8, 8)], dim=1)
    args = (x_t, t, target, schedule, 250, 2)
    mse_only = pixel_loss(decode, exact, *args)
    with_embed = pixel_loss(decode, exact, *args, embed=embed, embed_weight=0.5)
    assert with_embed.item() == pytest.approx(mse_only.item(), abs=1e-4)  # clamp-free: cosine 1

    wrong = exact.clone()
    wrong[:, :3] += 0.7
    wrong.requires_grad_(True)
    plain = pixel_loss(decode, wrong, *args)
    both = pixel_loss(decode, wrong, *args, embed=embed, embed_weight=0.5)
    both.backward()
    assert both.item() > plain.item() and wrong.grad[:, :3].abs().sum() > 0


def test_pixel_loss_decodes_through_a_movq_frozen_in_bf16(tiny_model, tmp_path):
    options = {"pixel_weight": 1.0, "pixel_max_t": 1000, "pixel_samples": 2}
    cfg = config("decoder", tiny_model, tmp_path, task_options=options, mixed_precision="bf16")
    task = make_task("decoder", cfg)
    task.setup(cfg, CPU)
    assert next(task.parts.movq.parameters()).dtype == torch.bfloat16
    loss, logs = task.loss(batch(), torch.Generator().manual_seed(1))
    loss.backward()
    assert math.isfinite(logs["pixel"]) and logs["pixel"] > 0
    grads = [p.grad for p in task.trainable().parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_prior_and_movq_losses():
    a, b = torch.randn(3, 32), torch.randn(3, 32)
    assert prior_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item())
    recon, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    loss, logs = movq_loss(recon, target, torch.tensor(0.5), torch.tensor([1.0, 3.0]))
    l1 = (recon - target).abs().mean().item()
    assert logs["l1"] == pytest.approx(l1) and logs["gan"] == pytest.approx(-2.0)
    assert loss.item() == pytest.approx(l1 + 0.5 + 0.8 * -2.0)


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(8, 8), (64, 48)])
def test_masks_are_binary_never_empty_or_full_and_deterministic(kind, size):
    h, w = size
    generator = torch.Generator().manual_seed(0)
    masks = [random_mask(h, w, generator, kind) for _ in range(20)]
    for mask in masks:
        assert mask.shape == (1, h, w) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert 0 < mask.mean() < 1
    again = torch.Generator().manual_seed(0)
    assert all(torch.equal(m, random_mask(h, w, again, kind)) for m in masks)
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1


def test_mask_kind_is_checked():
    with pytest.raises(InvalidInput, match="mask kind"):
        random_mask(8, 8, torch.Generator(), "circle")
    with pytest.raises(InvalidInput, match="'circle' is unknown"):
        random_mask(8, 8, torch.Generator(), {"box": 1.0, "circle": 1.0})
    with pytest.raises(InvalidInput, match="weights must be"):
        random_mask(8, 8, torch.Generator(), {"box": 0.0})
    with pytest.raises(InvalidInput, match="task option mask_kind"):
        TaskOptions.from_dict({"mask_kind": {"band": -1}})
    with pytest.raises(InvalidInput, match="table kind"):
        TaskOptions.from_dict({"mask_kind": ["box", "band"]})


def test_a_mask_mixture_draws_each_kind_by_its_weight():
    """{"box": 3, "band": 1}: about three boxes (one rectangle inside the image) per band
    (a full-width or full-height strip along one side), nothing else."""
    generator = torch.Generator().manual_seed(0)
    kinds = []
    for _ in range(400):
        mask = random_mask(32, 32, generator, {"box": 3.0, "band": 1.0})[0]
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        full_rows, full_cols = mask.all(1).any(), mask.all(0).any()
        touches = (rows.min() == 0) | (rows.max() == 31) | (cols.min() == 0) | (cols.max() == 31)
        kinds.append("band" if (full_rows or full_cols) and touches else "box")
    assert 0.65 < kinds.count("box") / len(kinds) < 0.85


def test_bands_reach_past_half_the_image_for_outpainting():
    """Doubling an image's width with an overlap repaints more than half of it."""
    generator = torch.Generator().manual_seed(0)
    covered = [float(random_mask(64, 64, generator, "band").mean()) for _ in range(300)]
    assert max(covered) > 0.6 and min(covered) >= 0.09
