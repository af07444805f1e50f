"""Training a feature draft (`mtad.models.feature_draft`): teacher states, unrolled steps, held-out table.

What the draft reads (the chosen layers' hidden states) and what it learns (the teacher's top-64
next-token log-probs) come from one float32 target forward per training sample (`sample_signal`),
made the first time the sample is drawn and kept for later epochs, in memory and under the run's
output directory (`kinds.FeatureDrafts`): the target forward costs far more than the draft's step.
None of it is committed: the data stays token ids. Held-out scores use a live target forward with
the full distribution.

Training-time test (EAGLE-3): at decode time only the first drafted token reads a real target
state; the j-th reads the draft's own output. So the loss unrolls `depths` draft steps. Depth 1 is
the plain pass over real states. At depth k, slot s reads token x_s with the draft's depth-(k-1)
output at slot s - 1, and attends to what it would see when drafting k - 1 tokens after a real
context ending at slot r = s - k + 1: depth-1 keys at slots <= r and, for d = 2..k, the depth-d
key at slot r + d - 1 (one diagonal per earlier depth). Every depth's keys stay in one cache, and
a 4D mask says which of them each query sees; the teacher is the same target distribution at
every depth (the text is the target's own, so a drafted token equal to it is what acceptance
needs). The held-out table reports Σ min(p, q) per depth = per draft position, under the paper's
warp, conditional on the earlier drafted tokens matching the text.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from mtad.decoding.sampling import warp
from mtad.distill.metrics import PAPER_SAMPLING, topk_kl
from mtad.runtime.vocabulary import TokenSubset


def target_signal(target, input_ids, attention_mask, layers: list[int], rows, columns):
    """Hidden states [B, W, F] of `layers`, and the target's logits at (rows, columns) [N, V].
    `attention_mask` None: every position is real (one unpadded sample)."""
    with torch.no_grad():
        hidden = target.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
        ).hidden_states
        states = torch.cat([hidden[i] for i in layers], dim=-1)
        logits = target.get_output_embeddings()(hidden[-1][rows, columns]).float()
    return states, logits


def unrolled_outputs(draft, input_ids, attention_mask, states, depths: int) -> list[torch.Tensor]:
    """The draft's outputs [B, W, hidden] at depths 1..`depths` (see the module docstring)."""
    batch, width = input_ids.shape
    embeds = draft.embed(input_ids)
    features = draft.fuse_features(torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1))
    cache = DynamicCache(config=draft.config)
    positions = torch.arange(width).expand(batch, -1)
    outputs = []
    for depth in range(1, depths + 1):
        if depth > 1:  # slot s reads the previous depth's output at slot s - 1
            features = torch.cat([torch.zeros_like(outputs[-1][:, :1]), outputs[-1][:, :-1]], dim=1)
        mask = _depth_mask(depth, width, attention_mask, embeds.dtype)
        out = draft(inputs_embeds=embeds, features=features, cache=cache, use_cache=True,
                    position_ids=positions, attention_mask=mask).hidden_states[0]  # fmt: skip
        outputs.append(out)
    return outputs


