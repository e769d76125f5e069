"""The real server (uvicorn on 127.0.0.1) under 32 concurrent clients: no 5xx, nothing lost, flat memory."""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import psutil
import pytest
import uvicorn
from server_helpers import FAST, settings

from kandinsky.server.app import create_app

CLIENTS = 32
TIME_LIMIT_S = 60.0
RSS_GROWTH_LIMIT = 64 * 2**20  # measured: under 10 MiB a round, flat after a few


@pytest.fixture
def server_url(tiny_pipe):
    """The app served by uvicorn in a thread, on a free loopback port; stopped afterwards."""
    app = create_app(tiny_pipe, settings(max_queue=4, timeout_s=50))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # loopback only
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        app.state.worker.close()
    assert not thread.is_alive()


def _client(url: str, index: int, deadline: float) -> list[int | str]:
    """One client: 1 or 2 sequential requests; each outcome is a status code or an error name."""
    outcomes: list[int | str] = []
    with httpx.Client(base_url=url, timeout=max(deadline - time.monotonic(), 1)) as client:
        for k in range(1 + index % 2):
            body = {"prompt": f"client {index}", "seed": index * 10 + k, **FAST}
            try:
                response = client.post("/v1/text2img", json=body)
            except httpx.HTTPError as e:
                outcomes.append(type(e).__name__)
                continue
            if response.status_code == 200:
                assert response.json()["images"][0]["seed"] == index * 10 + k
            elif response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
            outcomes.append(response.status_code)
    return outcomes


def _round(url: str, deadline: float) -> tuple[int, Counter]:
    sent = sum(1 + i % 2 for i in range(CLIENTS))
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_client, url, i, deadline) for i in range(CLIENTS)]
        done, not_done = wait(futures, timeout=max(deadline - time.monotonic(), 0))
        assert not not_done, "clients still waiting at the time limit"
    return sent, Counter(code for f in done for code in f.result())


def test_32_concurrent_clients(server_url):
    deadline = time.monotonic() + TIME_LIMIT_S
    process = psutil.Process()
    _round(server_url, deadline)  # warm-up: threads, allocator arenas, connection pools
    gc.collect()
    before = process.memory_info().rss
    sent, counts = _round(server_url, deadline)
    gc.collect()
    growth = process.memory_info().rss - before
    assert sum(counts.values()) == sent  # none lost
    assert set(counts) <= {200, 429}, counts  # no 5xx, no timeouts, no connection errors
    assert counts[200] >= 2 and counts[429] >= 1  # the queue took work and refused the excess
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB"
    health = httpx.get(f"{server_url}/health").json()
    assert health == {"status": "ok", "queue": 0}
