"""One batched forward over a batch's shared cache for the rows that asked (`RaggedCache.run`):
each request's tokens placed on its rows' last new slots, its mask and positions moved onto its
valid slots; a row's first forward runs alone or packed with the others joining, then joins the
shared cache. See `mtad.runtime.ragged`."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from transformers import DynamicCache

from mtad.runtime.attention import additive_mask, causal
from mtad.runtime.ragged import packing
from mtad.runtime.ragged.slots import RowStore, SlotLayout, check_plain_layers


class RaggedCache(SlotLayout):
    """A `SlotLayout` that runs forwards: `run` feeds every waiting request in one forward."""

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
        """The first forwards of rows joining together, as one packed forward (`mtad.runtime.ragged.packing`);
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
        check_plain_layers(cache)
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
            own_mask = causal(length, m, self.dtype, self.device)[None, None]
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
