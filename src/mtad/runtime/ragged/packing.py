"""Prompts that join a batch together are prefilled in one forward, packed into one sequence.

Why: on a CPU, one forward over many tokens costs less than the same tokens in several forwards
(larger matrix products, one pass over the weights), and chat prompts begin alike (SmolLM2's
template puts the same 24-token system turn in front of every user message). When eight requests
arrive together, every one of them waits for all eight prefills before the batch's steps begin,
so prefill time is a floor on a batched request's latency (docs/results/batching-default-pair).

Layout (`pack`): the prompts' tokens are laid out in one row, without padding. Prompts are placed
in order; a prompt that begins like one placed before it (same tokens and the same per-token
inputs, e.g. a feature draft's states) shares those positions instead of feeding them again, so a
common prefix is computed once. Each prompt's *path* lists the packed positions of its tokens, in
order; a packed token at logical position p of its prompt takes position id p and sees exactly
the packed positions path[: p + 1] of a prompt it belongs to (prompts sharing it agree on those).
So every prompt computes what it computes alone, up to floating-point rounding, and its keys and
values are gathered along its path afterwards (`mtad.decoding.batch` joins them as a solo prefill's).

A packed forward holds at most `PACK_TOKENS` tokens: its attention mask and scores grow with the
square of its length. Longer prompts are prefilled alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Most tokens in one packed forward (the mask and attention scores are [tokens, tokens]).
PACK_TOKENS = 1024

#: Inputs a packed forward builds itself; a prompt that brings its own cannot be packed.
_LAYOUT_INPUTS = ("attention_mask", "position_ids")


@dataclass(frozen=True)
class Packing:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    visible: torch.Tensor  # [T, T] bool: [i, j] = packed token i sees packed token j
    paths: list[torch.Tensor]  # per prompt: [m] long, the packed positions of its tokens in order
    extras: dict[str, torch.Tensor]  # per-token inputs, packed [1, T, ...]

    @property
    def tokens(self) -> int:
        return self.input_ids.shape[1]


def packable(inputs: dict) -> bool:
    """A prompt's first forward can join a packed one: one row, causal, no layout of its own, and
    every tensor input given per token."""
    ids = inputs.get("input_ids")
    if ids is None or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] > PACK_TOKENS:
        return False
    if any(inputs.get(name) is not None for name in _LAYOUT_INPUTS):
        return False
    keep = inputs.get("logits_to_keep", 1)
    if not isinstance(keep, int) or not 0 <= keep <= ids.shape[1]:
        return False
    return all(
        value.dim() >= 2 and value.shape[:2] == ids.shape
        for name, value in inputs.items()
        if isinstance(value, torch.Tensor) and name != "input_ids"
    )


def groups(lengths: list[int]) -> list[list[int]]:
    """Prompt indices, in order, cut into groups of at most `PACK_TOKENS` tokens (before sharing)."""
    cut: list[list[int]] = []
    total = PACK_TOKENS + 1
    for index, length in enumerate(lengths):
        if total + length > PACK_TOKENS:
            cut.append([])
            total = 0
        cut[-1].append(index)
        total += length
    return cut


def pack(prompts: list[dict]) -> Packing:
    """One packed layout for the first forwards `prompts` (each `packable`)."""
    names = sorted(
        name for name, value in prompts[0].items() if isinstance(value, torch.Tensor) and name != "input_ids"
    )
    placed: list[tuple[dict, torch.Tensor]] = []  # (inputs, path) of the prompts placed so far
    ids: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    extras: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    paths: list[torch.Tensor] = []
    total = 0
    for inputs in prompts:
        if sorted(n for n, v in inputs.items() if isinstance(v, torch.Tensor) and n != "input_ids") != names:
            raise ValueError("packed prompts must bring the same per-token inputs")
        length = inputs["input_ids"].shape[1]
        shared, source = 0, None
        for other, path in placed:
            common = _common_prefix(inputs, other, names)
            if common > shared:
                shared, source = common, path
        own = torch.arange(total, total + length - shared)
        path = own if source is None else torch.cat([source[:shared], own])
        ids.append(inputs["input_ids"][0, shared:])
        positions.append(torch.arange(shared, length))
        for name in names:
            extras[name].append(inputs[name][0, shared:])
        paths.append(path)
        placed.append((inputs, path))
        total += length - shared
    visible = torch.zeros((total, total), dtype=torch.bool)
    for path in paths:  # a token sees its path up to itself (shared tokens: every sharer agrees)
        steps = path.shape[0]
        visible[path.unsqueeze(1), path.unsqueeze(0)] |= torch.ones((steps, steps), dtype=torch.bool).tril()
    device = prompts[0]["input_ids"].device
    return Packing(
        input_ids=torch.cat(ids).unsqueeze(0).to(device),
        position_ids=torch.cat(positions).unsqueeze(0).to(device),
        visible=visible,
        paths=paths,
        extras={name: torch.cat(parts).unsqueeze(0) for name, parts in extras.items()},
    )


def _common_prefix(inputs: dict, other: dict, names: list[str]) -> int:
    """How many leading tokens two prompts share, per-token inputs included."""
    a, b = inputs["input_ids"][0], other["input_ids"][0]
    length = min(a.shape[0], b.shape[0])
    same = a[:length] == b[:length]
    for name in names:
        x, y = inputs[name][0, :length], other[name][0, :length]
        same &= (x == y).reshape(length, -1).all(dim=1)
    different = (~same).nonzero()
    return int(different[0]) if different.numel() else length
