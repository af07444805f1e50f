"""A cache layer that appends in place: `DynamicLayer` with spare slots after its keys and values.

Why: `DynamicLayer.update` concatenates, so every step copies the whole cache of every layer. For
one sequence that is small; a batch's shared cache is rows times longer (and has holes), and on
the default pair with 8 rows the copies took 23 % of a batch's time (torch profiler: `aten::cat`
1.29 s of 5.5 s; 0.05 s for the same tokens decoded alone). Here a step writes its new slots into
spare capacity, grown by a quarter when it runs out, so appending costs what it writes.

`keys` and `values` are views of the first `used` slots of the storage, so everything that reads
them (attention, `mtad.decoding.batch`) sees a plain [rows, heads, slots, dim] tensor. Anything that
assigns them (crop, row selection, compaction) hands over a new tensor, which becomes the storage
(no spare slots until the next append), except a view that keeps the storage's leading slots
(a crop): then only the count of used slots shrinks.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

#: Spare slots when the storage grows: this share of the slots used, at least `SLACK_MIN`.
SLACK_SHARE = 0.25
SLACK_MIN = 16


class SlackLayer(DynamicLayer):
    def __init__(self) -> None:
        self._storage: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self._used: dict[str, int] = {"keys": 0, "values": 0}
        super().__init__()

    @classmethod
    def from_layer(cls, layer: DynamicLayer) -> SlackLayer:
        """The same cached keys and values (not copied), in a layer that appends in place."""
        slack = cls()
        if layer.is_initialized:
            slack.device, slack.is_initialized = layer.device, True
            slack.keys, slack.values = layer.keys, layer.values
        return slack

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._append("keys", key_states)
        self._append("values", value_states)
        return self.keys, self.values

    def _append(self, name: str, new: torch.Tensor) -> None:
        storage, used = self._storage[name], self._used[name]
        if storage is None or storage.dim() != 4:  # not yet shaped: the first states set it
            storage, used = None, 0
        needed = used + new.shape[-2]
        if storage is None or storage.shape[-2] < needed or storage.shape[:2] != new.shape[:2]:
            capacity = needed + max(SLACK_MIN, int(needed * SLACK_SHARE))
            grown = new.new_empty((*new.shape[:2], capacity, new.shape[-1]))
            if used:
                grown[..., :used, :] = storage[..., :used, :]
            storage = grown
        storage[..., used:needed, :] = new
        self._storage[name], self._used[name] = storage, needed

    def _view(self, name: str) -> torch.Tensor | None:
        storage = self._storage[name]
        if storage is None or storage.dim() != 4:
            return storage
        return storage[..., : self._used[name], :]

    def _assign(self, name: str, tensor: torch.Tensor | None) -> None:
        storage = self._storage.get(name)
        if (
            tensor is not None
            and storage is not None
            and tensor.dim() == 4 == storage.dim()
            and tensor.data_ptr() == storage.data_ptr()
            and tensor.stride() == storage.stride()
            and tensor.shape[:2] == storage.shape[:2]
            and tensor.shape[-1] == storage.shape[-1]
            and tensor.shape[-2] <= storage.shape[-2]
        ):  # a view of our leading slots (a crop): keep the storage
            self._used[name] = tensor.shape[-2]
            return
        self._storage[name] = tensor
        self._used[name] = tensor.shape[-2] if tensor is not None and tensor.dim() == 4 else 0

    keys = property(lambda self: self._view("keys"), lambda self, value: self._assign("keys", value))
    values = property(lambda self: self._view("values"), lambda self, value: self._assign("values", value))
