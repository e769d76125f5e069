"""The image prior: diffusers key layout, numerical equivalence, masking, configs, dtypes."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kandinsky.checkpoints.diffusers_prior import from_diffusers_config, to_diffusers_config
from kandinsky.config import KANDINSKY_2_1, TINY
from kandinsky.errors import LayoutError
from kandinsky.models.prior import Prior

REFERENCE_PRIOR = Path("reference/checkpoints/diffusers/kandinsky-2-1-prior/prior")


def shared_dir() -> Path:
    candidates = [Path(__file__).resolve().parents[2].parent / "shared"]
    if os.environ.get("KANDINSKY_SHARED"):
        candidates.insert(0, Path(os.environ["KANDINSKY_SHARED"]))
    for path in candidates:
        if (path / REFERENCE_PRIOR).is_dir():
            return path
    pytest.fail(f"no {REFERENCE_PRIOR} under {[str(c) for c in candidates]}; set KANDINSKY_SHARED")


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Batch of 3 with 5, 20 and 77 real text tokens and different timesteps."""
    g = torch.Generator().manual_seed(seed)
    d, n = TINY.prior.clip_dim, TINY.prior.text_ctx
    lengths = torch.tensor([5, 20, 77])
    return {
        "x_t": torch.randn(3, d, generator=g, dtype=dtype),
        "timesteps": torch.tensor([0, 421, 999]),
        "pooled_text": torch.randn(3, d, generator=g, dtype=dtype),
        "text_states": torch.randn(3, n, d, generator=g, dtype=dtype),
        "text_mask": torch.arange(n)[None, :] < lengths[:, None],
    }


