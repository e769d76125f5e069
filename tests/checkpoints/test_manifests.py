"""At full size, on the meta device, our networks equal the released files key for key, shape for shape.

Both layouts: diffusers names directly, original names through our key rules (with the shapes
the original tensors must have, fused q/k/v and conv kernels included).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kandinsky.checkpoints.original import STATS_MEAN, STATS_STD
from kandinsky.config import KANDINSKY_2_1
from kandinsky.loading import build_network, original_key_map

DIFFUSERS = {
    "prior": "kandinsky-2-1-prior/prior",
    "unet": "kandinsky-2-1/unet",
    "inpaint_unet": "kandinsky-2-1-inpaint/unet",
    "movq": "kandinsky-2-1/movq",
    "text_encoder": "kandinsky-2-1/text_encoder",
    "clip_text": "kandinsky-2-1-prior/text_encoder",
    "clip_vision": "kandinsky-2-1-prior/image_encoder",
}
ORIGINAL = {
    "prior": "prior_fp16.ckpt.json",
    "unet": "decoder_fp16.ckpt.json",
    "inpaint_unet": "inpainting_fp16.ckpt.json",
    "movq": "movq_final.ckpt.json",
    "text_encoder": "text_encoder/pytorch_model.bin.json",
}


def _meta_shapes(name: str) -> dict[str, list[int]]:
    with torch.device("meta"):
        module = build_network(name, KANDINSKY_2_1)
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _keys(path: Path) -> dict[str, list[int]]:
    return json.loads(path.read_text())["keys"]


@pytest.mark.parametrize("name", sorted(DIFFUSERS))
def test_full_size_state_dict_equals_the_diffusers_manifest(
    name: str, checkpoints_reference: Path
) -> None:
    expected = _keys(checkpoints_reference / "diffusers" / DIFFUSERS[name] / "manifest.json")
    assert _meta_shapes(name) == expected


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_full_size_state_dict_maps_onto_the_original_manifest(
    name: str, checkpoints_reference: Path
) -> None:
    ours = _meta_shapes(name)
    key_map = original_key_map(name, KANDINSKY_2_1, ours)
    original_shapes: dict[str, list[int]] = {}
    for key, source in key_map.items():
        shape = list(source.op.original_shape(tuple(ours[key])))
        assert original_shapes.setdefault(source.key, shape) == shape, key
    expected = _keys(checkpoints_reference / "original" / ORIGINAL[name])
    if name == "prior":  # the stats live in ViT-L-14_stats.th, not in the checkpoint
        assert original_shapes.pop(STATS_MEAN) == original_shapes.pop(STATS_STD) == [768]
    assert original_shapes == expected


def test_both_clip_towers_map_onto_the_openai_checkpoint(checkpoints_reference: Path) -> None:
    original_shapes: dict[str, list[int]] = {}
    for name in ("clip_text", "clip_vision"):
        ours = _meta_shapes(name)
        for key, source in original_key_map(name, KANDINSKY_2_1, ours).items():
            original_shapes[source.key] = list(source.op.original_shape(tuple(ours[key])))
    expected = _keys(checkpoints_reference / "original" / "openai_clip" / "ViT-L-14.pt.json")
    expected.pop("logit_scale")  # CLIP's contrastive temperature: not used by Kandinsky
    assert original_shapes == expected
