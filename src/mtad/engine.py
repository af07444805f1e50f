"""The one decode loop: propose -> verify -> commit. Every method runs through it.

A method is a proposer (who drafts the block, and how) plus an acceptance rule (pure function in
`mtad.acceptance`). Target-only methods propose an empty block, so `ar` is the same loop with
nothing to verify; MTJD lets the target draft for itself, so its "verification" only adds the
target distribution after the block.

One round, batch of one prompt (tensors keep a leading row dimension for batches later):
    1. propose   the drafter returns n <= gamma tokens and the q they were drawn from
    2. verify    one target forward over [tokens the target has not seen] + block -> p [n + 1]
    3. accept    the method's rule -> accepted prefix length and the next (recovered/bonus) token
    4. commit    cut at max_new_tokens, EOS, stop strings; append; stream the block
    5. roll back both caches to the committed prefix
    6. record statistics
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers import PreTrainedModel

from mtad import acceptance
from mtad.cache import CachedModel
from mtad.config import SamplingConfig, SpeculationConfig, StopConfig
from mtad.drafting import Proposal, beam_sample, chain_sample, empty_proposal
from mtad.sampling import warp
from mtad.stopping import Stopper


@dataclass
class Stats:
    """Honest numbers for one generation. Definitions are the same for every method:

    acceptance_rate  = accepted draft tokens / drafted tokens (rounds x gamma, less the rounds
                       shortened at the end of the budget)
    block_efficiency = new tokens / target forward passes (the bonus/recovered token counts)
    tokens_per_s     = new tokens / wall time of the decode loop (no loading, no scoring)
    """

    new_tokens: int = 0
    rounds: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def block_efficiency(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.wall_time_s / self.new_tokens if self.new_tokens else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        return [
            a / d if d else 0.0
            for a, d in zip(self.accepted_per_position, self.drafted_per_position, strict=True)
        ]

    def as_dict(self) -> dict:
        names = (
            "new_tokens",
            "rounds",
            "target_calls",
            "draft_calls",
            "drafted_tokens",
            "accepted_tokens",
            "acceptance_rate",
            "block_efficiency",
            "acceptance_per_position",
            "wall_time_s",
            "tokens_per_s",
            "ms_per_token",
        )
        return {name: getattr(self, name) for name in names}

    def record_round(self, drafted: int, accepted: int) -> None:
        self.rounds += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        grow = max(0, drafted - len(self.drafted_per_position))
        self.drafted_per_position += [0] * grow
        self.accepted_per_position += [0] * grow
        for j in range(drafted):
            self.drafted_per_position[j] += 1
            self.accepted_per_position[j] += j < accepted


@dataclass(frozen=True)
class Block:
    """What one round committed: token ids and the text they add (for streaming)."""

    tokens: list[int]
    text: str


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str | None
    stats: Stats
    finish_reason: str  # "length" or "stop"
    seed: int  # the seed actually used (drawn at random when none was given): rerun with it

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "seed": self.seed,
            "stats": self.stats.as_dict(),
        }


Proposer = Callable[[CachedModel, torch.Tensor, int, SamplingConfig, torch.Generator], Proposal]


def _method_parts(spec: SpeculationConfig) -> tuple[Proposer | None, Callable]:
    """(proposer, acceptance rule) for a method; proposer None = nothing drafted."""
    beams = partial(beam_sample, width=spec.beam_width, with_replacement=spec.with_replacement)
    return {
        "ar": (None, acceptance.accept_none),
        "greedy": (None, acceptance.accept_none),
        "sd": (chain_sample, acceptance.speculative),
        "mtad": (beams, partial(acceptance.mtad_joint, threshold=spec.threshold)),
        "mtjd": (beams, acceptance.accept_all),
    }[spec.method]


class Generation:
    """An iterable over committed blocks; `.result` is set once iteration ends.

    Closing the iterator early (e.g. a client disconnected) stops decoding at the next block.
    """

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None,
        prompt: torch.Tensor,  # [1, prompt_len]
        spec: SpeculationConfig,
        sampling: SamplingConfig,
        stop: StopConfig,
        seed: int | None = None,
        tokenizer=None,
    ) -> None:
        self.vocab_size = _vocab_size(target)
        self.target = CachedModel(target, self.vocab_size)
        # MTJD: the target drafts for itself, sharing one cache.
        self.drafter = (
            self.target if spec.method == "mtjd" else CachedModel(draft, self.vocab_size) if draft else None
        )
        self.prompt = prompt.to(self.target.device)
        self.spec, self.sampling = spec, sampling
        self.stopper = Stopper(stop, tokenizer)
        self.tokenizer = tokenizer
        self.seed = secrets.randbits(63) if seed is None else seed
        self.sequence = self.prompt
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[Block]:
        proposer, accept = _method_parts(self.spec)
        target, drafter, stopper = self.target, self.drafter, self.stopper
        generators = _Generators(self.seed)
        stats = Stats()
        sequence = self.prompt  # [1, committed]
        generated: list[int] = []
        streamed_chars = 0
        finish = "length" if stopper.stop.max_new_tokens == 0 else None
        start = time.perf_counter()
        while finish is None:
            budget = stopper.stop.max_new_tokens - len(generated)
            # Draft no more than the budget can hold: the round always adds one target token.
            n = min(self.spec.gamma, budget - 1) if proposer else 0
            # 1. propose
            if n > 0:
                proposal = proposer(drafter, sequence, n, self.sampling, generators.on(drafter.device))
            else:
                proposal = empty_proposal(sequence, self.vocab_size)
            tokens = proposal.tokens.to(target.device)  # [1, n]
            q = proposal.probs.to(target.device)  # [1, n, vocab]
            # 2. verify: feed what the target has not seen (pending tokens + block) in one forward
            feed = torch.cat([sequence, tokens], dim=1)[:, target.length :]
            keep = min(n + 1, feed.shape[1])
            p = warp(target.forward(feed, keep=keep), self.sampling)  # [1, keep, vocab]
            if keep < n + 1:  # the target drafted the block itself: its q rows are its p rows
                p = torch.cat([q[:, : n + 1 - keep], p], dim=1)
            # 3. accept
            verdict = accept(p, q, tokens, generators.on(target.device))
            accepted = int(verdict.accepted[0])
            # 4. commit (stop conditions first: nothing past them is appended or streamed)
            block = tokens[0, :accepted].tolist() + [int(verdict.next_token[0])]
            block, finish = stopper.cut(generated, block)
            # 5. roll back: cache entries past the old sequence + accepted draft tokens are stale
            valid = sequence.shape[1] + min(accepted, len(block))
            target.truncate(valid)
            if drafter is not None:
                drafter.truncate(valid)
            generated += block
            sequence = torch.cat([sequence, torch.tensor([block], device=sequence.device)], dim=1)
            self.sequence = sequence  # prompt + committed tokens, for inspection between blocks
            # 6. statistics
            stats.record_round(n, accepted)
            text_delta = ""
            if self.tokenizer is not None:
                text = stopper.decode(generated)
                safe = stopper.stream_safe_length(text, finished=finish is not None)
                text_delta, streamed_chars = text[streamed_chars:safe], max(streamed_chars, safe)
            yield Block(block, text_delta)
        stats.wall_time_s = time.perf_counter() - start
        stats.new_tokens = len(generated)
        stats.target_calls = target.calls
        stats.draft_calls = drafter.calls if drafter is not None and drafter is not target else 0
        text = stopper.decode(generated) if self.tokenizer is not None else None
        self.result = GenerationResult(generated, text, stats, finish, self.seed)


class _Generators:
    """One seeded generator per device, so a draft on another device stays reproducible."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.by_device: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        if device not in self.by_device:
            offset = len(self.by_device)
            self.by_device[device] = torch.Generator(device=device).manual_seed(self.seed + offset)
        return self.by_device[device]


def _vocab_size(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size