def _depth_mask(depth: int, width: int, attention_mask: torch.Tensor, dtype) -> torch.Tensor:
    """Additive mask [B, 1, W, depth x W]: depth-1 keys at slots <= s - depth + 1, then the diagonal
    key of each later depth d at slot s - depth + d; padded keys never."""
    slots = torch.arange(width)
    query = slots[:, None]
    visible = [slots[None, :] <= query - depth + 1]
    for d in range(2, depth + 1):
        visible.append(slots[None, :] == query - depth + d)
    allowed = torch.cat(visible, dim=1)[None] & attention_mask.bool().repeat(1, depth)[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def depth_logits(draft, outputs: list[torch.Tensor], rows, columns) -> list[torch.Tensor]:
    return [draft.head(out[rows, columns]).float() for out in outputs]


def subset_kl(
    target_logits: torch.Tensor, draft_logits: torch.Tensor, token_ids: torch.Tensor
) -> torch.Tensor:
    """Mean KL(p_S || q) with p renormalised on the draft's ids S (on a fixed support that q
    maximises the acceptance Σ min(p, q)); target_logits [N, V], draft_logits [N, |S|]."""
    p_log = torch.log_softmax(target_logits[:, token_ids], dim=-1)
    q_log = torch.log_softmax(draft_logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


TEACHER_TOP_K = 64


@torch.no_grad()
def sample_signal(target, sample, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One target forward over one sample: its hidden states [len, layers x hidden] (bfloat16)
    and the teacher's top-64 next-token ids and log-probs at its answer positions. One sample per
    forward, so the result does not depend on which samples share a batch (exact resume)."""
    columns = torch.arange(sample.start, len(sample.ids) - 1)
    states, logits = target_signal(
        target, sample.ids[None].long(), None, layers, torch.zeros_like(columns), columns
    )
    top = torch.log_softmax(logits, dim=-1).topk(min(TEACHER_TOP_K, logits.shape[-1]), dim=-1)
    return states[0].to(torch.bfloat16), top.indices.to(torch.int32), top.values.to(torch.float16)


def feature_loss(draft, batch: dict, states: list[torch.Tensor], depths: int) -> torch.Tensor:
    """Mean over depths of the teacher top-k KL (`topk_kl`, renormalised on the draft's ids) at
    every trained answer position. `batch` from `make_batch` (target ids), `states` per row."""
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    padded = torch.zeros(*input_ids.shape, states[0].shape[-1])
    for row, row_states in enumerate(states):
        length = min(len(row_states), input_ids.shape[1])
        padded[row, :length] = row_states[:length].float()
    outputs = unrolled_outputs(draft, input_ids, mask, padded, depths)
    subset = TokenSubset(draft.config.mtad_token_ids, draft.target_width)
    kept = subset.contains(batch["topk_ids"])
    ids = subset.to_draft(batch["topk_ids"]).where(kept, 0)
    losses = [
        topk_kl(logits, ids, batch["topk_logp"], kept)
        for logits in depth_logits(draft, outputs, batch["rows"], batch["columns"])
    ]
    return torch.stack(losses).mean()


@torch.inference_mode()
def feature_heldout_metrics(draft, target, samples, depths: int) -> dict:
    """Held-out expected acceptance per draft position (1..depths, paper warp), KL and greedy
    agreement at position 1, over every answer position of `samples` (one at a time)."""
    width = target.get_output_embeddings().weight.shape[0]
    ids = torch.tensor(draft.config.mtad_token_ids, dtype=torch.long)
    accept = torch.zeros(depths, dtype=torch.float64)
    kl = agree = 0.0
    positions = 0
    for sample in samples:
        input_ids = sample.ids[None].long()
        columns = torch.arange(sample.start, len(sample.ids) - 1)
        if not len(columns):
            continue
        rows = torch.zeros_like(columns)
        mask = torch.ones_like(input_ids)
        states, teacher = target_signal(target, input_ids, mask, draft.config.feature_layers, rows, columns)
        outputs = unrolled_outputs(draft, input_ids, mask, states, depths)
        p = warp(teacher, PAPER_SAMPLING)
        for depth, logits in enumerate(depth_logits(draft, outputs, rows, columns)):
            full = logits.new_full((len(columns), width), float("-inf"))
            full[:, ids] = logits
            accept[depth] += float(torch.minimum(p, warp(full, PAPER_SAMPLING)).sum())
            if depth == 0:
                kl += float(subset_kl(teacher, logits, ids)) * len(columns)
                agree += float((teacher.argmax(-1) == full.argmax(-1)).float().sum())
        positions += len(columns)
    scale = max(positions, 1)
    return {
        "acceptance_per_position": [round(float(a) / scale, 4) for a in accept],
        "acceptance": round(float(accept[0]) / scale, 4),
        "kl": round(kl / scale, 4),
        "greedy_agreement": round(agree / scale, 4),
        "positions": positions,
    }
