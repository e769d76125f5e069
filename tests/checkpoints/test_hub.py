"""Repo ids resolve through a real huggingface_hub cache (built here; tests run offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kandinsky import MissingWeights, load
from kandinsky.hub import DIFFUSERS_DECODER, DIFFUSERS_INPAINT, DIFFUSERS_PRIOR, plan

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> None:
    """Lay `folder` out as huggingface_hub stores a downloaded snapshot of `repo_id`."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tiny_diffusers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hf_cache")
    add_to_cache(cache, DIFFUSERS_DECODER, tiny_diffusers / "kandinsky-2-1")
    add_to_cache(cache, DIFFUSERS_PRIOR, tiny_diffusers / "kandinsky-2-1-prior")
    add_to_cache(cache, DIFFUSERS_INPAINT, tiny_diffusers / "kandinsky-2-1-inpaint")
    return cache


def test_repo_id_loads_the_whole_release_from_the_cache(
    hub_cache: Path, tiny_diffusers: Path
) -> None:
    from_hub = load(DIFFUSERS_DECODER, cache_dir=hub_cache, local_files_only=True)
    from_folder = load(tiny_diffusers)
    for name, module in from_folder.networks().items():
        a, b = module.state_dict(), from_hub.networks()[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert "models--kandinsky-community--kandinsky-2-1-prior" in from_hub.sources["prior"]


def test_offline_mode_is_honoured_from_the_environment(hub_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load(DIFFUSERS_PRIOR, components=["prior"], cache_dir=hub_cache)
    assert loaded.prior is not None


def test_revision_pins_a_snapshot(hub_cache: Path) -> None:
    loaded = load(
        DIFFUSERS_DECODER,
        components=["movq"],
        cache_dir=hub_cache,
        revision=COMMIT,
        local_files_only=True,
    )
    assert loaded.movq is not None


def test_repo_missing_from_the_cache_offline_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(MissingWeights, match="kandinsky download"):
        load(DIFFUSERS_DECODER, components=["unet"], cache_dir=tmp_path, local_files_only=True)


def test_companion_repos_are_fetched_only_for_components_they_hold() -> None:
    steps = plan(DIFFUSERS_DECODER, ("unet", "movq"))
    assert [repo for repo, _ in steps] == [DIFFUSERS_DECODER]
    steps = plan(DIFFUSERS_DECODER, ("unet", "prior", "clip_vision"))
    assert [repo for repo, _ in steps] == [DIFFUSERS_DECODER, DIFFUSERS_PRIOR]
    assert "image_encoder/*.safetensors" in steps[1][1]
    assert not any(p.endswith(".bin") for _, patterns in steps for p in patterns)


def test_original_release_takes_clip_from_the_diffusers_prior_repo() -> None:
    steps = plan("sberbank-ai/Kandinsky_2.1", ("unet", "prior", "clip_text", "clip_vision"))
    assert steps[0] == (
        "sberbank-ai/Kandinsky_2.1",
        ["ViT-L-14_stats.th", "decoder_fp16.ckpt", "prior_fp16.ckpt"],
    )
    assert steps[1][0] == DIFFUSERS_PRIOR
