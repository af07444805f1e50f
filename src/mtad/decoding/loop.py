"""The one decode loop: propose -> verify -> commit. Every method runs through it.

A method is a proposer (who drafts the block, and how) plus an acceptance rule (pure function in
`mtad.decoding.acceptance`). Target-only methods propose an empty block, so `ar` is the same loop with
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

from mtad.config import SamplingConfig, StopConfig
from mtad.decoding import pricing
from mtad.decoding.adaptive import GammaPolicy, NodePolicy
from mtad.decoding.drafts import ModelFreeDraft, TokenDrafter
from mtad.decoding.drafts.base import tail
from mtad.decoding.drafts.hybrid import model_drafter
from mtad.decoding.drafts.proposers import row_contexts, sizes_itself
from mtad.decoding.methods import TARGET_ONLY
from mtad.decoding.proposals import empty_proposal
from mtad.decoding.speculation import SpeculationConfig
from mtad.decoding.stopping import Stopper
from mtad.models import output_width
from mtad.runtime.cache import CachedModel, KVStore


@dataclass
class Stats:
    """Honest numbers for one generation. Definitions are the same for every method:

    acceptance_rate  = accepted draft tokens / drafted tokens (rounds x gamma, less the rounds
                       shortened at the end of the budget)
    block_efficiency = new tokens / target forward passes (the bonus/recovered token counts)
    tokens_per_s     = new tokens / wall time of the decode loop (no loading, no scoring)

    A ratio with nothing to divide by is None, not 0: `ar` drafts nothing, so its acceptance
    rate is undefined (the bench writes null for it too), and max_new_tokens 0 measures nothing.
    """

    new_tokens: int = 0
    rounds: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    tree_nodes: int = 0  # draft tree nodes the target verified, summed over rounds (tree methods)
    accepted_lengths: list[int] = field(default_factory=list)  # [L] = rounds that accepted L draft tokens
    draft_seconds: float = 0.0  # time a model-free draft spent drafting (lookups, q rows), in wall_time_s
    rounds_per_gamma: list[int] = field(default_factory=list)  # [g] = rounds that drafted g deep
    wall_time_s: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None

    @property
    def block_efficiency(self) -> float | None:
        return self.new_tokens / self.target_calls if self.target_calls else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 and self.new_tokens else None

    @property
    def ms_per_token(self) -> float | None:
        return 1000 * self.wall_time_s / self.new_tokens if self.new_tokens else None

    @property
    def mean_tree_size(self) -> float:
        return self.tree_nodes / self.rounds if self.rounds else 0.0

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
            "rounds_per_gamma",
            "tree_nodes",
            "mean_tree_size",
            "accepted_lengths",
            "draft_seconds",
            "wall_time_s",
            "tokens_per_s",
            "ms_per_token",
        )
        return {name: getattr(self, name) for name in names}

    def record_round(self, drafted: int, accepted: int, tree_nodes: int = 0) -> None:
        self.rounds += 1
        self.tree_nodes += tree_nodes
        self.accepted_lengths += [0] * (accepted + 1 - len(self.accepted_lengths))
        self.accepted_lengths[accepted] += 1
        self.rounds_per_gamma += [0] * (drafted + 1 - len(self.rounds_per_gamma))
        self.rounds_per_gamma[drafted] += 1
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


class Generation:
    """An iterable over committed blocks; `.result` is set once iteration ends.

    Closing the iterator early (e.g. a client disconnected) stops decoding at the next block.
    """

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | ModelFreeDraft | None,
        prompt: torch.Tensor,  # [1, prompt_len]
        spec: SpeculationConfig,
        sampling: SamplingConfig,
        stop: StopConfig,
        seed: int | None = None,
        tokenizer=None,
    ) -> None:
        self.vocab_size = output_width(target)
        self.target = CachedModel(target, self.vocab_size)
        # MTJD: the target drafts for itself, sharing one cache. A method without a draft gets none
        # even when one is passed (a server's pair): a feature draft would make every target
        # forward keep its hidden states for nothing.
        self.drafter = (
            self.target
            if spec.shape.self_drafted
            else drafter_for(draft, self.target)
            if draft is not None and spec.needs_draft
            else None
        )
        if isinstance(self.drafter, TokenDrafter):
            self.drafter.sampling = sampling
        self.prompt = prompt.to(self.target.device)
        self.spec, self.sampling = spec, sampling
        self.stopper = Stopper(stop, tokenizer)
        self.tokenizer = tokenizer
        self.seed = secrets.randbits(63) if seed is None else seed
        self.sequence = self.prompt
        self.result: GenerationResult | None = None
        self._started = False
        # Rows decoding together, as gamma "auto" prices them (a batch sets it; alone: 1).
        self.batch_rows: Callable[[], int] = lambda: 1
        # How gamma "auto" picks a round's depth (a batch agrees on one for all its rows).
        self.choose_depth: Callable[[GammaPolicy, int], int] = GammaPolicy.choose
        self.price(rows=1)

    def _draft_model(self) -> PreTrainedModel | None:
        """The model whose forwards draft (None: a model-free draft runs none)."""
        return None if isinstance(self.drafter, TokenDrafter) else self.drafter.model

    def price(self, rows: int) -> None:
        """Measure, before decoding, the forward costs gamma "auto" will read for up to `rows` rows
        a forward (`mtad.decoding.pricing`; once per process); a batch calls it as it grows."""
        if self.drafter is not None:
            pricing.price_rounds(self.target.model, self._draft_model(), self.spec, self.sampling, rows)

    def use_stores(self, target_store: KVStore, draft_store: KVStore | None) -> None:
        """Decode as a row of a batch (`mtad.decoding.batch`): keep the caches in the batch's, not in our
        own."""
        if self._started:
            raise RuntimeError("a generation joins a batch before its first block")
        self.target.store = target_store
        drafting = getattr(self.drafter, "model_part", self.drafter)  # a hybrid's draft model
        if isinstance(drafting, CachedModel) and drafting is not self.target:
            if draft_store is None:
                raise RuntimeError("this generation has a draft; its batch was made without one")
            drafting.store = draft_store

    def __iter__(self) -> Iterator[Block]:
        if self._started:
            raise RuntimeError("a Generation decodes once; call mtad.stream again for another run")
        self._started = True
        method = self.spec.record
        target, drafter, stopper = self.target, self.drafter, self.stopper
        model_free = isinstance(drafter, TokenDrafter)
        proposer = (method.model_free_proposer if model_free else method.proposer)(self.spec)
        accept = method.rule(self.spec)
        policy, priced_rows = None, self.batch_rows()
        caches = [m for m in (target, drafter) if isinstance(m, CachedModel)]  # what rounds roll back

        def costs(rows: int) -> pricing.Costs:  # priced before decoding (`price`)
            return pricing.costs(target.model, self._draft_model(), rows)

        # Sized by cost: a tree "auto", or under gamma "auto" a proposer that sizes its own round
        # from its draft's confidence (a model-free chain); else gamma "auto" picks a depth.
        sized = self.spec.sized_by_cost or (self.spec.adaptive and sizes_itself(proposer))
        if self.spec.adaptive and proposer is not None and not sized:
            policy = GammaPolicy(self.spec, costs(priced_rows))
        sizing = NodePolicy(costs(priced_rows)) if sized and proposer is not None else None
        if sizing is not None:
            proposer = partial(proposer, sizer=sizing.choose)
        generators = _Generators(self.seed)
        stats = Stats()
        sequence = self.prompt  # [1, committed]
        generated: list[int] = []
        streamed_chars = 0
        finish = "length" if stopper.stop.max_new_tokens == 0 else None
        start = time.perf_counter()
        while finish is None:
            budget = stopper.stop.max_new_tokens - len(generated)
            if (policy or sizing) and self.batch_rows() != priced_rows:  # the batch changed: so did prices
                priced_rows = self.batch_rows()
                if policy:
                    policy.use_costs(costs(priced_rows))
                if sizing:
                    sizing.use_costs(costs(priced_rows))
            # Draft no more than the budget can hold: the round always adds one target token.
            depth = self.choose_depth(policy, budget - 1) if policy else self.spec.depth
            n = min(depth, budget - 1) if proposer else 0
            if n > 0 and not drafter.ready(sequence):  # a feature draft waits for the target's prefill
                n = 0
            # 1. propose
            if n > 0:
                proposal = proposer(drafter, sequence, n, self.sampling, generators.on(drafter.device))
            else:
                proposal = empty_proposal(sequence, self.vocab_size)
            # 2. verify: one target forward over what it has not seen (pending tokens + block or tree)
            history = model_free and drafter.learns_from_prompt and target.length == 0  # the prefill
            p = proposal.verify(target, sequence, self.sampling, history=history)
            if model_free:  # a model-free draft learns from the rows verification just made
                learning = time.perf_counter()
                contexts = row_contexts(proposal, sequence)
                earlier = p.shape[1] - len(contexts)  # the prompt's rows, when asked for
                contexts = [tail(sequence[:, : i + 1]) for i in range(earlier)] + contexts
                drafter.observe(contexts, p[0])
                p = p[:, earlier:]
                drafter.seconds += time.perf_counter() - learning
            drafted = proposal.depth  # a model-free draft may draft less than asked
            # 3. accept, on the target's device (a draft may live on another one)
            rule = accept if drafted > 0 else TARGET_ONLY
            verdict = rule(p, proposal.to(p.device), generators.on(target.device))
            path, next_token = verdict.path(), int(verdict.next_token[0])
            # 4. commit (stop conditions first: nothing past them is appended or streamed)
            node_tokens = proposal.tokens.flatten().tolist()
            block, finish = stopper.cut(generated, [node_tokens[i] for i in path] + [next_token])
            # 5. roll back both caches to the committed prefix
            proposal.roll_back(caches, sequence.shape[1], path[: len(block)])
            generated += block
            sequence = torch.cat([sequence, torch.tensor([block], device=sequence.device)], dim=1)
            self.sequence = sequence  # prompt + committed tokens, for inspection between blocks
            # 6. statistics (and what gamma "auto" learns from the round)
            if policy:
                policy.observe(drafted, len(path))
            if sizing and n > 0:
                sizing.observe(len(path))
            stats.record_round(drafted, len(path), tree_nodes=proposal.tree_nodes)
            text_delta = ""
            if self.tokenizer is not None:
                text = stopper.visible_text(generated, finished=finish is not None)
                text_delta, streamed_chars = text[streamed_chars:], max(streamed_chars, len(text))
            yield Block(block, text_delta)
        stats.wall_time_s = time.perf_counter() - start
        stats.new_tokens = len(generated)
        stats.target_calls = target.calls
        stats.draft_calls = drafter.calls if drafter is not None and drafter is not target else 0
        if model_free:
            stats.draft_seconds = drafter.seconds
            drafter.finish(sequence[0].tolist())
        text = stopper.visible_text(generated, finished=True) if self.tokenizer is not None else None
        self.result = GenerationResult(generated, text, stats, finish, self.seed)


def drafter_for(draft: PreTrainedModel | ModelFreeDraft, target: CachedModel) -> CachedModel | TokenDrafter:
    """The drafting model for `draft`: a feature draft reads `target`'s states; a model-free
    draft makes this request's drafter."""
    if isinstance(draft, ModelFreeDraft):
        return draft.drafter(target)
    return model_drafter(draft, target)


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
