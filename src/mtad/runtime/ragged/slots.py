"""Which physical slots of a batch's shared cache each row holds (`SlotLayout`), and one row's
view of it (`RowStore`, the `KVStore` a row's `CachedModel` uses). See `mtad.runtime.ragged`."""

from __future__ import annotations

from dataclasses import dataclass

import greenlet
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from mtad.errors import ConfigError
from mtad.runtime.slack_layer import SlackLayer

#: Compact when holes exceed this share of the slots (and the cache is longer than COMPACT_MIN).
HOLE_SHARE = 0.5
COMPACT_MIN = 64


class SlotLayout:
    """One model's cache shared by the rows of a batch: a `DynamicCache` [P rows, S slots] plus
    which slots each physical row holds (`valid` [P, S]) and which `RowStore` owns each row.
    `RaggedCache` (`mtad.runtime.ragged.forward`) adds the batched forward."""

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

    # ---- rows joining, leaving, copying ---------------------------------------------------------

    def _join(self, store: RowStore, solo: DynamicCache) -> None:
        """Rows of a cache filled alone (all slots valid) become rows of this one."""
        check_plain_layers(solo)
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

    def __init__(self, ragged: SlotLayout) -> None:
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
        return greenlet.getcurrent().parent.switch(ForwardRequest(self, inputs))

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
class ForwardRequest:
    """A row's forward, handed to the scheduler (`mtad.decoding.batch.Batch`) by `RowStore.call`."""

    store: RowStore
    inputs: dict


def _pad_slots(tensor: torch.Tensor, slots: int) -> torch.Tensor:
    """Zeros in front along the slot axis (-2) up to `slots` (holes: never attended to)."""
    missing = slots - tensor.shape[-2]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


def check_plain_layers(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ConfigError(
                f"batching needs plain full-attention caches; this model has {type(layer).__name__} "
                "layers; allowed: decode its prompts one at a time",
                "input_ids",
            )
