"""Text encoders (M-CLIP, CLIP towers) and CLIP image preprocessing match their references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kandinsky.config import KANDINSKY_2_1, TINY
from kandinsky.errors import InvalidInput
from kandinsky.imaging import clip_preprocess, to_rgb_pil
from kandinsky.models.clip import (
    build_text_tower,
    build_vision_tower,
    encode_image,
    encode_text,
    zero_image_embedding,
)
from kandinsky.models.text_encoder import MultilingualCLIP

LENGTH = 77
REAL_LENGTHS = (77, 20, 5)  # full, half-padded, mostly padded


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)


def _xlmr_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`<s> tokens… </s> <pad>…` rows of different real lengths, with their attention masks."""
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.text_encoder
    ids = torch.full((len(REAL_LENGTHS), LENGTH), cfg.pad_token_id)
    mask = torch.zeros(len(REAL_LENGTHS), LENGTH, dtype=torch.long)
    for row, n in enumerate(REAL_LENGTHS):
        ids[row, 1 : n - 1] = torch.randint(3, cfg.vocab_size, (n - 2,), generator=g)
        ids[row, 0], ids[row, n - 1] = 0, 2
        mask[row, :n] = 1
    return ids, mask


def _tiny_mclip() -> MultilingualCLIP:
    model = MultilingualCLIP(TINY.text_encoder).eval()
    _randomize(model)
    return model


# ---------------------------------------------------------------------------- M-CLIP


def test_mclip_equals_diffusers_multilingual_clip() -> None:
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP as DiffusersMCLIP

    cfg = TINY.text_encoder
    reference = DiffusersMCLIP(
        MCLIPConfig(
            transformerDimSize=cfg.hidden_size,
            imageDimSize=cfg.out_dim,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            pad_token_id=cfg.pad_token_id,
            bos_token_id=0,
            eos_token_id=2,
            type_vocab_size=1,
            layer_norm_eps=cfg.layer_norm_eps,
        )
    ).eval()
    _randomize(reference)
    ours = MultilingualCLIP(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)

    ids, mask = _xlmr_batch()
    with torch.no_grad():
        ref_pooled, ref_states = reference(input_ids=ids, attention_mask=mask)
        states, pooled = ours(ids, mask)

    assert states.shape == (3, LENGTH, cfg.hidden_size) and pooled.shape == (3, cfg.out_dim)
    assert (states - ref_states).abs().max() <= 1e-5
    assert (pooled - ref_pooled).abs().max() <= 1e-5


