"""One worker thread owns the models; requests wait in a bounded first-in, first-out queue.

Contract:
- Generations run one at a time, start to finish, on the worker thread. The models are not
  thread-safe, and a generation run alone is what makes "same seed, same output" hold under load.
- `submit` never blocks: a full queue raises `QueueFull` (the HTTP layer answers 429). A job that
  was accepted is always run, unless its client cancelled it first.
- `Job.cancel()` (client gone) stops the generation after the block in progress; a job
  cancelled while queued is skipped. Either way the worker is free for the next job at once.
- A job longer than its time limit stops after the block in progress with a "timeout" event.
- The worker reports to the job's asyncio queue on the server's event loop; every job ends with
  exactly one terminal event: "done" (payload: `GenerationResult`), "error" (the exception) or
  "timeout". Blocks come as "block" events (payload: `mtad.Block`) before it.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field

from mtad.engine import Generation

TERMINAL = ("done", "error", "timeout")


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs already."""


@dataclass(frozen=True)
class Event:
    kind: str  # "block", "done", "error", "timeout"; the HTTP layer adds "gone" (client left)
    payload: object = None


@dataclass
class Job:
    """One request's generation and the channel its results travel back on."""

    generation: Generation  # not yet started
    loop: asyncio.AbstractEventLoop
    time_limit_s: float | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, payload: object = None) -> None:
        """Hand an event to the event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, Event(kind, payload))
        except RuntimeError:  # the loop is closed: the server is gone, nobody is listening
            pass


class Scheduler:
    def __init__(self, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, name="mtad-worker", daemon=True)
        self.busy = False
        self.mean_job_s = 1.0  # running mean of job durations, for Retry-After

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Let the worker finish every accepted job, then stop it (give up after `timeout_s`:
        the worker is a daemon thread and ends with the process)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def retry_after_s(self) -> int:
        """A guess at when a queue slot frees up: one mean job, at least 1 s, at most a minute."""
        return min(60, max(1, math.ceil(self.mean_job_s)))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled.is_set():
                continue
            start = time.monotonic()
            self.busy = True
            try:
                _run(job)
            finally:
                self.busy = False
                self.mean_job_s = 0.8 * self.mean_job_s + 0.2 * (time.monotonic() - start)


def _run(job: Job) -> None:
    """Decode `job` block by block, checking for cancellation and the time limit between blocks."""
    start = time.monotonic()
    blocks = iter(job.generation)
    try:
        for block in blocks:
            job.emit("block", block)
            if job.cancelled.is_set():
                return
            if job.time_limit_s is not None and time.monotonic() - start > job.time_limit_s:
                job.emit("timeout", job.time_limit_s)
                return
        job.emit("done", job.generation.result)
    except Exception as error:  # noqa: BLE001 - reported to the client; the worker serves on
        job.emit("error", error)
    finally:
        blocks.close()  # stops decoding when we returned early
