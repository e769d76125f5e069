"""Shared fixtures: where the reference data lives, tiny configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kandinsky.config import TINY
from kandinsky.conversion import convert
from kandinsky.testing import write_clip_tokenizer_folder, write_original_layout

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shared_dir() -> Path:
    """The project's reference folder (../shared from the repo root), or $KANDINSKY_SHARED."""
    env = os.environ.get("KANDINSKY_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not (path / "reference" / "checkpoints").is_dir():
        raise RuntimeError(
            f"reference data not found at {path}; set KANDINSKY_SHARED to the folder that holds "
            "reference/checkpoints"
        )
    return path


def manifest(relative: str) -> dict:
    """A key/shape manifest from shared/reference/checkpoints/<relative>."""
    return json.loads((shared_dir() / "reference" / "checkpoints" / relative).read_text())


@pytest.fixture(scope="session")
def checkpoints_reference() -> Path:
    return shared_dir() / "reference" / "checkpoints"


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The original release's files at TINY size, and the networks they were written from."""
    folder = tmp_path_factory.mktemp("original")
    networks = write_original_layout(folder, TINY, seed=1)
    return folder, networks


@pytest.fixture(scope="session")
def tiny_clip_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A partial diffusers prior folder holding only the CLIP tokenizer (the original lacks one)."""
    return write_clip_tokenizer_folder(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="session")
def tiny_diffusers(
    tiny_original, tiny_clip_tokenizer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`kandinsky convert` output of the tiny original folder: three diffusers pipelines."""
    out = tmp_path_factory.mktemp("converted") / "kandinsky-2-1-tiny"
    return convert([tiny_original[0], tiny_clip_tokenizer], out, config=TINY)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts with the thread count the session started with (some tests set it)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
