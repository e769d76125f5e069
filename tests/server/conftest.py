"""A tiny random model served by the app (helpers live in server_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_helpers import FAST, settings

from kandinsky.pipeline import Kandinsky21
from kandinsky.server.app import create_app
from kandinsky.testing import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("server") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_folder: Path) -> Kandinsky21:
    pipe = Kandinsky21.from_pretrained(tiny_model_folder, inpainting=True)
    pipe.text2img("warm up", seed=0, **FAST)
    return pipe


@pytest.fixture
def make_client(tiny_pipe: Kandinsky21) -> Iterator:
    """`make_client(**settings)` → a started TestClient; every app is shut down afterwards."""
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        client = TestClient(create_app(tiny_pipe, settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
        client.app.state.worker.close(wait=True)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
