"""Proposers: how a round's draft block is made.

A proposer gets the model that drafts, the committed sequence and a block length n, and returns
a `Round` (`Proposal` for a chain, `TreeProposal` for a tree): the draft tokens and the warped draft
distributions they were drawn from. It leaves the drafting model's cache holding the committed
sequence plus the block's first n - 1 tokens (the last draft token is never fed); the round rolls
it back after acceptance.

State across rounds lives in the drafting model (`mtad.runtime.cache`), which the engine keeps for the
whole generation and tells each round's outcome through `Round.roll_back`. A draft that reads the
target's hidden states (`mtad.runtime.cache.FeatureDrafter`) receives them through the target's cache: the
target keeps, for every position it has cached, the `hidden_states` layers the draft's config
names (`feature_layers`: 0 = embeddings, L = the last layer after the final norm), made by the
verification forward of each round and rolled back with the target's cache; a drafter that is not
ready to draft (it needs the target's states up to the last committed token) makes the engine take
a target-only round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from mtad.config import SamplingConfig
from mtad.decoding.sampling import distributions, draw, normalise, sample
from mtad.decoding.tree import TreeBuffers, paths_from_parents, tree_from_paths, tree_inputs
from mtad.runtime.cache import CachedModel


class Round(Protocol):
    """What a proposer returns and the engine needs, whatever the draft's shape (chain or tree):
    the draft tokens, how the target verifies them, which cached positions an accepted path keeps.
    The engine calls nothing else, so a new shape of draft needs no change in the engine."""

    tokens: torch.Tensor
    probs: torch.Tensor

    @property
    def tree_nodes(self) -> int: ...  # draft nodes verified as a tree (0 for a chain)

    @property
    def depth(self) -> int: ...  # draft tokens along the longest path (0: nothing drafted)

    def to(self, device: torch.device) -> Round: ...

    def verify(
        self, target: CachedModel, sequence: torch.Tensor, sampling: SamplingConfig, history: bool = False
    ) -> torch.Tensor:
        """Target distributions [1, 1 + nodes, vocab]: after the committed `sequence`, then after
        each draft node, from one forward over what the target has not seen. `history`: first also
        the rows after each committed token it had not seen but the last ([1, pending - 1 + 1 +
        nodes, vocab]; a model-free draft learns from a prompt's rows)."""
        ...

    def roll_back(self, models: list[CachedModel], context: int, path: list[int]) -> None:
        """Keep each model's cached context plus the committed nodes of `path`; drop the rest."""
        ...


@dataclass(frozen=True)
class Proposal:
    """A chain of draft tokens (sd, mtad, mtjd; empty for target-only rounds)."""

    tokens: torch.Tensor  # [rows, n] draft tokens x_1..x_n
    probs: torch.Tensor  # [rows, n, vocab] q(. | x_<j) for each draft position
    tree_nodes = 0

    @property
    def depth(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device) -> Proposal:
        """The proposal on `device` (the target's, where the acceptance rules meet p)."""
        return Proposal(self.tokens.to(device), self.probs.to(device))

    def verify(
        self, target: CachedModel, sequence: torch.Tensor, sampling: SamplingConfig, history: bool = False
    ) -> torch.Tensor:
        n = self.tokens.shape[1]
        feed = torch.cat([sequence, self.tokens.to(sequence.device)], dim=1)[:, target.length :]
        keep = feed.shape[1] if history else min(n + 1, feed.shape[1])
        p = distributions(target, feed, sampling, keep)  # [1, keep, vocab]
        if keep < n + 1:  # the target drafted the block itself (MTJD): its q rows are its p rows
            p = torch.cat([self.probs[:, : n + 1 - keep].to(p.device), p], dim=1)
        return p

    def roll_back(self, models: list[CachedModel], context: int, path: list[int]) -> None:
        for model in models:  # the committed nodes of a chain are a prefix
            model.truncate(context + len(path))


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
        q = distributions(drafter, feed, sampling)[:, -1]  # [rows, vocab]
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
    q = distributions(drafter, feed, sampling)[:, -1]  # [1, vocab]
    first = _draw(q[0], width, with_replacement, generator)  # [beams]
    joint = normalise(q[0, first])  # [beams]
    # Per step: each beam's new token, its parent beam and the q it was drawn from. Only the best
    # beam's path is gathered at the end, not [beams, steps, vocab] copied at every step.
    tokens, parents, qs = [first], [torch.zeros_like(first)], [q]  # step 0: every beam's parent is the root
    if n > 1:
        drafter.repeat(len(first))
    for _ in range(1, n):
        q = distributions(drafter, tokens[-1].unsqueeze(-1), sampling)[:, -1]  # [beams, vocab]
        parent, token, joint = _beam_step(joint, q, width, with_replacement, generator)
        tokens.append(token)
        parents.append(parent)
        qs.append(q)
        drafter.reorder(parent)
    best = int(joint.argmax())
    if n > 1:
        drafter.select(best)
    path_tokens, path_probs, beam = [], [], best
    for step in reversed(range(n)):  # walk the best beam back to the root
        parent = int(parents[step][beam])
        path_tokens.append(int(tokens[step][beam]))
        path_probs.append(qs[step][parent])
        beam = parent
    return Proposal(
        torch.tensor([path_tokens[::-1]], device=first.device), torch.stack(path_probs[::-1]).unsqueeze(0)
    )


def _beam_step(
    joint: torch.Tensor,  # [beams] normalised joint draft probabilities
    q: torch.Tensor,  # [beams, vocab] draft distribution after each beam
    width: int,
    with_replacement: bool,
    generator: torch.Generator,
    group_by_parent: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `width` (beam, token) pairs from joint(beam) * q(token | beam) over all beams x vocab.

    Returns parent beam [beams'], token [beams'] and the new joints normalised by their sum. With
    group_by_parent the picks are ordered by parent (tree node order); the draws are the same.
    """
    scores = (joint.unsqueeze(-1) * q).flatten()  # [beams * vocab]
    picked = _draw(scores, width, with_replacement, generator)
    if group_by_parent:
        picked = picked.sort().values
    return picked // q.shape[-1], picked % q.shape[-1], normalise(scores[picked])


def _draw(
    weights: torch.Tensor, count: int, with_replacement: bool, generator: torch.Generator
) -> torch.Tensor:
    """`count` indices drawn from non-negative `weights` [k]; without replacement, at most the support."""
    if with_replacement:
        return draw(weights, count, generator)
    count = min(count, int((weights > 0).sum()))
    return torch.multinomial(normalise(weights), count, replacement=False, generator=generator)


@dataclass(frozen=True)
class TreeProposal:
    """A draft token tree. Node i carries tokens[i]; the draft cache holds the context followed by
    every node above the last depth, in node order (the last depth is never fed)."""

    tokens: torch.Tensor  # [nodes] draft tokens in node order
    tree: TreeBuffers
    # [1 + nodes, vocab] q at the root context and after each fed node (0 elsewhere); 0 wide when
    # the children were chosen, not drawn (`drafts.proposers.cost_sized_tree`): no rule reads q
    probs: torch.Tensor
    log_joint: torch.Tensor  # [nodes] log q of each node's root-to-node path
    best_leaf: int  # the final beam with the largest draft joint (beam trees), else -1

    @property
    def tree_nodes(self) -> int:
        return self.tokens.numel()

    @property
    def depth(self) -> int:
        return int(self.tree.depths.max()) if self.tokens.numel() else 0

    def to(self, device: torch.device) -> TreeProposal:
        """The proposal's tensors on `device` (the target's); the tree's index buffers stay put."""
        moved = (self.tokens.to(device), self.probs.to(device), self.log_joint.to(device))
        return TreeProposal(moved[0], self.tree, moved[1], moved[2], self.best_leaf)

    def verify(
        self, target: CachedModel, sequence: torch.Tensor, sampling: SamplingConfig, history: bool = False
    ) -> torch.Tensor:
        pending = sequence[:, target.length :]  # committed tokens the target has not seen
        nodes = self.tokens.numel()
        positions, mask = tree_inputs(self.tree, sequence.shape[1], pending.shape[1], 0, nodes,
                                      dtype=target.dtype, device=target.device)  # fmt: skip
        feed = torch.cat([pending, self.tokens.unsqueeze(0).to(pending.device)], dim=1)
        keep = feed.shape[1] if history else nodes + 1
        return distributions(target, feed, sampling, keep, positions, mask)

    def roll_back(self, models: list[CachedModel], context: int, path: list[int]) -> None:
        for model in models:
            fed = model.length - context  # the target fed every node, the draft all but the last depth
            kept = [context + node for node in path if node < fed]
            model.keep(torch.cat([torch.arange(context), torch.tensor(kept, dtype=torch.long)]))


class _TreeBuilder:
    """Grows a draft tree depth by depth; each depth's frontier is fed in one tree-masked forward."""

    def __init__(self, drafter: CachedModel, sequence: torch.Tensor, sampling: SamplingConfig) -> None:
        self.drafter, self.sampling = drafter, sampling
        self.context = sequence.shape[1]
        root = distributions(drafter, sequence[:, drafter.length :], sampling)[0, -1]  # [vocab]
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.log_joint: list[float] = []
        self.rows: dict[int, torch.Tensor] = {-1: root}  # q after the root (-1) and after fed nodes

    def add(self, parents: list[int], tokens: list[int]) -> list[int]:
        """Append children (grouped by parent, parents in node order); returns their node indices."""
        start = len(self.tokens)
        for parent, token in zip(parents, tokens, strict=True):
            self.log_joint.append(
                (self.log_joint[parent] if parent >= 0 else 0.0) + _log(self.rows[parent][token])
            )
        self.tokens += tokens
        self.parents += parents
        return list(range(start, len(self.tokens)))

    def expand(self, frontier: list[int]) -> torch.Tensor:
        """Feed the frontier nodes (tree attention); q after each of them [len(frontier), vocab]."""
        tree = tree_from_paths(paths_from_parents(self.parents))
        positions, mask = tree_inputs(tree, self.context, pending=0, fed=frontier[0], new=len(frontier),
                                      dtype=self.drafter.dtype, device=self.drafter.device)  # fmt: skip
        feed = torch.tensor([[self.tokens[i] for i in frontier]])
        q = distributions(self.drafter, feed, self.sampling, len(frontier), positions, mask)[0]
        self.rows.update({node: q[k] for k, node in enumerate(frontier)})
        return q

    def proposal(self, best_leaf: int = -1) -> TreeProposal:
        root = self.rows[-1]
        probs = torch.stack(
            [root] + [self.rows.get(i, torch.zeros_like(root)) for i in range(len(self.tokens))]
        )
        return TreeProposal(
            tokens=torch.tensor(self.tokens, dtype=torch.long),
            tree=tree_from_paths(paths_from_parents(self.parents)),
            probs=probs,
            log_joint=torch.tensor(self.log_joint, dtype=torch.float64),
            best_leaf=best_leaf,
        )


def beam_tree(
    drafter: CachedModel,
    sequence: torch.Tensor,
    n: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    width: int,
    with_replacement: bool = True,
) -> TreeProposal:
    """MMTAD's draft: the beam sampling of `beam_sample`, keeping every beam of every step as a tree.

    Same draws as `beam_sample` (with width 1 the two are identical); the beams of a step are fed
    together with tree attention on one shared cache instead of as separate cache rows.
    """
    builder = _TreeBuilder(drafter, sequence, sampling)
    root = builder.rows[-1]
    first = _draw(root, width, with_replacement, generator)
    weights = normalise(root[first])
    frontier = builder.add([-1] * len(first), first.tolist())
    for _ in range(1, n):
        q = builder.expand(frontier)  # [beams, vocab]
        parent, token, weights = _beam_step(
            weights, q, width, with_replacement, generator, group_by_parent=True
        )
        frontier = builder.add([frontier[b] for b in parent.tolist()], token.tolist())
    return builder.proposal(best_leaf=frontier[int(weights.argmax())])


def branching_tree(
    drafter: CachedModel,
    sequence: torch.Tensor,
    branching: tuple[int, ...],
    sampling: SamplingConfig,
    generator: torch.Generator,
    *,
    with_replacement: bool = True,
) -> TreeProposal:
    """SpecInfer's token tree: branching[d] children drawn from q after every node of depth d."""
    builder = _TreeBuilder(drafter, sequence, sampling)
    frontier = [-1]
    for depth, fanout in enumerate(branching):
        q = builder.rows[-1].unsqueeze(0) if depth == 0 else builder.expand(frontier)
        parents, tokens = [], []
        for k, node in enumerate(frontier):
            children = _draw(q[k], fanout, with_replacement, generator).tolist()
            parents += [node] * len(children)
            tokens += children
        frontier = builder.add(parents, tokens)
    return builder.proposal()


def _log(probability: torch.Tensor) -> float:
    value = float(probability)
    return math.log(value) if value > 0 else -math.inf