def test_mclip_real_tokens_and_pooled_ignore_pad_ids() -> None:
    model = _tiny_mclip()
    ids, mask = _xlmr_batch()
    other = ids.clone()
    pads = mask == 0
    other[pads] = torch.randint(3, TINY.text_encoder.vocab_size, (int(pads.sum()),))
    with torch.no_grad():
        states, pooled = model(ids, mask)
        states_other, pooled_other = model(other, mask)

    real = mask.bool()
    torch.testing.assert_close(states_other[real], states[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled_other, pooled, atol=1e-6, rtol=0)
    # Pad positions keep their own ids' states (the UNet reads them): they do change.
    assert not torch.allclose(states_other[pads], states[pads])


# ---------------------------------------------------------------------------- full-size key sets


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _manifest_keys(root: Path, relative: str) -> dict[str, list[int]]:
    return json.loads((root / relative).read_text())["keys"]


def test_mclip_state_dict_matches_released_keys(checkpoints_reference: Path) -> None:
    with torch.device("meta"):
        model = MultilingualCLIP(KANDINSKY_2_1.text_encoder)
    expected = _manifest_keys(
        checkpoints_reference, "diffusers/kandinsky-2-1/text_encoder/manifest.json"
    )
    assert _shapes(model) == expected


@pytest.mark.parametrize(
    ("build", "relative"),
    [
        (build_text_tower, "diffusers/kandinsky-2-1-prior/text_encoder/manifest.json"),
        (build_vision_tower, "diffusers/kandinsky-2-1-prior/image_encoder/manifest.json"),
    ],
    ids=["text_tower", "vision_tower"],
)
def test_clip_tower_state_dict_matches_released_keys(
    build, relative: str, checkpoints_reference: Path
) -> None:
    with torch.device("meta"):
        tower = build(KANDINSKY_2_1.clip)
    assert _shapes(tower) == _manifest_keys(checkpoints_reference, relative)


# ---------------------------------------------------------------------------- CLIP towers


def test_clip_text_pooled_is_eot_state_after_final_ln_times_projection() -> None:
    tower = build_text_tower(TINY.clip)
    _randomize(tower)
    t = TINY.clip.text
    eot = t.vocab_size - 1  # the largest id, as OpenAI's EOT; pads are 0 as in OpenAI's tokenizer
    g = torch.Generator().manual_seed(2)
    ids = torch.zeros(3, t.max_position_embeddings, dtype=torch.long)
    eot_positions = (76, 30, 4)
    for row, pos in enumerate(eot_positions):
        ids[row, 0] = eot - 1  # SOT
        ids[row, 1:pos] = torch.randint(1, eot - 1, (pos - 1,), generator=g)
        ids[row, pos] = eot

    with torch.no_grad():
        states, pooled = encode_text(tower, ids)
        encoder_out = tower.text_model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        final_ln = tower.text_model.final_layer_norm
        by_hand = F.layer_norm(
            encoder_out, (t.hidden_size,), final_ln.weight, final_ln.bias, final_ln.eps
        )
        rows = torch.arange(3)
        pooled_by_hand = by_hand[rows, torch.tensor(eot_positions)] @ tower.text_projection.weight.T

    assert states.shape == (3, t.max_position_embeddings, t.hidden_size)
    torch.testing.assert_close(states, by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, pooled_by_hand, atol=1e-6, rtol=0)


def test_zero_image_embedding_is_encoded_zeros_repeated_to_batch() -> None:
    tower = build_vision_tower(TINY.clip)
    _randomize(tower)
    size = TINY.clip.vision.image_size
    with torch.no_grad():
        zero = zero_image_embedding(tower, batch_size=3)
        single = encode_image(tower, torch.zeros(1, 3, size, size))
    assert zero.shape == (3, TINY.clip.vision.projection_dim)
    torch.testing.assert_close(zero, single.expand(3, -1), atol=0, rtol=0)


# ---------------------------------------------------------------------------- CLIP preprocessing


def _noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _transformers_processor(center_crop: bool):
    from transformers import CLIPImageProcessorPil  # the PIL backend: no torchvision needed

    cfg = KANDINSKY_2_1.clip
    return CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        do_center_crop=center_crop,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
    )


@pytest.mark.parametrize("width,height", [(300, 200), (224, 224), (200, 500), (225, 301)])
def test_clip_preprocess_equals_transformers_resize_with_torchvision_crop(
    width: int, height: int
) -> None:
    image = _noise_image(width, height, seed=width * height)
    ours = clip_preprocess([image])
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == torch.float32

    # Resize + normalize from transformers, crop by torchvision's rule (what clip uses):
    # offset int(round(d / 2)). transformers crops at d // 2, which differs when d = 3 mod 4
    # (225×301: resized to 224×299, d = 75 → torchvision 38, transformers 37).
    full = _transformers_processor(center_crop=False)(image, return_tensors="pt")["pixel_values"]
    h, w = full.shape[-2:]
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    reference = full[..., top : top + 224, left : left + 224]
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)

    if (h - 224) % 4 != 3 and (w - 224) % 4 != 3:  # both crop rules agree: compare end to end
        cropped = _transformers_processor(center_crop=True)(image, return_tensors="pt")
        torch.testing.assert_close(ours, cropped["pixel_values"], atol=1e-6, rtol=0)


def test_clip_preprocess_accepts_numpy_and_tensor_like_pil() -> None:
    image = _noise_image(64, 48, seed=3)
    array = np.array(image)
    expected = clip_preprocess([image])
    torch.testing.assert_close(clip_preprocess([array]), expected, atol=0, rtol=0)
    torch.testing.assert_close(clip_preprocess([array / 255.0]), expected, atol=0, rtol=0)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(clip_preprocess([tensor]), expected, atol=0, rtol=0)
    assert to_rgb_pil(Image.new("RGBA", (5, 4))).mode == "RGB"


@pytest.mark.parametrize(
    "bad",
    [
        "cat.png",
        np.zeros((32, 32), dtype=np.uint8),
        np.zeros((4, 32, 32), dtype=np.uint8),
        np.full((8, 8, 3), 2.0),
        torch.zeros(1, 3, 8, 8),
        Image.new("RGB", (0, 0)),
        Image.new("RGB", (16385, 1)),
    ],
    ids=["string", "2d_array", "chw_array", "float_out_of_range", "4d_tensor", "0x0", "too_wide"],
)
def test_clip_preprocess_rejects_bad_input(bad: object) -> None:
    with pytest.raises(InvalidInput):
        clip_preprocess([bad])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        to_rgb_pil(bad)  # type: ignore[arg-type]
