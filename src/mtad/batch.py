"""Batches: several prompts decoded together, each row with its own method state, one forward per model.

Rows of a speculative batch accept different numbers of tokens each round, and a tree row keeps
other cached positions than a chain row. Instead of shifting every row's cache into a common
layout after every round, the rows share one `DynamicCache` per model in which each row owns
*slots*, marked valid or not (`RaggedCache`):

- a batched forward appends the same number M of slots to every physical row; a row feeding
  m < M tokens puts them in the last m slots (so `logits_to_keep` reaches every row's last
  tokens); the slots before them, and all new slots of rows that feed nothing, are holes;
- rejected tokens become holes instead of being cropped (a crop would cut every row);
- a row's 4D attention mask shows only its valid slots (plus the causal or tree structure of
  what it feeds), and its position ids are logical (its valid slots counted), so each row sees
  exactly what it would see alone;
- the common tail of holes is cropped before and after every forward; when holes are more than
  half of the slots, every row is compacted (one gather per layer, slot order kept);
- a forward without holes in which every row feeds the same number of tokens causally passes no
  mask and no positions (the plain call): a row alone, kept dense, computes exactly what it would
  compute on its own cache, so a lone request in the server gives the same tokens as before;
- a row's first forward (its prompt, when it joins) runs on a fresh cache, whose keys and values
  then join the shared one: a 300-token prefill would otherwise pad every row by 300 slots. Rows
  joining together are prefilled in one packed forward, common prefixes fed once
  (`mtad.packing`); a row joining alone is prefilled exactly as it is alone;
- beams (mtad's draft, mtjd's target) are extra physical rows of the same row, added by `repeat`
  and dropped by `select`.

Every row runs the ordinary decode loop (`mtad.engine.Generation`) in its own greenlet over
`RowStore`s; a store's `call` hands its forward to the scheduler (`Batch`) and sleeps until the
batched forward has run. The scheduler resumes every row until each one waits for a forward or has
committed a block, then runs the waiting forwards of one model together, the draft's first (it
is cheap), so rows that finished drafting early wait and verify together. The proposers, the
acceptance rules and the engine do not know about batching. Rows with gamma "auto" ask for their
round's depth together, and the batch drafts one depth for all of them (`mtad.adaptive.joint_depth`):
a round waits for its widest row, so a row drafting alone would make every row pay for it.

Reproducibility: a prompt passed alone takes the plain path (same tokens as ever). In a batch,
every row samples with its own seeded generators, so it has the distribution it has alone; its
tokens equal its solo run wherever floating point allows (a batched matmul may round differently
from a one-row one, which can flip a near tie) and, with gamma "auto", where the batch's depths
equal the ones it would choose alone (depths never change what a lossless method samples).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import greenlet
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from mtad import packing
from mtad.adaptive import GammaPolicy, RoundClock, joint_depth, predicted_seconds
from mtad.errors import ConfigError
from mtad.slack_layer import SlackLayer
from mtad.tree import additive_mask

#: Compact when holes exceed this share of the slots (and the cache is longer than COMPACT_MIN).
HOLE_SHARE = 0.5
COMPACT_MIN = 64


class RaggedCache:
    """One model's cache shared by the rows of a batch: a `DynamicCache` [P rows, S slots] plus
    which slots each physical row holds (`valid` [P, S]) and which `RowStore` owns each row."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        embeddings = model.get_input_embeddings().weight
        self.device, self.dtype = embeddings.device, embeddings.dtype
        self.cache: DynamicCache | None = None
        self.valid = torch.zeros((0, 0), dtype=torch.bool)
        self.owners: list[RowStore] = []

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    def rows_of(self, store: RowStore) -> list[int]:
        return [row for row, owner in enumerate(self.owners) if owner is store]

    def slots_of(self, row: int) -> torch.Tensor:
        """Physical slots of a row's cached tokens, in order."""
        return self.valid[row].nonzero().squeeze(1)

    # ---- forwards -------------------------------------------------------------------------------

    def run(self, requests: list[tuple[RowStore, dict]]) -> list:
        """One forward for every request (a row's first one alone, then joined); outputs in order."""
        self._trim()  # rolled-back tails go before they would be padded over
        outputs: list = [None] * len(requests)
        batched = [i for i, (store, _) in enumerate(requests) if self.rows_of(store)]
        joining = [i for i in range(len(requests)) if i not in batched]
        together = [i for i in joining if packing.packable(requests[i][1])]
        lengths = [requests[i][1]["input_ids"].shape[1] for i in together]
        for group in packing.groups(lengths):
            group = [together[k] for k in group]
            if len(group) == 1:  # a prompt alone is prefilled exactly as it would be alone
                continue
            for i, output in zip(group, self._prefill_packed([requests[i] for i in group]), strict=True):
                outputs[i] = output
        for i in joining:
            if outputs[i] is None:
                store, inputs = requests[i]
                solo = DynamicCache(config=self.model.config)
                outputs[i] = self.model(cache=solo, use_cache=True, **inputs)
                self._join(store, solo)
        if batched:
            together = self._run_batched([requests[i] for i in batched])
            for i, output in zip(batched, together, strict=True):
                outputs[i] = output
        self._trim()
        return outputs

    def _prefill_packed(self, requests: list[tuple[RowStore, dict]]) -> list:
        """The first forwards of rows joining together, as one packed forward (`mtad.packing`);
        each row's keys and values are then gathered along its path and join as a solo cache's."""
        layout = packing.pack([inputs for _, inputs in requests])
        keeps = [
            inputs.get("logits_to_keep", 1) or len(path)  # 0: every position, as transformers reads it
            for (_, inputs), path in zip(requests, layout.paths, strict=True)
        ]
        kept = [path[len(path) - keep :] for path, keep in zip(layout.paths, keeps, strict=True)]
        logit_positions = torch.cat(kept).unique()  # sorted
        flags = {
            name: any(inputs.get(name) for _, inputs in requests)
            for name in {n for _, inputs in requests for n, v in inputs.items() if isinstance(v, bool)}
        }
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=layout.input_ids, cache=cache, use_cache=True,
            position_ids=layout.position_ids.to(self.device),
            attention_mask=additive_mask(layout.visible.to(self.device)[None, None], self.dtype),
            logits_to_keep=logit_positions.to(self.device), **layout.extras, **flags,
        )  # fmt: skip
        _check_plain_layers(cache)
        hidden = getattr(out, "hidden_states", None)
        outputs = []
        for (store, _), path, rows in zip(requests, layout.paths, kept, strict=True):
            own = DynamicCache(config=self.model.config)
            for index, layer in enumerate(cache.layers):
                if layer.is_initialized:
                    slots = path.to(layer.keys.device)
                    own.update(layer.keys[:, :, slots], layer.values[:, :, slots], index)
            self._join(store, own)
            outputs.append(
                SimpleNamespace(
                    logits=out.logits[:, torch.searchsorted(logit_positions, rows).to(out.logits.device)],
                    hidden_states=None if hidden is None else tuple(h[:, path.to(h.device)] for h in hidden),
                )
            )
        return outputs

    def _run_batched(self, requests: list[tuple[RowStore, dict]]) -> list:
        rows, slots = self.valid.shape
        width = max(inputs["input_ids"].shape[1] for _, inputs in requests)
        keep = max(inputs.get("logits_to_keep", 1) for _, inputs in requests)
        # No holes and every row feeding `width` tokens causally: the plain call, with no mask and
        # no positions, is what a row alone would make, so neither is built.
        uniform = self._uniform(requests, width)
        ids = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        positions = mask = None
        if not uniform:
            positions = torch.zeros((rows, width), dtype=torch.long, device=self.device)
            lowest = torch.finfo(self.dtype).min
            mask = torch.full((rows, 1, width, slots + width), lowest, dtype=self.dtype, device=self.device)
            new = torch.arange(width, device=self.device)
            mask[:, 0, new, slots + new] = 0  # a padding query sees itself only (no row of -inf: NaN)
        fed = torch.zeros((rows, width), dtype=torch.bool)
        extra: dict = {}
        placed = []  # per request: its physical rows and its token count
        for store, inputs in requests:
            own = self.rows_of(store)
            tokens = inputs["input_ids"].to(self.device)
            m = tokens.shape[1]
            ids[own, width - m :] = tokens
            if not uniform:
                self._place_mask(mask, positions, store, own, inputs, m)
            fed[own, width - m :] = True
            for name, value in inputs.items():
                if name in ("input_ids", "position_ids", "attention_mask", "logits_to_keep"):
                    continue
                if isinstance(value, torch.Tensor):  # per-token inputs (a feature draft's states)
                    if name not in extra:
                        extra[name] = value.new_zeros((rows, width, *value.shape[2:]))
                    extra[name][own, width - m :] = value.to(extra[name].dtype)
                else:
                    extra[name] = extra.get(name, False) or value
            placed.append((own, m, inputs.get("logits_to_keep", 1)))
        out = self.model(
            input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=keep,
            position_ids=positions, attention_mask=mask, **extra,
        )  # fmt: skip
        self.valid = torch.cat([self.valid, fed], dim=1)
        hidden = getattr(out, "hidden_states", None)
        return [
            SimpleNamespace(
                logits=out.logits[own, keep - kept :],
                hidden_states=None if hidden is None else _RowStates(hidden, own, width - m),
            )
            for own, m, kept in placed
        ]

    def _place_mask(
        self,
        mask: torch.Tensor,
        positions: torch.Tensor,
        store: RowStore,
        own: list[int],
        inputs: dict,
        m: int,
    ) -> None:
        """A request's positions and attention, moved onto its rows' physical slots (last m new ones)."""
        width, slots = mask.shape[2], self.slots
        length = store.length
        given = inputs.get("position_ids")
        positions[own, width - m :] = (
            given.to(self.device) if given is not None else length + torch.arange(m, device=self.device)
        )
        own_mask = inputs.get("attention_mask")
        if own_mask is None:
            own_mask = _causal(length, m, self.dtype, self.device)[None, None]
        for k, row in enumerate(own):
            structure = own_mask[min(k, own_mask.shape[0] - 1), 0].to(self.device)  # [m, length + m]
            block = mask[row, 0, width - m :]
            block[:, self.slots_of(row).to(self.device)] = structure[:, :length]
            block[:, slots + width - m :] = structure[:, length:]

    def _uniform(self, requests: list[tuple[RowStore, dict]], width: int) -> bool:
        """No holes, every row feeds `width` tokens causally: masks and positions are the defaults."""
        rows = sum(len(self.rows_of(store)) for store, _ in requests)
        return (
            rows == len(self.owners)
            and bool(self.valid.all())
            and all(
                inputs["input_ids"].shape[1] == width
                and inputs.get("attention_mask") is None
                and inputs.get("position_ids") is None
                for _, inputs in requests
            )
        )

    # ---- rows joining, leaving, copying ---------------------------------------------------------

    def _join(self, store: RowStore, solo: DynamicCache) -> None:
        """Rows of a cache filled alone (all slots valid) become rows of this one."""
        _check_plain_layers(solo)
        length = solo.get_seq_length()
        count = next(layer.keys.shape[0] for layer in solo.layers if layer.is_initialized)
        if self.cache is None:
            solo.layers = [SlackLayer.from_layer(layer) for layer in solo.layers]  # steps append in place
            self.cache = solo
            self.valid = torch.ones((count, length), dtype=torch.bool)
        else:
            slots = self.slots
            if length > slots:
                self._pad_front(length - slots)
            for mine, theirs in zip(self.cache.layers, solo.layers, strict=True):
                if mine.is_initialized:
                    mine.keys = torch.cat([mine.keys, _pad_slots(theirs.keys, self.slots)], dim=0)
                    mine.values = torch.cat([mine.values, _pad_slots(theirs.values, self.slots)], dim=0)
            joined = torch.zeros((count, self.slots), dtype=torch.bool)
            joined[:, self.slots - length :] = True
            self.valid = torch.cat([self.valid, joined], dim=0)
        self.owners += [store] * count

    def _pad_front(self, count: int) -> None:
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = _pad_slots(layer.keys, layer.keys.shape[-2] + count)
                layer.values = _pad_slots(layer.values, layer.values.shape[-2] + count)
        self.valid = torch.cat([torch.zeros((self.valid.shape[0], count), dtype=torch.bool), self.valid], 1)

    def take_rows(self, index: list[int], owners: list[RowStore]) -> None:
        """Physical row i becomes old row index[i], owned by owners[i] (append, drop, permute)."""
        if not index:
            self.cache, self.valid, self.owners = None, torch.zeros((0, 0), dtype=torch.bool), []
            return
        if index == list(range(len(self.owners))):
            self.owners = list(owners)
            return
        rows = torch.tensor(index, dtype=torch.long)
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys.index_select(0, rows.to(layer.keys.device))
                layer.values = layer.values.index_select(0, rows.to(layer.values.device))
        self.valid = self.valid.index_select(0, rows)
        self.owners = list(owners)

    def release(self, store: RowStore) -> None:
        kept = [row for row, owner in enumerate(self.owners) if owner is not store]
        self.take_rows(kept, [self.owners[row] for row in kept])

    # ---- keeping the slots few ------------------------------------------------------------------

    def _trim(self) -> None:
        if self.cache is None:
            return
        used = self.valid.any(dim=0).nonzero()
        tail = self.slots - (int(used.max()) + 1 if used.numel() else 0)
        if tail:
            self.cache.crop(-tail)
            self.valid = self.valid[:, : self.slots - tail]
        holes = int((~self.valid).sum())
        # One row alone is kept dense, as its own cache would be (a pruned tree is compacted at once).
        if holes and (
            len(self.owners) == 1 or self.slots > COMPACT_MIN and holes > HOLE_SHARE * self.valid.numel()
        ):
            self.compact()

    def compact(self) -> None:
        """Move every row's valid slots to the end of a cache as short as the longest row (order kept)."""
        counts = self.valid.sum(dim=1)
        width = int(counts.max())
        index = torch.zeros((self.valid.shape[0], width), dtype=torch.long)
        for row, count in enumerate(counts.tolist()):
            index[row, width - count :] = self.slots_of(row)
        for layer in self.cache.layers:
            if layer.is_initialized:
                rows, heads, _, dim = layer.keys.shape
                gather = index.to(layer.keys.device)[:, None, :, None].expand(rows, heads, width, dim)
                layer.keys = layer.keys.gather(2, gather)
                layer.values = layer.values.gather(2, gather)
        self.valid = torch.arange(width).unsqueeze(0) >= (width - counts).unsqueeze(1)


