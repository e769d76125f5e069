"""Loading both layouts: exact weights, strict keys, dtypes, clear errors."""

from __future__ import annotations

import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kandinsky import (
    TINY,
    CorruptWeights,
    InvalidInput,
    LayoutError,
    MissingWeights,
    ShapeMismatch,
    UnsafeWeights,
    WeightsError,
    load,
)
from kandinsky.checkpoints.layouts import NETWORKS
from kandinsky.config import PriorConfig

ORIGINAL_COMPONENTS = [*NETWORKS, "tokenizer"]
HALF_IN_FILE = {"unet", "inpaint_unet", "prior"}  # stored (partly) in fp16, like the release


def test_original_layout_loads_every_network_exactly(tiny_original) -> None:
    folder, networks = tiny_original
    loaded = load(folder, config=TINY, components=ORIGINAL_COMPONENTS)
    for name in NETWORKS:
        ours = loaded.networks()[name].state_dict()
        written = networks[name].state_dict()
        assert ours.keys() == written.keys(), name
        for key, value in written.items():
            # fp16-stored tensors come back as their fp16 rounding, all others bit for bit
            exact = torch.equal(ours[key], value)
            rounded = name in HALF_IN_FILE and torch.equal(ours[key], value.half().float())
            assert exact or rounded, f"{name}.{key}"
    assert loaded.layouts["unet"] == "original"
    assert loaded.tokenizer("a red circle").input_ids[0] == 0


def test_converted_folder_loads_bit_identical_to_the_original(
    tiny_original, tiny_diffusers
) -> None:
    original = load(tiny_original[0], config=TINY, components=NETWORKS)
    converted = load(tiny_diffusers)
    assert converted.config == TINY
    assert set(converted.layouts.values()) == {"diffusers"}
    for name, module in original.networks().items():
        a, b = module.state_dict(), converted.networks()[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_converted_folder_loads_in_diffusers_with_the_same_weights(tiny_diffusers) -> None:
    from diffusers import KandinskyInpaintPipeline, KandinskyPipeline, KandinskyPriorPipeline

    ours = load(tiny_diffusers)
    prior = KandinskyPriorPipeline.from_pretrained(tiny_diffusers / "kandinsky-2-1-prior")
    decoder = KandinskyPipeline.from_pretrained(tiny_diffusers / "kandinsky-2-1")
    inpaint = KandinskyInpaintPipeline.from_pretrained(tiny_diffusers / "kandinsky-2-1-inpaint")
    pairs = {
        "prior": prior.prior,
        "clip_text": prior.text_encoder,
        "clip_vision": prior.image_encoder,
        "unet": decoder.unet,
        "movq": decoder.movq,
        "text_encoder": decoder.text_encoder,
        "inpaint_unet": inpaint.unet,
    }
    for name, theirs in pairs.items():
        a, b = ours.networks()[name].state_dict(), theirs.state_dict()
        assert a.keys() <= b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (
        prior.tokenizer("a red circle").input_ids == ours.clip_tokenizer("a red circle").input_ids
    )


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("fp16", torch.float16), ("bf16", torch.bfloat16), (torch.float32, torch.float32)],
)
def test_dtype_is_applied_to_every_floating_tensor(tiny_diffusers, dtype, expected) -> None:
    loaded = load(tiny_diffusers, components=["unet", "text_encoder"], dtype=dtype)
    for module in loaded.networks().values():
        for tensor in module.state_dict().values():
            assert tensor.dtype == expected or not tensor.is_floating_point()


def test_unsupported_dtype_is_refused(tiny_diffusers) -> None:
    with pytest.raises(InvalidInput, match="fp32, fp16, bf16"):
        load(tiny_diffusers, components=["movq"], dtype="float64")


def test_unknown_component_is_refused(tiny_diffusers) -> None:
    with pytest.raises(InvalidInput, match="unknown component"):
        load(tiny_diffusers, components=["vae"])


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(MissingWeights, match="neither an existing folder"):
        load(str(tmp_path / "nope" / "deeper"))


def test_folder_of_another_layout_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not a model")
    with pytest.raises(MissingWeights, match="model_index.json"):
        load(tmp_path, components=["unet"])


