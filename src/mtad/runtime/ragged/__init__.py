"""A batch's shared caches: one `DynamicCache` per model whose rows are the rows of a batch.

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
  joining together are prefilled in one packed forward, common prefixes fed once (`packing`); a
  row joining alone is prefilled exactly as it is alone;
- beams (mtad's draft, mtjd's target) are extra physical rows of the same row, added by `repeat`
  and dropped by `select`.

Three parts: `slots` (which physical slots each row holds: joining, leaving, copying rows,
trimming and compacting; `RowStore`, one row's `KVStore`), `forward` (one batched forward for
the rows that asked: their inputs placed on their slots, masks and positions built), `packing`
(the layout of a packed prefill). The scheduler that steps the rows is `mtad.decoding.batch`.
"""

from mtad.runtime.ragged.forward import RaggedCache
from mtad.runtime.ragged.slots import ForwardRequest, RowStore, SlotLayout

__all__ = ["ForwardRequest", "RaggedCache", "RowStore", "SlotLayout"]
