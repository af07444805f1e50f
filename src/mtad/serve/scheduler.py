"""One worker thread owns the models; requests wait in a bounded first-in, first-out queue.

Contract:
- With `max_batch_size` 1, generations run one at a time, start to finish, on the worker thread
  (the models are not thread-safe). With more, the worker decodes up to that many requests
  together (continuous batching, `mtad.decoding.batch`): a waiting request joins the running batch at the
  next block boundary and leaves it when it is done; requests with different methods and
  settings share the batch (each row has its own seed and settings). A request alone gets the
  tokens it gets with batching off; in a batch it gets the same distribution, with tokens
  identical wherever floating point allows.
- `submit` never blocks: a full queue raises `QueueFull` (the HTTP layer answers 429). The queue
  holds requests the batch has no room for. A job that was accepted is always run, unless its
  client cancelled it first.
- `Job.cancel()` (client gone) stops the generation after the block in progress and frees its
  batch row; a job cancelled while queued is skipped.
- A job longer than its time limit stops after the block in progress with a "timeout" event.
- The worker reports to the job's asyncio queue on the server's event loop; every job ends with
  exactly one terminal event: "done" (payload: `GenerationResult`), "error" (the exception) or
  "timeout". Blocks come as "block" events (payload: `mtad.Block`) before it.
- `on_step(rows, tokens, seconds)` (batching only) hears about every batch step: how many rows
  decoded, how many tokens they committed, and how long it took.
- `batch_invariant` (with `max_batch_size` > 1): requests still interleave, a block each in turn,
  but each decodes in a batch of its own (its own caches, its own round clock for gamma "auto"),
  so its tokens are the ones it gets alone, whatever else is running; the forwards are not
  shared, so throughput is that of one request at a time.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from transformers import PreTrainedModel

from mtad.decoding.batch import Batch, Row
from mtad.decoding.loop import Generation

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
    def __init__(
        self,
        max_queue: int,
        max_batch_size: int = 1,
        models: tuple[PreTrainedModel, PreTrainedModel | None] | None = None,
        on_step: Callable[[int, int, float], None] | None = None,
        batch_invariant: bool = False,
    ) -> None:
        """`models` (target, draft): the pair every batched job decodes with (batching only)."""
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_batch_size > 1 and models is None:
            raise ValueError("batching needs the (target, draft) models the jobs decode with")
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.batch_invariant = batch_invariant and max_batch_size > 1
        self._thread = threading.Thread(target=self._work, name="mtad-worker", daemon=True)
        self.max_batch_size = max_batch_size
        self.models = models
        self.on_step = on_step
        self.busy = False
        self.rows = 0  # requests decoding now
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
        """Admit waiting jobs at block boundaries, step, report, drop the done.

        Jobs decode in groups, each stepped a block a turn: one lasting group that every job joins
        (a `Batch`: continuous batching; with `max_batch_size` 1, `Alone`: one job at a time on the
        plain path), or, batch-invariant, a `Batch` per job (so none shares a forward with another,
        and each job's tokens are those it gets alone). Either way one loop admits, steps,
        reports and settles, and a group whose step fails fails its own jobs only."""
        Group = tuple[Batch | Alone, dict[int, tuple[Row, Job, float]]]  # id(row) -> row, job, start
        lasting = Alone if self.max_batch_size == 1 else lambda: Batch(*self.models)
        groups: list[Group] = [] if self.batch_invariant else [(lasting(), {})]
        closing = False
        while _rows(groups) or not closing:
            for job in () if closing else self._admit(groups):
                if job is None:
                    closing = True
                    continue
                if self.batch_invariant:
                    groups.append((Batch(*self.models), {}))
                batch, running = groups[-1]
                row = batch.add(job.generation)
                running[id(row)] = (row, job, time.monotonic())
            self.busy, self.rows = _rows(groups) > 0, _rows(groups)
            for index, (batch, running) in enumerate(groups):
                if not running:
                    continue
                start = time.monotonic()
                try:
                    blocks = batch.step()
                except Exception as error:  # noqa: BLE001 - this group's batch broke: fail its rows, go on
                    for _, job, _ in running.values():
                        job.emit("error", error)
                    running.clear()
                    if not self.batch_invariant:  # the lasting group takes the next jobs in a fresh batch
                        groups[index] = (lasting(), running)
                    continue
                if self.on_step is not None and self.max_batch_size > 1:
                    tokens = sum(len(block.tokens) for _, block in blocks)
                    self.on_step(len(running), tokens, time.monotonic() - start)
                for row, block in blocks:
                    running[id(row)][1].emit("block", block)
                self._settle(batch, running)
            if self.batch_invariant:  # a job's own group ends with it
                groups = [group for group in groups if group[1]]
            self.busy, self.rows = _rows(groups) > 0, _rows(groups)

    def _admit(self, groups: list) -> Iterator[Job | None]:
        """Waiting jobs up to the batch's room, cancelled ones skipped; None is the close signal, and
        ends the admissions. Blocks for work only while nothing is decoding."""
        while _rows(groups) < self.max_batch_size:
            try:
                job = self._queue.get(block=not _rows(groups))
            except queue.Empty:
                return
            if job is None:
                yield None
                return
            if not job.cancelled.is_set():
                yield job

    def _settle(self, batch: Batch, running: dict[int, tuple[Row, Job, float]]) -> None:
        """After a step: finished rows report, cancelled and overdue rows stop; all of them leave."""
        now = time.monotonic()
        for key, (row, job, start) in list(running.items()):
            if row.done and row.error is not None:
                job.emit("error", row.error)
            elif row.done:
                job.emit("done", row.generation.result)
            elif job.cancelled.is_set():
                batch.cancel(row)
            elif job.time_limit_s is not None and now - start > job.time_limit_s:
                job.emit("timeout", job.time_limit_s)
                batch.cancel(row)
            else:
                continue
            del running[key]
            self.mean_job_s = 0.8 * self.mean_job_s + 0.2 * (now - start)
        batch.rows = [row for row in batch.rows if not row.done]


def _rows(groups: list) -> int:
    """Jobs decoding now, over every group."""
    return sum(len(running) for _, running in groups)


class Alone:
    """A group of one job at a time on the plain path (`Generation` alone, no batch caches), with
    the interface the worker steps a `Batch` by: `add`, `step` (a block), `cancel`, `rows`."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self._blocks: dict[int, Iterator] = {}

    def add(self, generation: Generation) -> Row:
        row = Row(generation, (None, None))
        self.rows.append(row)
        self._blocks[id(row)] = iter(generation)
        return row

    def step(self) -> list[tuple[Row, object]]:
        """The next block of each live row; a row that ends or raises is marked done."""
        blocks = []
        for row in [row for row in self.rows if not row.done]:
            try:
                blocks.append((row, next(self._blocks[id(row)])))
            except StopIteration:
                self._finish(row)
            except Exception as error:  # noqa: BLE001 - reported to the client; the worker serves on
                row.error = error
                self._finish(row)
        return blocks

    def cancel(self, row: Row) -> None:
        self._blocks[id(row)].close()  # stops decoding at the block boundary
        self._finish(row)

    def _finish(self, row: Row) -> None:
        row.done = True
        self._blocks.pop(id(row), None)
