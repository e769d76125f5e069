"""The worker: one job at a time, FIFO, a bounded queue (429 + Retry-After), timeouts (504)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from server_helpers import FAST

from kandinsky.errors import InvalidInput
from kandinsky.server.worker import JobCancelled, QueueFull, Worker, is_out_of_memory

JOB = {"prompt": "x", "seed": 0, **FAST}


class Gate:
    """Wraps a pipe method: each call signals `started`, then waits for `release`."""

    def __init__(self, method):
        self.method = method
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls: list[str] = []
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.calls.append(kwargs.get("prompt"))
        self.started.set()
        try:
            self.release.wait(10)
            return self.method(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def gate(tiny_pipe, monkeypatch) -> Gate:
    gate = Gate(tiny_pipe.text2img)
    monkeypatch.setattr(tiny_pipe, "text2img", gate)
    yield gate
    gate.release.set()


def test_jobs_run_one_at_a_time_in_order(tiny_pipe, gate):
    with Worker(tiny_pipe, max_queue=8) as worker:
        futures = [worker.submit("text2img", {**JOB, "prompt": str(i)}) for i in range(5)]
        assert gate.started.wait(5)
        assert worker.pending == 5
        gate.release.set()
        results = [f.result(10) for f in futures]
    assert gate.calls == ["0", "1", "2", "3", "4"]
    assert gate.most_active == 1
    assert [r.params[0]["prompt"] for r in results] == ["0", "1", "2", "3", "4"]
    assert worker.pending == 0


def test_worker_errors_and_limits(tiny_pipe):
    with Worker(tiny_pipe, max_queue=1) as worker:
        with pytest.raises(InvalidInput, match="mode"):
            worker.submit("explode", {})
        with pytest.raises(InvalidInput, match="num_steps"):
            worker.run("text2img", {**JOB, "num_steps": -1})
        assert worker.run("text2img", JOB).seeds == [0]  # the thread survived the error
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit("text2img", JOB)
    with pytest.raises(InvalidInput, match="max_queue"):
        Worker(tiny_pipe, max_queue=0)


def test_queue_full(tiny_pipe, gate):
    with Worker(tiny_pipe, max_queue=2) as worker:
        running = worker.submit("text2img", JOB)
        assert gate.started.wait(5)
        waiting = [worker.submit("text2img", JOB) for _ in range(2)]
        with pytest.raises(QueueFull) as refused:
            worker.submit("text2img", JOB)
        assert refused.value.retry_after >= 1
        gate.release.set()
        assert all(f.result(10).seeds == [0] for f in [running, *waiting])


def test_full_queue_answers_429_with_retry_after(make_client, gate):
    client = make_client(max_queue=1)
    worker = client.app.state.worker
    running = worker.submit("text2img", JOB)  # holds the worker
    assert gate.started.wait(5)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: _post_when_blocked(client, gate), range(3)))
    # one request found room in the queue, the two others were refused at once
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 2, [a.status_code for a in answers]
    for answer in refused:
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["error"] == "queue_full"
        assert "busy" in answer.json()["detail"]
    accepted = [a for a in answers if a.status_code != 429]
    assert [a.status_code for a in accepted] == [200]
    assert running.result(5).seeds == [0]
    assert client.get("/health").json() == {"status": "ok", "queue": 0}


def _post_when_blocked(client, gate):
    response = client.post("/v1/text2img", json=JOB)
    if response.status_code == 429:
        gate.release.set()  # the refusals are in: let the queued one through
    return response


def test_timeout_is_504_and_the_job_is_stopped(make_client):
    """A real (slow) job past the timeout: 504, and the worker stops it at its next step."""
    client = make_client(timeout_s=0.3)
    worker = client.app.state.worker
    started = time.monotonic()
    response = client.post("/v1/text2img", json={**JOB, "num_steps": 250, "prior_steps": 250})
    assert time.monotonic() - started < 5
    assert response.status_code == 504, response.text
    assert response.json()["error"] == "timeout"
    assert response.json()["detail"].startswith(
        "timed out after 0.3 s (the server's per-request timeout); the job is still finishing "
        "and will be discarded"
    )
    assert int(response.headers["Retry-After"]) >= 1
    deadline = time.monotonic() + 3  # the whole job would take ~30 s on a CPU
    while worker.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.pending == 0  # stopped at its next step, not run to the end
    assert client.post("/v1/text2img", json=JOB).status_code == 200


def test_run_timeout_dequeues_waiting_jobs(tiny_pipe, gate):
    with Worker(tiny_pipe, max_queue=4, timeout_s=60) as worker:
        running = worker.submit("text2img", JOB)
        assert gate.started.wait(5)
        with pytest.raises(TimeoutError):
            worker.run("text2img", {**JOB, "prompt": "never"}, timeout=0.1)
        assert worker.pending == 1  # the timed-out job left the queue
        gate.release.set()
        assert running.result(10).seeds == [0]
        assert "never" not in gate.calls


def test_close_cancels_waiting_jobs(tiny_pipe, gate):
    worker = Worker(tiny_pipe, max_queue=4)
    running = worker.submit("text2img", JOB)
    assert gate.started.wait(5)
    waiting = worker.submit("text2img", JOB)
    worker.close(wait=False)
    assert waiting.cancelled()
    gate.release.set()
    worker.close()  # joins the thread: the running job stops at its first step
    assert isinstance(running.exception(0), JobCancelled)
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit("text2img", JOB)


def _wait_idle(worker, seconds=10):
    deadline = time.monotonic() + seconds
    while worker.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.pending == 0


def test_timeout_in_work_without_steps_says_the_job_is_still_running(
    make_client, tiny_pipe, monkeypatch
):
    """A job stuck between steps (a huge MoVQ decode) cannot be stopped: the 504 says so, and
    the requests queued behind it are told they were cancelled before they started."""
    release = threading.Event()

    def decode_forever(**kwargs):  # no denoising step, so no callback: like the final decode
        release.wait(10)
        return real(**kwargs)

    real = tiny_pipe.text2img
    monkeypatch.setattr(tiny_pipe, "text2img", decode_forever)
    client = make_client(timeout_s=0.5)
    worker = client.app.state.worker
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/text2img", json=JOB)
        deadline = time.monotonic() + 5
        while worker.running_for() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        second = client.post("/v1/text2img", json=JOB)
        first = first.result(10)
    assert first.status_code == 504, first.text
    detail = first.json()["detail"]
    assert "timed out after 0.5 s" in detail and "still finishing" in detail
    assert "cancelled" not in detail
    assert second.status_code == 504, second.text
    assert "cancelled before it started" in second.json()["detail"]
    assert client.get("/health").json()["queue"] == 1  # the first job still runs
    release.set()
    _wait_idle(worker)
    monkeypatch.undo()
    assert client.post("/v1/text2img", json=JOB).status_code == 200


def test_retry_after_grows_with_a_long_running_job(make_client, gate):
    client = make_client(max_queue=1, timeout_s=600)
    worker = client.app.state.worker
    running = worker.submit("text2img", JOB)
    assert gate.started.wait(5)
    waiting = worker.submit("text2img", JOB)
    assert worker.estimate_wait() < 20  # on schedule: ~ the mean job time per job
    with worker._lock:  # pretend the running job started 300 s ago (stuck in its decode)
        worker._started_at -= 300
    assert 300 <= worker.estimate_wait() < 400
    response = client.post("/v1/text2img", json=JOB)
    assert response.status_code == 429, response.text
    assert 300 <= int(response.headers["Retry-After"]) < 400
    with worker._lock:  # past the timeout: guessed at most timeout_s more
        worker._started_at -= 10_000
    assert worker.estimate_wait() < 700
    gate.release.set()
    assert running.result(10).seeds == waiting.result(10).seeds == [0]


OOM_ERRORS = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 112.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
    MemoryError(),
]


@pytest.mark.parametrize("error", OOM_ERRORS, ids=lambda e: type(e).__name__)
def test_out_of_memory_is_503_and_the_worker_lives_on(make_client, tiny_pipe, monkeypatch, error):
    def explode(**kwargs):
        big = torch.zeros(1000)  # noqa: F841 - a frame local the dropped traceback would keep
        raise error

    monkeypatch.setattr(tiny_pipe, "text2img", explode)
    client = make_client()
    response = client.post("/v1/text2img", json=JOB)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "out_of_memory"
    assert "smaller size or fewer images" in body["detail"]
    worker = client.app.state.worker
    failed = worker.submit("text2img", JOB).exception(10)
    assert is_out_of_memory(failed) and failed.__traceback__ is None
    monkeypatch.undo()
    assert client.post("/v1/text2img", json=JOB).status_code == 200
    assert worker._thread.is_alive() and worker.pending == 0


def test_is_out_of_memory():
    assert all(is_out_of_memory(e) for e in OOM_ERRORS)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
