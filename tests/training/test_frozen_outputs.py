"""`data.cache_dir`: the frozen networks' outputs are computed once, read back after, and give
the same loss as computing them every step; image outputs only with deterministic crops."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from kandinsky import engine
from kandinsky.models.movq import MoVQ
from kandinsky.testing import write_tiny_model
from kandinsky.training import losses as losses_module
from kandinsky.training.config import DataConfig, TrainConfig
from kandinsky.training.frozen import weights_digest
from kandinsky.training.tasks import make_task

CPU = types.SimpleNamespace(device=torch.device("cpu"))
BATCH = {
    "image": torch.linspace(-1, 1, 4 * 3 * 64 * 64).reshape(4, 3, 64, 64).flip(0),
    "caption": ["a red circle", "a blue square", "a red circle", "two stars"],
    "key": ["a.png", "b.png", "c.png", "d.png"],
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def make(task: str, model: Path, cache: Path | None, crop: str = "center"):
    data = DataConfig(
        source="shapes", image_size=64, crop=crop, cache_dir=str(cache) if cache else None
    )
    cfg = TrainConfig(
        task=task,
        model=str(model),
        output_dir="unused",
        data=data,
        task_options={"drop_image_prob": 0.0} if task == "decoder" else {},
    )
    made = make_task(task, cfg)
    made.setup(cfg, CPU)
    return made


def loss(task) -> torch.Tensor:
    with torch.no_grad():
        value, _ = task.loss(BATCH, torch.Generator().manual_seed(3))
    return value


def refuse(*args, **kwargs):
    raise AssertionError("a frozen network ran although its outputs were cached")


@pytest.mark.parametrize("name", ["decoder", "prior"])
def test_cached_outputs_give_the_same_loss_without_running_the_frozen_networks(
    name: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uncached = loss(make(name, tiny_model, None))
    filling = loss(make(name, tiny_model, tmp_path / "cache"))
    reader = make(name, tiny_model, tmp_path / "cache")
    for owner, attribute in [
        (engine, "encode_decoder_text"),
        (engine, "encode_prior_text"),
        (MoVQ, "encode"),
        (losses_module, "encode_image"),
    ]:
        monkeypatch.setattr(owner, attribute, refuse)
    assert torch.equal(filling, uncached)
    assert torch.equal(loss(reader), uncached)


def test_random_crops_cache_only_the_text(tiny_model: Path, tmp_path: Path) -> None:
    def entries(folder: Path) -> int:
        return len(list(folder.rglob("*.safetensors")))

    loss(make("prior", tiny_model, tmp_path / "center"))
    loss(make("prior", tiny_model, tmp_path / "random", crop="random"))
    captions = len(set(BATCH["caption"]))
    assert entries(tmp_path / "random") == captions
    assert entries(tmp_path / "center") == captions + len(BATCH["key"])  # + image embeddings


def test_an_image_changed_in_place_is_not_answered_from_the_cache(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Same file names, new pixels (a dataset regenerated into the same folder): the cached
    latents of the old pictures must not come back."""
    task = make("decoder", tiny_model, tmp_path / "cache")
    with torch.no_grad():
        task._latents(BATCH["image"], BATCH)
        edited = dict(BATCH, image=BATCH["image"].flip(0))  # same keys, other pictures
        cached = task._latents(edited["image"], edited)
        fresh = task.parts.movq.encode(edited["image"])
    assert torch.equal(cached, fresh.float())


def test_other_weights_never_read_stale_entries(tiny_model: Path, tmp_path: Path) -> None:
    task = make("decoder", tiny_model, tmp_path / "cache")
    before = weights_digest(task.parts.movq)
    with torch.no_grad():
        next(task.parts.movq.parameters()).add_(1e-3)
    assert weights_digest(task.parts.movq) != before


def test_an_unwritable_cache_dir_is_refused_before_training(
    tiny_model: Path, tmp_path: Path
) -> None:
    from kandinsky.errors import InvalidInput

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidInput, match="data.cache_dir"):
        make("decoder", tiny_model, blocker / "cache")