def randomized_diffusers_prior():
    from diffusers import PriorTransformer

    config = {k: v for k, v in to_diffusers_config(TINY.prior).items() if not k.startswith("_")}
    reference = PriorTransformer(**config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in (
            reference.parameters()
        ):  # incl. clip_mean/std and embeddings, so nothing is trivially zero
            p.normal_(0, 0.05)
    return reference


def test_full_size_state_dict_matches_diffusers_manifest():
    manifest = json.loads((shared_dir() / REFERENCE_PRIOR / "manifest.json").read_text())
    with torch.device("meta"):
        prior = Prior(KANDINSKY_2_1.prior)
    ours = {k: list(v.shape) for k, v in prior.state_dict().items()}
    expected = manifest["keys"]
    assert sorted(set(expected) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(expected)) == [], "extra keys"
    assert {k: ours[k] for k in expected} == expected


def test_full_size_config_translates_to_released_diffusers_config():
    released = json.loads((shared_dir() / REFERENCE_PRIOR / "config.json").read_text())
    ours = to_diffusers_config(KANDINSKY_2_1.prior)
    assert ours["_class_name"] == "PriorTransformer"
    assert {k: v for k, v in ours.items() if not k.startswith("_")} == {
        k: v for k, v in released.items() if not k.startswith("_")
    }
    assert from_diffusers_config(released) == KANDINSKY_2_1.prior


def diffusers_output(reference, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """`reference` (diffusers' PriorTransformer) on our `inputs()` arguments."""
    return reference(
        x["x_t"],
        timestep=x["timesteps"],
        proj_embedding=x["pooled_text"],
        encoder_hidden_states=x["text_states"],
        attention_mask=x["text_mask"],
    ).predicted_image_embedding


def test_tiny_prior_equals_diffusers_prior_transformer():
    reference = randomized_diffusers_prior()
    prior = Prior(TINY.prior).eval()
    prior.load_state_dict(reference.state_dict(), strict=True)
    x = inputs()
    with torch.no_grad():
        expected = diffusers_output(reference, x)
        got = prior(**x)
    assert got.shape == (3, TINY.prior.clip_dim)
    assert (got - expected).abs().max().item() <= 1e-5


def test_scalar_timestep_broadcasts_like_a_batch_of_equal_timesteps():
    prior = Prior(TINY.prior).eval()
    x = inputs()
    with torch.no_grad():
        batched = prior(**{**x, "timesteps": torch.full((3,), 250)})
        assert torch.equal(prior(**{**x, "timesteps": 250}), batched)
        assert torch.equal(prior(**{**x, "timesteps": torch.tensor(250)}), batched)


def test_normalize_denormalize_match_diffusers_and_invert_each_other():
    reference = randomized_diffusers_prior()
    with torch.no_grad():
        reference.clip_std.abs_().add_(0.5)  # a usable std, away from zero
    prior = Prior(TINY.prior)
    prior.load_state_dict(reference.state_dict(), strict=True)
    z = torch.randn(4, TINY.prior.clip_dim)
    with torch.no_grad():
        torch.testing.assert_close(prior.denormalize(z), reference.post_process_latents(z))
        torch.testing.assert_close(prior.normalize(prior.denormalize(z)), z)


def test_fresh_prior_stats_are_identity():
    prior = Prior(TINY.prior)
    e = torch.randn(2, TINY.prior.clip_dim)
    with torch.no_grad():
        assert torch.equal(prior.normalize(e), e)
        assert torch.equal(prior.denormalize(e), e)


def test_padded_text_tokens_have_no_influence():
    prior = Prior(TINY.prior).eval()
    x = inputs()
    noise = torch.randn_like(x["text_states"]) * 100
    changed = torch.where(x["text_mask"][..., None], x["text_states"], noise)
    with torch.no_grad():
        assert torch.equal(prior(**x), prior(**{**x, "text_states": changed}))
        # Sanity: real tokens do matter.
        assert not torch.equal(prior(**x), prior(**{**x, "text_states": x["text_states"] + 1}))


def test_positions_padded_in_every_row_are_skipped_with_the_same_result():
    prior = Prior(TINY.prior).eval()
    x = inputs()
    lengths = []
    hook = prior.transformer_blocks[0].register_forward_pre_hook(
        lambda _, args: lengths.append(args[0].shape[1])
    )
    short = {**x, "text_mask": x["text_mask"] & (torch.arange(TINY.prior.text_ctx) < 20)}
    with torch.no_grad():
        got = prior(**short)
        # the same mask with one more real token in a row that is otherwise short: nothing
        # is skipped past it, and the rows that do not see it are unchanged
        longer = short["text_mask"].clone()
        longer[2, 20] = True
        full = prior(**{**short, "text_mask": longer})
    hook.remove()
    extra = TINY.prior.num_extra_tokens
    assert lengths == [20 + extra, 21 + extra]
    torch.testing.assert_close(got[:2], full[:2], rtol=0, atol=1e-6)
    assert not torch.allclose(got[2], full[2])
    reference = randomized_diffusers_prior()
    prior.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        expected = diffusers_output(reference, short)
        assert (prior(**short) - expected).abs().max().item() <= 1e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    prior = Prior(TINY.prior).train()
    x = inputs()
    prior(**x).square().sum().backward()
    plain = [p.grad.clone() for p in prior.parameters() if p.grad is not None]
    prior.zero_grad()
    prior.gradient_checkpointing = True
    prior(**x).square().sum().backward()
    checkpointed = [p.grad for p in prior.parameters() if p.grad is not None]
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def test_config_round_trips_through_diffusers_config():
    for cfg in (TINY.prior, KANDINSKY_2_1.prior, replace(TINY.prior, text_ctx=16, num_layers=3)):
        assert from_diffusers_config(to_diffusers_config(cfg)) == cfg


def test_missing_diffusers_config_keys_take_diffusers_defaults():
    assert from_diffusers_config({"_class_name": "PriorTransformer"}) == KANDINSKY_2_1.prior


@pytest.mark.parametrize(
    "bad",
    [
        {"norm_in_type": "layer"},
        {"added_emb_type": None},
        {"additional_embeddings": 5},
        {"embedding_proj_norm_type": "layer"},
        {"encoder_hid_proj_type": None},
        {"clip_embed_dim": 1280},
        {"time_embed_act_fn": "gelu"},
        {"_class_name": "UNet2DConditionModel"},
    ],
)
def test_unbuildable_diffusers_config_raises_layout_error(bad):
    with pytest.raises(LayoutError):
        from_diffusers_config({**to_diffusers_config(TINY.prior), **bad})


def test_bf16_prior_returns_finite_bf16():
    prior = Prior(TINY.prior).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = prior(**inputs())  # fp32 inputs: the prior casts them to its own dtype
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
