"""The decoder UNet: diffusers key layout, numerical equivalence, configs, dtypes, checkpointing."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kandinsky.checkpoints.diffusers_unet import from_diffusers_config, to_diffusers_config
from kandinsky.config import KANDINSKY_2_1, TINY, UNetConfig
from kandinsky.errors import InvalidInput, LayoutError
from kandinsky.models.unet import UNet

REFERENCE = Path("reference/checkpoints/diffusers")
# the released UNets attend at every level but the first; diffusers' block types allow it there
# too (a smaller model may want it at its finest level)
ATTENTION_AT_LEVEL_0 = replace(TINY.unet, attention_levels=(0, 1))


def shared_dir() -> Path:
    candidates = [Path(__file__).resolve().parents[2].parent / "shared"]
    if os.environ.get("KANDINSKY_SHARED"):
        candidates.insert(0, Path(os.environ["KANDINSKY_SHARED"]))
    for path in candidates:
        if (path / REFERENCE).is_dir():
            return path
    pytest.fail(f"no {REFERENCE} under {[str(c) for c in candidates]}; set KANDINSKY_SHARED")


def unet_inputs(cfg: UNetConfig, height: int = 16, width: int = 16, seed: int = 0) -> dict:
    """Batch of 2 with different (fractional) timesteps and 77 text tokens."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(2, cfg.in_channels, height, width, generator=g),
        "timesteps": torch.tensor([3.0, 871.5]),
        "image_embeds": torch.randn(2, cfg.image_embed_dim, generator=g),
        "text_states": torch.randn(2, 77, cfg.text_dim, generator=g),
        "pooled_text": torch.randn(2, cfg.pooled_text_dim, generator=g),
    }


def run_ours(model: UNet, x: dict) -> torch.Tensor:
    cond = model.condition(x["image_embeds"], x["text_states"], x["pooled_text"])
    return model(x["sample"], x["timesteps"], cond)


def randomized_diffusers_unet(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in to_diffusers_config(cfg).items() if not k.startswith("_")}
    reference = UNet2DConditionModel(**config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():  # also the zero-initialised ones, so nothing is vacuous
            p.normal_(0, 0.1)  # large enough that every input moves the output ≫ 1e-5
    return reference


@pytest.mark.parametrize("variant", ["kandinsky-2-1", "kandinsky-2-1-inpaint"])
def test_full_size_state_dict_matches_diffusers_manifest(variant: str):
    manifest = json.loads(
        (shared_dir() / REFERENCE / variant / "unet" / "manifest.json").read_text()
    )
    cfg = KANDINSKY_2_1.unet if variant == "kandinsky-2-1" else KANDINSKY_2_1.inpaint_unet
    with torch.device("meta"):
        model = UNet(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["keys"]
    assert sorted(set(expected) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(expected)) == [], "extra keys"
    assert {k: s for k, s in ours.items() if s != expected[k]} == {}, "shape mismatches"


@pytest.mark.parametrize(
    ("which", "height", "width"),
    [
        ("unet", 16, 16),
        ("inpaint_unet", 16, 16),
        ("unet", 16, 24),
        ("attention_at_level_0", 16, 16),
    ],
)
def test_matches_diffusers_unet_numerically(which: str, height: int, width: int):
    cfg = ATTENTION_AT_LEVEL_0 if which == "attention_at_level_0" else getattr(TINY, which)
    reference = randomized_diffusers_unet(cfg)
    model = UNet(cfg).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = unet_inputs(cfg, height, width)
    with torch.no_grad():
        expected = reference(
            x["sample"],
            x["timesteps"],
            encoder_hidden_states=x["text_states"],
            added_cond_kwargs={"text_embeds": x["pooled_text"], "image_embeds": x["image_embeds"]},
        ).sample
        got = run_ours(model, x)
    assert got.shape == (2, cfg.out_channels, height, width)
    assert expected.abs().max() > 0.1  # a real signal, not an all-zero output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_scalar_timestep_is_broadcast_to_the_batch():
    model = UNet(TINY.unet).eval()
    x = unet_inputs(TINY.unet)
    cond = model.condition(x["image_embeds"], x["text_states"], x["pooled_text"])
    with torch.no_grad():
        for t in (500, 500.0, torch.tensor(500)):
            torch.testing.assert_close(
                model(x["sample"], t, cond), model(x["sample"], torch.tensor([500, 500]), cond)
            )


def test_latent_sides_must_be_divisible_by_the_downsampling_factor():
    model = UNet(TINY.unet)
    x = unet_inputs(TINY.unet, 16, 20)
    with pytest.raises(InvalidInput, match="divisible by 8"):
        run_ours(model, x)


def test_config_round_trips_through_diffusers_config():
    reference = json.loads(
        (shared_dir() / REFERENCE / "kandinsky-2-1" / "unet" / "config.json").read_text()
    )
    reference.pop("_diffusers_version")
    assert to_diffusers_config(KANDINSKY_2_1.unet) == reference
    for cfg in (
        KANDINSKY_2_1.unet,
        KANDINSKY_2_1.inpaint_unet,
        TINY.unet,
        TINY.inpaint_unet,
        ATTENTION_AT_LEVEL_0,
    ):
        assert from_diffusers_config(to_diffusers_config(cfg)) == cfg


def test_untied_widths_cannot_be_expressed_in_diffusers():
    with pytest.raises(ValueError, match="pooled_text_dim"):
        to_diffusers_config(replace(TINY.unet, pooled_text_dim=64))


@pytest.mark.parametrize(
    "change",
    [
        {"_class_name": "UNet2DModel"},
        {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]},
        {"up_block_types": ["SimpleCrossAttnUpBlock2D"] * 4},
        {"resnet_time_scale_shift": "default"},
        {"addition_embed_type": None},
        {"mid_block_type": "UNetMidBlock2DCrossAttn"},
        {"attention_head_dim": [64, 64, 32, 64]},
        {"block_out_channels": [384, 768, 1000, 1536]},
    ],
)
def test_foreign_diffusers_config_raises_layout_error(change: dict):
    with pytest.raises(LayoutError):
        from_diffusers_config({**to_diffusers_config(KANDINSKY_2_1.unet), **change})


def test_missing_fields_take_diffusers_defaults():
    d = to_diffusers_config(KANDINSKY_2_1.unet)
    del d["resnet_time_scale_shift"]  # diffusers' default is "default", not scale-shift
    with pytest.raises(LayoutError, match="resnet_time_scale_shift"):
        from_diffusers_config(d)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_returns_finite_output_in_its_dtype(dtype: torch.dtype):
    model = UNet(TINY.unet).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    model = model.to(dtype)
    with torch.no_grad():
        out = run_ours(model, unet_inputs(TINY.unet))  # fp32 inputs are cast to the module dtype
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = UNet(TINY.unet).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    x = unet_inputs(TINY.unet)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        run_ours(model, x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)
