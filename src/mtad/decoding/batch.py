"""Batches: several prompts decoded together, each row with its own method state, one forward per model.

Every row runs the ordinary decode loop (`mtad.decoding.loop.Generation`) in its own greenlet over
`RowStore`s of the batch's shared caches (`mtad.runtime.ragged`); a store's `call` hands its
forward to the scheduler (`Batch`) and sleeps until the batched forward has run. The scheduler
resumes every row until each one waits for a forward or has committed a block, then runs the
waiting forwards of one model together, the draft's first (it is cheap), so rows that finished
drafting early wait and verify together. The proposers, the acceptance rules and the loop do not
know about batching. Rows with gamma "auto" ask for their round's depth together, and the batch
drafts one depth for all of them (`mtad.decoding.adaptive.joint_depth`): a round waits for its
widest row, so a row drafting alone would make every row pay for it.

Reproducibility: a prompt passed alone takes the plain path (same tokens as ever). In a batch,
every row samples with its own seeded generators, so it has the distribution it has alone; its
tokens equal its solo run wherever floating point allows (a batched matmul may round differently
from a one-row one, which can flip a near tie) and, with gamma "auto", where the batch's depths
equal the ones it would choose alone (depths never change what a lossless method samples).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import greenlet
import torch
from transformers import PreTrainedModel

from mtad.decoding.adaptive import GammaPolicy, RoundClock, joint_depth, predicted_seconds
from mtad.decoding.drafts import draft_model_of
from mtad.runtime.ragged import ForwardRequest, RaggedCache, RowStore


@dataclass
class _Plan:
    """A gamma "auto" row asks for its round's depth (`joint_depth` over the rows asking)."""

    policy: GammaPolicy
    most: int


def _agree_on_depth(policy: GammaPolicy, most: int) -> int:
    return greenlet.getcurrent().parent.switch(_Plan(policy, most))


@dataclass
class Row:
    """One prompt of a batch: its generation, the greenlet running it, and how it ended."""

    generation: object  # mtad.decoding.loop.Generation over this row's stores
    stores: tuple[RowStore, RowStore | None]  # (target, draft); no draft store without a draft
    index: int = 0
    task: greenlet.greenlet | None = None
    done: bool = False
    error: BaseException | None = None
    waiting: ForwardRequest | _Plan | None = field(default=None, repr=False)


