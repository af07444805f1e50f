"""`recycle`: the target's own candidates, recycled (after Token Recycling, Luo et al., ACL 2025).

Every verification forward gives the target's warped distribution after each position it fed:
after the last committed token and after every draft node, accepted or not. The table keeps, for
the token (and the pair of tokens) a row came after, that row's `TOP` most likely tokens and
their probabilities, the latest row winning. Drafting after a context looks up its last two
tokens, then its last token: no forward, a dictionary lookup per node. Tokens the target has
not yet been fed after have no entry, and their rounds draft nothing.

Per request by default; `shared=True` keeps one table for every request of a process (a server),
bounded at `max_entries` keys (least recently used dropped first). A shared table carries another
request's candidates, never its text: a drafted token reaches an output only through the target's
verification, so lossless methods keep their distribution.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from mtad.decoding.drafts.base import Candidates, ModelFreeDraft, TokenDrafter, positive_int

#: Candidates kept per row: the paper's warp keeps at most 10 tokens (top-k 10).
TOP = 10
#: Default bound on a shared table's keys (about 0.3 KB each, so ~60 MB at the bound).
MAX_ENTRIES = 200_000
#: Rough bytes of one entry (key tuple, two tuples of TOP numbers, dictionary slot), for `/health`.
ENTRY_BYTES = 320


class RecycleTable:
    """(last token,) and (token before it, last token) -> the latest target candidates after them."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple[int, ...], tuple[tuple[int, ...], tuple[float, ...]]] = OrderedDict()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, context: Sequence[int]) -> Candidates | None:
        with self.lock:
            for key in (tuple(context[-2:]), tuple(context[-1:])):
                if len(key) and key in self.entries:
                    self.entries.move_to_end(key)
                    ids, probs = self.entries[key]
                    return Candidates.from_weights(dict(zip(ids, probs, strict=True)))
        return None

    def update(self, contexts: list[tuple[int, ...]], p: torch.Tensor) -> None:
        """Store the top candidates of each row of `p` [rows, vocab] under its context's keys."""
        values, ids = p.float().topk(min(TOP, p.shape[-1]), dim=-1)
        values, ids = values.cpu().tolist(), ids.cpu().tolist()
        with self.lock:
            for context, row_values, row_ids in zip(contexts, values, ids, strict=True):
                kept = [(i, v) for i, v in zip(row_ids, row_values, strict=True) if v > 0]
                if not kept or not context:
                    continue
                entry = (tuple(i for i, _ in kept), tuple(v for _, v in kept))
                for key in (tuple(context[-2:]), tuple(context[-1:])):
                    self.entries[key] = entry
                    self.entries.move_to_end(key)
            while self.max_entries is not None and len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


class _RecycleDrafter(TokenDrafter):
    learns_from_prompt = True

    def __init__(self, table: RecycleTable, vocab_size: int, device: torch.device) -> None:
        super().__init__(vocab_size, device)
        self.table = table

    def candidates(self, context):
        self.lookups += 1
        return self.table.lookup(context)

    def observe(self, contexts, p):
        self.table.update(contexts, p)


class RecycleDraft(ModelFreeDraft):
    """`draft="recycle"`: per request, or one bounded table shared by a process's requests."""

    name = "recycle"

    def __init__(self, shared: bool = False, max_entries: int = MAX_ENTRIES) -> None:
        self.shared = bool(shared)
        self.max_entries = positive_int(max_entries, "recycle max_entries")
        self.table = RecycleTable(self.max_entries) if self.shared else None

    def drafter(self, target) -> TokenDrafter:
        table = self.table if self.table is not None else RecycleTable()
        return _RecycleDrafter(table, target.vocab_size, target.device)

    def describe(self) -> dict:
        described = {"kind": self.name, "shared": self.shared}
        if self.table is not None:
            described |= {
                "entries": len(self.table),
                "max_entries": self.max_entries,
                "approx_bytes": len(self.table) * ENTRY_BYTES,
                "max_bytes": self.max_entries * ENTRY_BYTES,
            }
        return described
