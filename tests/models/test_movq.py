"""MoVQ: diffusers key layout, numerical equality with diffusers' VQModel, shapes, dtypes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from kandinsky.checkpoints.diffusers_movq import from_diffusers_config, to_diffusers_config
from kandinsky.config import KANDINSKY_2_1, TINY
from kandinsky.errors import LayoutError
from kandinsky.models.movq import MoVQ

# diffusers' SpatialNorm always uses 32 groups, so the equivalence test needs widths that
# 32 divides and norm_groups 32; otherwise this is TINY's MoVQ.
DIFFUSERS_TINY = dataclasses.replace(TINY.movq, widths=(32, 32, 64, 64), norm_groups=32)


def _shared() -> Path:
    shared = Path(__file__).resolve().parents[2].parent / "shared"
    if not shared.is_dir() and "KANDINSKY_SHARED" in os.environ:
        shared = Path(os.environ["KANDINSKY_SHARED"])
    if not shared.is_dir():
        pytest.fail(f"shared reference folder not found at {shared}; set KANDINSKY_SHARED")
    return shared


def _movq_reference(name: str) -> dict:
    path = _shared() / "reference/checkpoints/diffusers/kandinsky-2-1/movq" / name
    return json.loads(path.read_text())


def _diffusers_pair(cfg=DIFFUSERS_TINY):
    diffusers = pytest.importorskip("diffusers")
    config = {k: v for k, v in to_diffusers_config(cfg).items() if not k.startswith("_")}
    reference = diffusers.VQModel(**config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.1)
    ours = MoVQ(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def test_full_size_state_dict_matches_diffusers_manifest():
    manifest = _movq_reference("manifest.json")["keys"]
    with torch.device("meta"):
        model = MoVQ(KANDINSKY_2_1.movq)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v) for k, v in manifest.items()}


def test_encode_decode_equal_diffusers_vqmodel():
    reference, ours = _diffusers_pair()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        latents = ours.encode(images)
        torch.testing.assert_close(latents, reference.encode(images).latents, atol=1e-5, rtol=0)
        expected = reference.decode(latents, force_not_quantize=True).sample
        torch.testing.assert_close(ours.decode(latents), expected, atol=1e-5, rtol=0)
        expected = reference.decode(latents, force_not_quantize=False).sample
        torch.testing.assert_close(ours.decode(latents, quantize=True), expected, atol=1e-5, rtol=0)


def test_quantizer_picks_diffusers_codes_and_loss():
    reference, ours = _diffusers_pair()
    torch.manual_seed(2)
    latents = torch.randn(2, 4, 4, 6) * 0.1
    with torch.no_grad():
        quantized, loss, (_, _, indices) = reference.quantize(latents)
        ours_quantized, ours_indices, ours_loss = ours.quantize_latents(latents)
    assert ours_indices.shape == (2, 4, 6)
    assert torch.equal(ours_indices, indices.view(2, 4, 6))
    torch.testing.assert_close(ours_quantized, quantized)
    torch.testing.assert_close(ours_loss, loss)


def test_quantized_latents_pass_gradient_straight_through():
    model = MoVQ(TINY.movq)
    latents = torch.randn(1, 4, 2, 2, requires_grad=True)
    quantized, _, _ = model.quantize_latents(latents)
    quantized.sum().backward()
    assert torch.equal(latents.grad, torch.ones_like(latents))


def test_round_trip_shapes_are_eight_times_smaller():
    model = MoVQ(TINY.movq).eval()
    with torch.no_grad():
        latents = model.encode(torch.zeros(1, 3, 64, 64))
        assert latents.shape == (1, 4, 8, 8)
        assert model.decode(latents).shape == (1, 3, 64, 64)


def test_training_round_trip_with_checkpointing_matches_plain():
    model = MoVQ(TINY.movq).train()
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    recon, loss = model(images)
    (recon.square().mean() + loss).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    recon2, loss2 = model(images)
    (recon2.square().mean() + loss2).backward()
    torch.testing.assert_close(recon2, recon)
    for p, g in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_full_size_config_translates_to_released_diffusers_config():
    released = _movq_reference("config.json")
    ours = to_diffusers_config(KANDINSKY_2_1.movq)
    assert ours == {k: v for k, v in released.items() if k != "_diffusers_version"}
    assert from_diffusers_config(released) == KANDINSKY_2_1.movq
    assert from_diffusers_config(to_diffusers_config(DIFFUSERS_TINY)) == DIFFUSERS_TINY


@pytest.mark.parametrize(
    "change",
    [
        {"norm_type": "group"},
        {"up_block_types": ["UpDecoderBlock2D"] * 4},
        {"down_block_types": ["DownEncoderBlock2D"] * 4},
        {"vq_embed_dim": 8},
        {"norm_num_groups": 8},  # diffusers' decoder would still use 32 groups
        {"_class_name": "AutoencoderKL"},
    ],
)
def test_unbuildable_diffusers_config_raises_layout_error(change):
    config = {**_movq_reference("config.json"), **change}
    with pytest.raises(LayoutError):
        from_diffusers_config(config)


def test_config_without_diffusers_twin_raises_layout_error():
    with pytest.raises(LayoutError, match="32 groups"):
        to_diffusers_config(dataclasses.replace(TINY.movq, norm_groups=8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cast_decodes_finite_images(dtype):
    model = MoVQ(TINY.movq).eval().to(dtype)
    with torch.no_grad():
        latents = model.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
        images = model.decode(latents.float(), quantize=True)
    assert latents.dtype == images.dtype == dtype
    assert images.shape == (1, 3, 32, 32)
    assert torch.isfinite(images).all()