def test_truncated_safetensors_is_reported_as_corrupt(tiny_diffusers, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_diffusers / "kandinsky-2-1", copy)
    weights = copy / "movq" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CorruptWeights, match="truncated") as info:
        load(copy, components=["movq"])
    assert "movq" in str(info.value) and "Download it again" in str(info.value)


def test_truncated_checkpoint_is_reported_as_corrupt(tiny_original, tmp_path: Path) -> None:
    target = tmp_path / "movq_final.ckpt"
    target.write_bytes((tiny_original[0] / "movq_final.ckpt").read_bytes()[:5000])
    with pytest.raises(CorruptWeights, match="movq_final.ckpt"):
        load(tmp_path, config=TINY, components=["movq"])


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "movq_final.ckpt", "wb") as f:
        torch.save({"quant_conv.weight": torch.zeros(1), "evil": _RunsCode()}, f)
    with pytest.raises(UnsafeWeights, match="refused to load"):
        load(tmp_path, config=TINY, components=["movq"])


def test_plain_pickle_without_tensors_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "movq_final.ckpt").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(WeightsError, match="movq_final.ckpt"):
        load(tmp_path, config=TINY, components=["movq"])


def test_wrong_shapes_name_the_file_and_key(tiny_original) -> None:
    wider = replace(TINY, prior=replace(TINY.prior, width=128))
    with pytest.raises(ShapeMismatch) as info:
        load(tiny_original[0], config=wider, components=["prior"])
    message = str(info.value)
    assert "prior_fp16.ckpt" in message and "model.positional_embedding" in message


def test_missing_tensor_is_named(tiny_original, tmp_path: Path) -> None:
    state = torch.load(tiny_original[0] / "movq_final.ckpt", weights_only=True)
    del state["decoder.conv_out.bias"]
    torch.save(state, tmp_path / "movq_final.ckpt")
    with pytest.raises(WeightsError, match="decoder.conv_out.bias"):
        load(tmp_path, config=TINY, components=["movq"])


def test_unexpected_tensor_is_named(tiny_original, tmp_path: Path) -> None:
    state = torch.load(tiny_original[0] / "movq_final.ckpt", weights_only=True)
    state["decoder.extra_layer.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "movq_final.ckpt")
    with pytest.raises(WeightsError, match="decoder.extra_layer.weight"):
        load(tmp_path, config=TINY, components=["movq"])


def test_prior_without_its_stats_file_says_what_to_download(tiny_original, tmp_path: Path) -> None:
    shutil.copy(tiny_original[0] / "prior_fp16.ckpt", tmp_path)
    with pytest.raises(LayoutError, match="ViT-L-14_stats.th"):
        load(tmp_path, config=TINY, components=["prior"])


def test_loaded_networks_run_in_eval_mode_without_grad(tiny_diffusers) -> None:
    loaded = load(tiny_diffusers, components=["prior"])
    prior = loaded.prior
    assert not prior.training
    assert not any(p.requires_grad for p in prior.parameters())
    assert isinstance(loaded.config.prior, PriorConfig)


def test_integer_tensor_where_a_weight_belongs_is_named(tiny_original, tmp_path: Path) -> None:
    state = torch.load(tiny_original[0] / "movq_final.ckpt", weights_only=True)
    state["decoder.conv_out.bias"] = state["decoder.conv_out.bias"].long()
    torch.save(state, tmp_path / "movq_final.ckpt")
    with pytest.raises(WeightsError, match="decoder.conv_out.bias"):
        load(tmp_path, config=TINY, components=["movq"])


def test_empty_checkpoint_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "movq_final.ckpt").write_bytes(b"")
    with pytest.raises(CorruptWeights, match="movq_final.ckpt"):
        load(tmp_path, config=TINY, components=["movq"])


@pytest.mark.parametrize("header", [[1, 2], {"a": {"dtype": "F32", "shape": [1]}}, {"a": 5}])
def test_malformed_safetensors_header_is_corrupt(tmp_path: Path, header) -> None:
    import json
    import struct

    from kandinsky.checkpoints.io import open_state_dict

    raw = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with pytest.raises(CorruptWeights, match="w.safetensors"):
        open_state_dict(path)
