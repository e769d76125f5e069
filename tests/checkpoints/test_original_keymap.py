"""The original-layout key rules reproduce the reference maps key for key, op for op."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kandinsky.checkpoints.original import (
    STATS_MEAN,
    STATS_STD,
    HeadSplit,
    build_key_map,
    clip_text_rules,
    clip_vision_rules,
    movq_rules,
    prior_rules,
    unet_rules,
)
from kandinsky.config import KANDINSKY_2_1

CASES = {
    "decoder": (
        "decoder_fp16.ckpt__to__kandinsky-2-1_unet.json",
        "original/decoder_fp16.ckpt.json",
        lambda: unet_rules(KANDINSKY_2_1.unet),
    ),
    "inpaint": (
        "inpainting_fp16.ckpt__to__kandinsky-2-1-inpaint_unet.json",
        "original/inpainting_fp16.ckpt.json",
        lambda: unet_rules(KANDINSKY_2_1.inpaint_unet),
    ),
    "prior": (
        "prior_fp16.ckpt__to__kandinsky-2-1-prior_prior.json",
        "original/prior_fp16.ckpt.json",
        lambda: prior_rules(KANDINSKY_2_1.prior),
    ),
    "movq": (
        "movq_final.ckpt__to__kandinsky-2-1_movq.json",
        "original/movq_final.ckpt.json",
        lambda: movq_rules(KANDINSKY_2_1.movq),
    ),
    "clip_text": (
        "openai_ViT-L-14__to__kandinsky-2-1-prior_text_encoder.json",
        "original/openai_clip/ViT-L-14.pt.json",
        lambda: clip_text_rules(12),
    ),
    "clip_vision": (
        "openai_ViT-L-14__to__kandinsky-2-1-prior_image_encoder.json",
        "original/openai_clip/ViT-L-14.pt.json",
        lambda: clip_vision_rules(24),
    ),
}

STATS_NAMES = {
    "ViT-L-14_stats.th[0] (clip_mean)": STATS_MEAN,
    "ViT-L-14_stats.th[1] (clip_std)": STATS_STD,
}


@pytest.mark.parametrize("network", sorted(CASES))
def test_key_rules_equal_reference_map(network: str, checkpoints_reference: Path) -> None:
    mapping_file, original_manifest, rules = CASES[network]
    reference = json.loads((checkpoints_reference / "mapping" / mapping_file).read_text())[
        "mapping"
    ]
    original_shapes = json.loads((checkpoints_reference / original_manifest).read_text())["keys"]
    original_shapes.update({STATS_MEAN: [768], STATS_STD: [768]})

    ours = build_key_map(reference, rules())

    assert set(ours) == set(reference)
    for key, (source, op_words) in reference.items():
        source = STATS_NAMES.get(source, source)
        assert ours[key].key == source, key
        assert ours[key].op.describe(tuple(original_shapes[source])) == op_words, key


@pytest.mark.parametrize("network", ["decoder", "inpaint", "prior", "movq"])
def test_every_original_key_is_consumed(network: str, checkpoints_reference: Path) -> None:
    mapping_file, original_manifest, rules = CASES[network]
    reference = json.loads((checkpoints_reference / "mapping" / mapping_file).read_text())[
        "mapping"
    ]
    original_keys = set(json.loads((checkpoints_reference / original_manifest).read_text())["keys"])
    used = {source.key for source in build_key_map(reference, rules()).values()}
    assert original_keys - used == set()


def test_head_split_walks_64_row_chunks_per_head() -> None:
    heads, head_dim, width = 2, 4, 3
    fused = torch.arange(heads * 3 * head_dim * width, dtype=torch.float32).reshape(
        heads * 3 * head_dim, width, 1
    )
    q = HeadSplit(3, 0, head_dim).apply(fused)
    k = HeadSplit(3, 1, head_dim).apply(fused)
    expected_q = torch.cat([fused[0:4, :, 0], fused[12:16, :, 0]])
    expected_k = torch.cat([fused[4:8, :, 0], fused[16:20, :, 0]])
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k)
