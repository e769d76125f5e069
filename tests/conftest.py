"""Shared fixtures: where the reference data lives, tiny configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
