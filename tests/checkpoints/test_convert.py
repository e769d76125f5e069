"""`convert` writes diffusers folders atomically and refuses to clobber."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kandinsky import TINY, CorruptWeights, InvalidInput, convert


def test_converted_tree_has_the_three_diffusers_pipelines(tiny_diffusers: Path) -> None:
    names = sorted(p.name for p in tiny_diffusers.iterdir())
    assert names == ["kandinsky-2-1", "kandinsky-2-1-inpaint", "kandinsky-2-1-prior"]
    assert (
        tiny_diffusers / "kandinsky-2-1" / "unet" / "diffusion_pytorch_model.safetensors"
    ).is_file()
    assert (
        tiny_diffusers / "kandinsky-2-1-prior" / "image_encoder" / "model.safetensors"
    ).is_file()
    assert (tiny_diffusers / "kandinsky-2-1" / "scheduler" / "scheduler_config.json").is_file()


def test_existing_destination_is_not_overwritten(tiny_original, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="already exists"):
        convert(tiny_original[0], target, config=TINY, components=["movq"])
    assert (target / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_destination_only_at_the_end(tiny_original, tmp_path: Path) -> None:
    target = tmp_path / "out"
    convert(tiny_original[0], target, config=TINY, components=["unet", "movq"])
    convert(tiny_original[0], target, config=TINY, components=["unet", "movq"], overwrite=True)
    assert (target / "kandinsky-2-1" / "movq" / "config.json").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_failed_conversion_leaves_nothing_behind(tiny_original, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(tiny_original[0] / "decoder_fp16.ckpt", source)
    damaged = source / "movq_final.ckpt"
    damaged.write_bytes((tiny_original[0] / "movq_final.ckpt").read_bytes()[:4000])
    target = tmp_path / "out"
    with pytest.raises(CorruptWeights):
        convert(source, target, config=TINY, components=["unet", "movq"])
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_components_without_a_pipeline_network_are_refused(tiny_original, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="nothing to write"):
        convert(
            tiny_original[0], tmp_path / "out", config=TINY, components=["movq", "text_encoder"]
        )
    assert not (tmp_path / "out").exists()


def test_random_model_has_the_layout_convert_writes(tiny_diffusers: Path, tmp_path: Path) -> None:
    from kandinsky import load
    from kandinsky.testing import write_random_model

    folder = write_random_model(tmp_path / "random", TINY, seed=3)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(
        str(p.relative_to(tiny_diffusers)) for p in tiny_diffusers.rglob("*") if p.is_file()
    )
    parts = load(folder)
    assert parts.unet is not None and parts.inpaint_unet is not None and parts.prior is not None
    shared = [
        folder / p / "text_encoder" / "model.safetensors"
        for p in ("kandinsky-2-1", "kandinsky-2-1-inpaint")
    ]
    assert shared[0].stat().st_ino == shared[1].stat().st_ino  # written once, linked
    again = load(
        write_random_model(tmp_path / "again", TINY, seed=3, components=["unet"]),
        components=["unet"],
    )
    for key, value in again.unet.state_dict().items():
        assert torch.equal(value, parts.unet.state_dict()[key]), key  # seeded
