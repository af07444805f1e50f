"""Read me first: one step of speculative sampling (SD) and one of MTAD, over plain model calls.

No KV cache, no batch, no tree, no statistics: every forward reads the whole sequence again, so
each step is a few lines to hold against the papers (Leviathan et al. 2023 for SD; Qin et al.,
ICLR 2025 for MTAD). The library's loop (`mtad.decoding.loop`) does the same work with caches,
batches and every method; `tests/test_reference.py` checks that both give the same tokens on
tiny models, draw for draw from one seeded generator. Slow by design: a test oracle and a map.

Words: p = the target's distributions, q = the draft's, both warped alike (temperature, top-k,
top-p: `sampling.warp`); gamma = draft length; W = beam width; tau = MTAD's threshold. Sequences
are lists of token ids; models are transformers causal LMs sharing one vocabulary.
"""

from __future__ import annotations

import math

import torch

from mtad.config import SamplingConfig
from mtad.decoding.sampling import draw, normalise, sample, warp


@torch.inference_mode()
def probs(model, rows: list[list[int]], sampling: SamplingConfig, keep: int = 1) -> torch.Tensor:
    """Warped next-token distributions after each of the last `keep` positions of every row:
    [rows, keep, vocab]. Rows have one length."""
    logits = model(input_ids=torch.tensor(rows)).logits[:, -keep:].float()  # [rows, keep, vocab]
    return warp(logits, sampling)


def sd_step(target, draft, ids: list[int], gamma: int, sampling: SamplingConfig, generator) -> list[int]:
    """One round of speculative sampling after `ids`: the 1..gamma + 1 tokens it commits. Lossless."""
    # 1. draft: gamma tokens, each drawn from q after the ones before it
    drafted, q = [], []
    for _ in range(gamma):
        q_j = probs(draft, [ids + drafted], sampling)[0, -1]  # [vocab]
        drafted.append(int(sample(q_j[None], generator)))
        q.append(q_j)
    # 2. verify: one target forward over the block gives p after every prefix
    p = probs(target, [ids + drafted], sampling, keep=gamma + 1)[0]  # [gamma + 1, vocab]
    # 3. accept x_j with probability min(1, p(x_j) / q(x_j)), left to right (u < p/q, no division)
    u = torch.rand(gamma, generator=generator)
    accepted = 0
    while accepted < gamma and u[accepted] * q[accepted][drafted[accepted]] < p[accepted][drafted[accepted]]:
        accepted += 1
    # 4. next token: at the first rejection from max(p - q, 0), renormalised (the recovered token);
    #    after a fully accepted block q is 0, so it is drawn from p (the bonus token)
    q_next = q[accepted] if accepted < gamma else torch.zeros_like(p[0])
    residual = (p[accepted] - q_next).clamp_min(0)
    if residual.sum() <= 0:  # p == q: a rejection had probability 0
        residual = p[accepted]
    return drafted[:accepted] + [int(sample(normalise(residual)[None], generator))]


def mtad_step(
    target, draft, ids: list[int], gamma: int, width: int, tau: float, sampling: SamplingConfig, generator
) -> list[int]:
    """One round of MTAD after `ids`: the 1..gamma + 1 tokens it commits. Not lossless, by design."""
    # 1. draft by beam sampling: W beams for gamma steps, all beams in one draft forward per step
    q0 = probs(draft, [ids], sampling)[0, -1]  # [vocab]
    first = draw(q0, width, generator)  # [W] first tokens, drawn with replacement
    beams = [[token] for token in first.tolist()]  # each beam's tokens
    beam_q = [[q0] for _ in beams]  # the q each of its tokens was drawn from
    joint = normalise(q0[first])  # [W] joint draft probability per beam, normalised by the sum
    for _ in range(1, gamma):
        q = probs(draft, [ids + beam for beam in beams], sampling)[:, -1]  # [W, vocab]
        scores = (joint[:, None] * q).flatten()  # [W * vocab]: joint(beam) * q(token | beam)
        picked = draw(scores, width, generator)  # W (beam, token) pairs over all beams x vocab
        parent, token = picked // q.shape[-1], picked % q.shape[-1]
        beams = [beams[b] + [t] for b, t in zip(parent.tolist(), token.tolist(), strict=True)]
        beam_q = [beam_q[b] + [q[b]] for b in parent.tolist()]
        joint = normalise(scores[picked])
    best = int(joint.argmax())  # the beam with the largest joint draft probability
    block, q_block = beams[best], torch.stack(beam_q[best])  # [gamma], [gamma, vocab]
    # 2. verify: one target forward over the block gives p after every prefix
    p = probs(target, [ids + block], sampling, keep=gamma + 1)[0]  # [gamma + 1, vocab]
    # 3. accept the longest prefix whose joint ratio prod p(x_j) / prod q(x_j) exceeds tau, even if
    #    a shorter one fails (later tokens may make up for it); a token with p = 0 fails every prefix
    x = torch.tensor(block)[:, None]
    p_x, q_x = p[:gamma].gather(-1, x)[:, 0], q_block.gather(-1, x)[:, 0]  # [gamma] each
    log_terms = torch.where(p_x > 0, p_x.log() - q_x.log(), torch.full_like(p_x, -math.inf))
    log_ratio = log_terms.cumsum(0).nan_to_num(nan=-math.inf)  # [gamma]: log ratio of each prefix
    passing = (log_ratio > math.log(tau)).nonzero()
    accepted = int(passing[-1]) + 1 if len(passing) else 0
    # 4. one token from p at the first position not accepted (not a residual: MTAD is not lossless)
    return block[:accepted] + [int(sample(p[accepted][None], generator))]


def generate(step, target, draft, prompt: list[int], max_new_tokens: int, seed: int, gamma: int,
             sampling: SamplingConfig, **settings) -> list[int]:  # fmt: skip
    """`step` (`sd_step` or `mtad_step`, with its `settings`) until `max_new_tokens` tokens; a round
    drafts at most what the budget holds, and none (a plain target step) when it holds one token."""
    generator = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    while len(tokens) < max_new_tokens:
        n = min(gamma, max_new_tokens - len(tokens) - 1)
        if n == 0:
            p = probs(target, [prompt + tokens], sampling)[0]  # [1, vocab]
            tokens.append(int(sample(p, generator)))
        else:
            tokens += step(
                target, draft, prompt + tokens, n, sampling=sampling, generator=generator, **settings
            )
    return tokens