class Batch:
    """The scheduler: rows join (`add`), each `step` commits one block for every live row.

    `target` and `draft` are the models every row shares (their caches are shared); rows may use
    different methods and settings. Rows may join and leave between steps (the server's
    continuous batching).
    """

    def __init__(self, target: PreTrainedModel, draft: PreTrainedModel | None) -> None:
        self.target_cache = RaggedCache(target)
        # A model-free draft keeps no cache (each row's drafter holds what it needs); a hybrid's
        # model part does.
        draft = draft_model_of(draft)
        self.draft_cache = RaggedCache(draft) if draft is not None else None
        self.rows: list[Row] = []
        self._joined = 0
        # What this batch's rounds really take, per depth, by the batch size rounds are priced at
        # (the rows' own work grows with their number; a forward's share shrinks).
        self.clocks: dict[int, RoundClock] = {}

    def add(self, generation) -> Row:
        """A `Generation` not yet started joins: its caches become rows of the batch's."""
        stores = RowStore(self.target_cache), RowStore(self.draft_cache) if self.draft_cache else None
        generation.use_stores(*stores)
        generation.batch_rows = self.priced_rows
        generation.choose_depth = _agree_on_depth
        row = Row(generation, stores, index=self._joined)
        self._joined += 1
        self.rows.append(row)
        generation.price(rows=len(self.live))  # the sizes this batch now reaches, priced before its steps
        return row

    def priced_rows(self) -> int:
        """The batch size gamma "auto" prices rounds at: live rows rounded down to a power of two
        (each size is measured once per process, when a row joins; a few sizes cover every batch)."""
        return 1 << (max(1, len(self.live)).bit_length() - 1)

    @property
    def live(self) -> list[Row]:
        return [row for row in self.rows if not row.done]

    def cancel(self, row: Row) -> None:
        """Stop a row now (a client went away): its slots are freed before the next forward."""
        if row.task is not None and not row.task.dead:
            with torch.inference_mode():
                row.task.throw(greenlet.GreenletExit)
        self._finish(row)

    def step(self) -> list[tuple[Row, object]]:
        """Run until every live row has committed one block (or ended); returns (row, block) pairs.

        A row that raises ends with `row.error` set; the others carry on.
        """
        blocks: list[tuple[Row, object]] = []
        joining = any(row.task is None for row in self.live)  # a prefill is not a round's cost
        planned = None  # (depth, predicted seconds, when) of a round every row planned together
        # Every row enters inference mode inside this one, so their exits, interleaved by the
        # greenlets, always restore "on" and this context restores the caller's state.
        with torch.inference_mode():
            resume = {id(row): (row, None) for row in self.live}
            while resume:
                for row, value in resume.values():
                    self._resume(row, value, blocks)
                planning = [row for row in self.live if isinstance(row.waiting, _Plan)]
                if planning:  # gamma "auto" rows starting a round: one depth for all of them
                    choices = [(row.waiting.policy, row.waiting.most) for row in planning]
                    clock = self.clocks.setdefault(self.priced_rows(), RoundClock())
                    depth = joint_depth(choices, clock)
                    if len(planning) > 1 and len(planning) == len(self.live) and not joining:
                        planned = clock, depth, predicted_seconds(choices, depth), time.perf_counter()
                    resume = {id(row): (row, min(depth, row.waiting.most)) for row in planning}
                    for row in planning:
                        row.waiting = None
                    continue
                waiting = [row for row in self.live if row.waiting is not None]
                resume = {}
                if not waiting:
                    break
                ragged = self._next_cache(waiting)
                chosen = [row for row in waiting if row.waiting.store.ragged is ragged]
                outputs = ragged.run([(row.waiting.store, row.waiting.inputs) for row in chosen])
                for row, output in zip(chosen, outputs, strict=True):
                    row.waiting = None
                    resume[id(row)] = (row, output)
        if planned is not None:
            clock, depth, predicted, start = planned
            clock.observe(depth, predicted, time.perf_counter() - start)
        return blocks

    def _resume(self, row: Row, value, blocks: list) -> None:
        if row.task is None:  # made here, so its parent is the greenlet that steps the batch
            row.task = greenlet.greenlet(_row_body(row.generation))
        try:
            message = row.task.switch(value)
        except Exception as error:  # noqa: BLE001 - one row's failure must not end the others
            row.error = error
            self._finish(row)
            return
        if isinstance(message, ForwardRequest | _Plan):
            row.waiting = message
        elif row.task.dead:
            self._finish(row)
        else:
            blocks.append((row, message))

    def _next_cache(self, waiting: list[Row]) -> RaggedCache:
        """The draft's forwards first: rows that drafted less wait for the others, then all verify."""
        caches = {id(row.waiting.store.ragged): row.waiting.store.ragged for row in waiting}
        drafts = [cache for cache in caches.values() if cache is not self.target_cache]
        return drafts[0] if drafts else self.target_cache

    def _finish(self, row: Row) -> None:
        row.done, row.waiting = True, None
        for store in row.stores:
            if store is not None:
                store.ragged.release(store)


def _row_body(generation) -> Callable[..., None]:
    def body(*_start) -> None:  # the first switch passes the (empty) resume value
        for block in generation:
            greenlet.getcurrent().parent.switch(block)

    return body


def run_batch(batch: Batch) -> Iterator[tuple[Row, object]]:
    """Step `batch` until every row has ended; yields (row, block) as blocks are committed."""
    while batch.live:
        yield from batch.step()


class BatchGeneration:
    """An iterable over (prompt index, committed block) for a batch of prompts; `.results` (one
    `GenerationResult` per prompt, in order) is set once iteration ends. A row that fails raises
    its error at the end, after the other rows have finished.

    `invariant`: each prompt decodes in a batch of its own and the batches are stepped in turn, a
    block each, so a prompt's tokens are the ones it gets alone, whatever its neighbours (no
    forward is shared: the throughput of one prompt at a time). `.batch` is the first of them.
    """

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None,
        generations: list,
        invariant: bool = False,
    ) -> None:
        self.batches = [Batch(target, draft) for _ in (generations if invariant else [None])]
        self.batch = self.batches[0]
        for index, generation in enumerate(generations):
            row = self.batches[index if invariant else 0].add(generation)
            row.index = index
        self.results: list | None = None

    @property
    def rows(self) -> list[Row]:
        """Every prompt's row, in prompt order."""
        return sorted((row for batch in self.batches for row in batch.rows), key=lambda row: row.index)

    def __iter__(self) -> Iterator[tuple[int, object]]:
        while any(batch.live for batch in self.batches):
            for batch in self.batches:
                if batch.live:
                    for row, block in batch.step():
                        yield row.index, block
        failed = [row for row in self.rows if row.error is not None]
        if failed:
            raise failed[0].error
        self.results = [row.generation.result for row in self.rows]
