"""One thread owns the pipeline: jobs run one at a time, first in first out, from a bounded queue.

The GPU (or the CPU's threads) is used by one generation at a time, so a second caller never
slows the first and memory never holds two batches. `submit` refuses work with `QueueFull`
when `max_queue` jobs are already waiting (the running job does not count); `run` waits for
the result at most `timeout` seconds and then gives up on the job: a job still waiting is
taken off the queue, a running one is stopped at its next denoising step (its result, if it
finishes anyway, is dropped). Work between steps (text encoding, the MoVQ decode) cannot be
interrupted: a job given up there keeps the worker busy until it ends, and `give_up` says so.

A job that runs out of memory (`is_out_of_memory`) fails alone: its traceback is dropped and
the allocator's cache emptied, so the next job starts with the memory the failed one held.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kandinsky.errors import InvalidInput

if TYPE_CHECKING:
    from kandinsky.pipeline import Kandinsky21
    from kandinsky.results import GenerationResult

log = logging.getLogger("kandinsky.server")

# The Kandinsky21 methods a job may name; all but "prior" take a per-step `callback`.
MODES = ("text2img", "mix", "variations", "img2img", "inpaint", "outpaint", "edit", "prior")
_NO_CALLBACK = ("prior",)


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs; try again in about `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelled(Exception):
    """Raised inside a running job (at a denoising step) once its caller has given up on it."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: torch's OutOfMemoryError (CUDA, MPS, …), a
    RuntimeError saying "out of memory" (older torch, cuDNN/cuBLAS), or Python's MemoryError."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _release_memory() -> None:
    """Free what a failed job left behind: unreachable tensors, then the CUDA allocator cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


GiveUp = Literal["dequeued", "running", "finished"]


@dataclass(eq=False)
class _Job:
    mode: str
    kwargs: dict[str, Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    abort: threading.Event = field(default_factory=threading.Event)


class Worker:
    """Runs `pipe.<mode>(**kwargs)` jobs one at a time on its own thread, in arrival order."""

    def __init__(self, pipe: Kandinsky21, max_queue: int = 8, timeout_s: float = 600.0):
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise InvalidInput(f"max_queue must be a positive integer, got {max_queue!r}")
        if not timeout_s > 0:
            raise InvalidInput(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.pipe = pipe
        self.max_queue = max_queue
        self.timeout_s = float(timeout_s)
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: _Job | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._mean_s = 0.0  # running mean of job durations, for Retry-After
        self._done = 0
        self._started_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="kandinsky-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, mode: str, kwargs: dict[str, Any]) -> concurrent.futures.Future:
        """Queue `pipe.<mode>(**kwargs)`; the future holds its GenerationResult or its exception."""
        if mode not in MODES:
            raise InvalidInput(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
        job = _Job(mode, dict(kwargs))
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker is closed")
            if len(self._waiting) >= self.max_queue:
                wait = self._estimate_wait_locked()
                raise QueueFull(
                    f"the server is busy: {len(self._waiting)} jobs are waiting (limit "
                    f"{self.max_queue}); retry in about {math.ceil(wait)} s",
                    retry_after=wait,
                )
            self._waiting.append(job)
            self._lock.notify()
        return job.future

    def run(
        self, mode: str, kwargs: dict[str, Any], timeout: float | None = None
    ) -> GenerationResult:
        """Submit and wait; after `timeout` (default: the worker's timeout_s) raise TimeoutError."""
        future = self.submit(mode, kwargs)
        limit = self.timeout_s if timeout is None else timeout
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            self.cancel(future)
            raise TimeoutError(f"the job did not finish within {limit:g} s") from None

    def cancel(self, future: concurrent.futures.Future) -> bool:
        """Give up on a job: dequeue it if it waits, stop it at its next step if it runs.

        Returns True when the job will not deliver a result (False if it had finished already).
        """
        return self.give_up(future) != "finished"

    def give_up(self, future: concurrent.futures.Future) -> GiveUp:
        """`cancel`, saying what became of the job:

        * "dequeued": it had not started and never will;
        * "running": it had started; it stops at its next denoising step, or, in work without
          steps (encoders, the MoVQ decode), runs to its end and its result is dropped;
        * "finished": it had ended already (its future holds the result or the error).
        """
        with self._lock:
            for job in self._waiting:
                if job.future is future:
                    self._waiting.remove(job)
                    future.cancel()
                    return "dequeued"
            if self._running is not None and self._running.future is future:
                self._running.abort.set()
                return "running"
        return "dequeued" if future.cancel() else "finished"

    def running_for(self) -> float | None:
        """Seconds the running job has been running, or None when the worker is idle."""
        with self._lock:
            if self._running is None:
                return None
            return time.monotonic() - self._started_at

    @property
    def pending(self) -> int:
        """Jobs accepted and not finished: the waiting ones plus the one running."""
        with self._lock:
            return len(self._waiting) + (self._running is not None)

    @property
    def waiting(self) -> int:
        """Jobs in the queue that have not started."""
        with self._lock:
            return len(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    def estimate_wait(self) -> float:
        """Seconds until a job submitted now would likely start (a rough guess, at least 1).

        Each waiting job counts as the mean duration of the recent finished jobs (5 s before
        any finished). The running job counts as what is left of that mean while it is on
        schedule; once it runs longer than the mean (a big size, a job stuck in its decode),
        it is guessed to need as long again as it has run so far, at most `timeout_s`.
        """
        with self._lock:
            return self._estimate_wait_locked()

    def close(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, cancel the waiting ones, stop the running one; join the thread."""
        with self._lock:
            self._closed = True
            while self._waiting:
                self._waiting.popleft().future.cancel()
            if self._running is not None:
                self._running.abort.set()
            self._lock.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread

    def _estimate_wait_locked(self) -> float:
        mean = self._mean_s if self._done else 5.0
        left = 0.0
        if self._running is not None:
            elapsed = time.monotonic() - self._started_at
            left = mean - elapsed if elapsed < mean else min(elapsed, self.timeout_s)
        return max(1.0, left + mean * len(self._waiting))

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue
                self._running = job
                self._started_at = time.monotonic()
            error: BaseException | None = None
            result = None
            try:
                result = self._execute(job)
            except BaseException as e:  # delivered to the caller, never kills the thread
                if not isinstance(e, Exception):
                    log.exception("job %s stopped by %r", job.mode, e)
                error = e
                if is_out_of_memory(e):  # its frames hold the tensors: drop them, then free
                    log.warning("job %s ran out of memory: %s", job.mode, e)
                    error = e.with_traceback(None)
                    error.__context__ = error.__cause__ = None
                    _release_memory()
            with self._lock:  # finished before the caller hears of it (pending is exact)
                self._running = None
                if error is None:  # a finished job counts even if its caller gave up on it
                    self._done += 1
                    elapsed = time.monotonic() - self._started_at
                    self._mean_s += (elapsed - self._mean_s) / min(self._done, 20)
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
            del job, result, error  # hold no image between jobs

    def _execute(self, job: _Job) -> Any:
        method = getattr(self.pipe, job.mode)
        kwargs = job.kwargs
        if job.mode not in _NO_CALLBACK:
            kwargs = {**kwargs, "callback": _abortable(job.abort, kwargs.get("callback"))}
        if job.abort.is_set():
            raise JobCancelled("the job was cancelled before it started")
        return method(**kwargs)


def _abortable(abort: threading.Event, user_callback: Any):
    """A per-step callback that stops the job once its caller gave up, then calls the user's."""

    def callback(stage: str, step: int, total: int) -> None:
        if abort.is_set():
            raise JobCancelled(f"the job was cancelled at {stage} step {step + 1}/{total}")
        if user_callback is not None:
            user_callback(stage, step, total)

    return callback
