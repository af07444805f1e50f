"""Proposers: how a round's draft block is made.

A proposer gets the model that drafts, the committed sequence and a block length n, and returns
a `Proposal`: the draft tokens and the warped draft distributions they were drawn from. It
leaves the drafting model's cache holding the committed sequence plus the block's first n - 1
tokens (the last draft token is never fed); the engine truncates it after acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtad.cache import CachedModel
from mtad.config import SamplingConfig
from mtad.sampling import normalise, sample, warp


@dataclass(frozen=True)
class Proposal:
    tokens: torch.Tensor  # [rows, n] draft tokens x_1..x_n
    probs: torch.Tensor  # [rows, n, vocab] q(. | x_<j) for each draft position


def empty_proposal(sequence: torch.Tensor, vocab_size: int) -> Proposal:
    """Target-only methods draft nothing."""
    rows = sequence.shape[0]
    return Proposal(
        tokens=sequence.new_zeros((rows, 0)),
        probs=torch.zeros((rows, 0, vocab_size), device=sequence.device),
    )


def chain_sample(
    drafter: CachedModel, sequence: torch.Tensor, n: int, sampling: SamplingConfig, generator: torch.Generator
) -> Proposal:
    """Draw n tokens one at a time from the draft (speculative sampling's proposer)."""
    feed = sequence[:, drafter.length :]  # the committed tokens the draft has not seen yet
    tokens, probs = [], []
    for _ in range(n):
        q = warp(drafter.forward(feed)[:, -1], sampling)  # [rows, vocab]
        token = sample(q, generator)  # [rows]
        tokens.append(token)
        probs.append(q)
        feed = token.unsqueeze(-1)
    return Proposal(torch.stack(tokens, dim=1), torch.stack(probs, dim=1))


def beam_sample(
    drafter: CachedModel,
    sequence: torch.Tensor,
    n: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    width: int,
    with_replacement: bool = True,
) -> Proposal:
    """Beam sampling (paper brief, MTAD step 1): keep `width` beams for n steps, return the best.

    Step 0 draws `width` tokens from q(. | prefix). Step d draws `width` (beam, token) pairs from
    joint(beam) * q(token | beam), normalised over all beams x vocab; the new joints are the picked
    scores, normalised by their sum (the official code's softmax over probabilities flattens beam
    weights; we do not repeat it). All beams decode in one batched forward per step. The result is
    the beam with the largest joint draft probability, with its per-position distributions q.
    Batch of one prompt only: rows of the cache are beams here.
    """
    if sequence.shape[0] != 1:
        raise NotImplementedError("beam sampling drafts for one prompt at a time")
    feed = sequence[:, drafter.length :]
    q = warp(drafter.forward(feed)[:, -1], sampling)  # [1, vocab]
    first = _draw(q[0], width, with_replacement, generator)  # [beams]
    joint = normalise(q[0, first])  # [beams]
    beam_tokens = first.unsqueeze(-1)  # [beams, steps]
    beam_probs = q.expand(len(first), -1).unsqueeze(1)  # [beams, steps, vocab]
    if n > 1:
        drafter.repeat(len(first))
    for _ in range(1, n):
        q = warp(drafter.forward(beam_tokens[:, -1:])[:, -1], sampling)  # [beams, vocab]
        scores = (joint.unsqueeze(-1) * q).flatten()  # [beams * vocab]
        picked = _draw(scores, width, with_replacement, generator)  # [beams']
        parent, token = picked // q.shape[-1], picked % q.shape[-1]
        joint = normalise(scores[picked])
        beam_tokens = torch.cat([beam_tokens[parent], token.unsqueeze(-1)], dim=1)
        beam_probs = torch.cat([beam_probs[parent], q[parent].unsqueeze(1)], dim=1)
        drafter.reorder(parent)
    best = int(joint.argmax())
    if n > 1:
        drafter.select(best)
    return Proposal(beam_tokens[best : best + 1], beam_probs[best : best + 1])


def _draw(
    weights: torch.Tensor, count: int, with_replacement: bool, generator: torch.Generator
) -> torch.Tensor:
    """`count` indices drawn from non-negative `weights` [k]; without replacement, at most the support."""
    if not with_replacement:
        count = min(count, int((weights > 0).sum()))
    return torch.multinomial(normalise(weights), count, replacement=with_replacement, generator=generator)