class RowStore:
    """One row's view of a `RaggedCache` (the `KVStore` a row's `CachedModel` uses).

    Positions are the row's own: `length` counts its valid slots; `truncate` and `keep` turn the
    dropped ones into holes. `call` asks the scheduler for a forward and waits for it.
    """

    def __init__(self, ragged: RaggedCache) -> None:
        self.ragged = ragged

    @property
    def length(self) -> int:
        rows = self.ragged.rows_of(self)
        return int(self.ragged.valid[rows[0]].sum()) if rows else 0

    def cached(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of this row's cached tokens at `layer`, [rows, heads, length, dim] (for checks)."""
        rows = self.ragged.rows_of(self)
        slots = self.ragged.slots_of(rows[0])
        cache_layer = self.ragged.cache.layers[layer]
        keys = cache_layer.keys[rows][:, :, slots.to(cache_layer.keys.device)]
        values = cache_layer.values[rows][:, :, slots.to(cache_layer.values.device)]
        return keys, values

    def call(self, model: PreTrainedModel, **inputs):
        if model is not self.ragged.model:
            raise RuntimeError("a row store runs the model its batch cache was made for")
        return greenlet.getcurrent().parent.switch(_Forward(self, inputs))

    def truncate(self, length: int) -> None:
        for row in self.ragged.rows_of(self):
            self.ragged.valid[row, self.ragged.slots_of(row)[length:]] = False

    def keep(self, positions: torch.Tensor) -> None:
        for row in self.ragged.rows_of(self):
            kept = self.ragged.slots_of(row)[positions.cpu()]
            self.ragged.valid[row] = False
            self.ragged.valid[row, kept] = True

    def repeat(self, rows: int) -> None:
        ragged = self.ragged
        first = ragged.rows_of(self)[0]
        order = list(range(len(ragged.owners)))
        ragged.take_rows(order + [first] * (rows - 1), ragged.owners + [self] * (rows - 1))

    def reorder(self, indices: torch.Tensor) -> None:
        ragged = self.ragged
        own = ragged.rows_of(self)
        sources = [own[source] for source in indices.tolist()]
        if len(sources) != len(own):  # the beams grew (drawn without replacement from a few tokens)
            others = [r for r, owner in enumerate(ragged.owners) if owner is not self]
            ragged.take_rows(others + sources, [ragged.owners[r] for r in others] + [self] * len(sources))
            return
        order = list(range(len(ragged.owners)))
        for row, source in zip(own, sources, strict=True):
            order[row] = source
        ragged.take_rows(order, ragged.owners)

    def select(self, row: int) -> None:
        ragged = self.ragged
        chosen = ragged.rows_of(self)[row]
        kept = [r for r, owner in enumerate(ragged.owners) if owner is not self or r == chosen]
        ragged.take_rows(kept, [ragged.owners[r] for r in kept])

    def reset(self) -> None:
        self.ragged.release(self)


@dataclass
class _Forward:
    store: RowStore
    inputs: dict


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

    generation: object  # mtad.engine.Generation over this row's stores
    stores: tuple[RowStore, RowStore | None]  # (target, draft); no draft store without a draft
    index: int = 0
    task: greenlet.greenlet | None = None
    done: bool = False
    error: BaseException | None = None
    waiting: _Forward | _Plan | None = field(default=None, repr=False)


class Batch:
    """The scheduler: rows join (`add`), each `step` commits one block for every live row.

    `target` and `draft` are the models every row shares (their caches are shared); rows may use
    different methods and settings. Rows may join and leave between steps (the server's
    continuous batching).
    """

    def __init__(self, target: PreTrainedModel, draft: PreTrainedModel | None) -> None:
        self.target_cache = RaggedCache(target)
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
        return row

    def priced_rows(self) -> int:
        """The batch size gamma "auto" prices rounds at: live rows rounded down to a power of two
        (each size is measured once per process; a few sizes cover every batch)."""
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
        if isinstance(message, _Forward | _Plan):
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


class _RowStates(Sequence):
    """A request's rows of a batched forward's `hidden_states`, cut on demand (a feature draft reads
    3 of the target's 31 layers; cutting all of them for every row cost ~2 % of a batch's time)."""

    def __init__(self, states: tuple, rows: list[int], start: int) -> None:
        self.states, self.rows, self.start = states, rows, start

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, layer):
        if isinstance(layer, slice):
            return [self[i] for i in range(len(self))[layer]]
        return self.states[layer][self.rows, self.start :]


def _causal(cached: int, new: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [new, cached + new]: every cached column, the new ones causally."""
    visible = torch.ones((new, cached + new), dtype=torch.bool, device=device)
    visible[:, cached:] = torch.ones((new, new), dtype=torch.bool, device=device).tril()
    return additive_mask(visible, dtype)


def _pad_slots(tensor: torch.Tensor, slots: int) -> torch.Tensor:
    """Zeros in front along the slot axis (-2) up to `slots` (holes: never attended to)."""
    missing = slots - tensor.shape[-2]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


def _check_plain_layers(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ConfigError(
                f"batching needs plain full-attention caches; this model has {type(layer).__name__} "
                "layers; allowed: decode its prompts one at a time",
                "input_ids",
            )


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
