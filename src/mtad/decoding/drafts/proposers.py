"""Proposers over a model-free draft: the same shapes as the model proposers (a chain, beams, a
beam tree, a branching tree) plus a tree sized each round by what verification costs, built from
`Candidates` lookups instead of forwards.

Draws follow the model proposers' rules (`mtad.decoding.proposals`): a chain samples each token
from q; beams draw `width` (beam, token) pairs from joint x q; a branching tree draws each node's
children from q. A path whose context has no candidates is not extended: a chain may come back
shorter than asked, a beam without candidates dies. The q rows handed to the acceptance rules are
the candidates spread to vocabulary width.

`cost_sized_tree` grows the tree best-first by the path's draft probability (EAGLE-2's ranking;
a parent always ranks above its children, so every prefix of the order is a tree) and keeps the
prefix that maximises expected tokens per second under the measured verification costs. Its
children are chosen, not sampled, so it is verified with `acceptance.ordered_candidates_tree`,
which is lossless for candidates fixed in advance.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable

import torch

from mtad.config import SamplingConfig
from mtad.decoding.drafts.base import CONTEXT_TOKENS, Candidates, TokenDrafter, tail
from mtad.decoding.proposals import Proposal, TreeProposal, empty_proposal
from mtad.decoding.sampling import draw, normalise
from mtad.decoding.tree import path_to, paths_from_parents, tree_from_paths

#: (drafter, committed sequence [1, len], depth n, warp, generator) -> the round's draft.
TokenProposer = Callable[[TokenDrafter, torch.Tensor, int, SamplingConfig, torch.Generator], object]


class _Tree:
    """Nodes grown in any order (parent before child); `candidates` are looked up once per node."""

    def __init__(self, drafter: TokenDrafter, sequence: torch.Tensor, sampling: SamplingConfig) -> None:
        self.drafter, self.sampling = drafter, sampling
        self.root = tail(sequence)
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.log_joint: list[float] = []
        self.paths: list[tuple[int, ...]] = []  # each node's tokens from the root's child down
        self.looked_up: dict[int, Candidates | None] = {}  # node (-1 = root) -> its candidates

    def context(self, node: int) -> tuple[int, ...]:
        return (self.root + (self.paths[node] if node >= 0 else ()))[-CONTEXT_TOKENS:]

    def path(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node` (empty for the root)."""
        nodes = []
        while node >= 0:
            nodes.append(node)
            node = self.parents[node]
        return nodes[::-1]

    def candidates(self, node: int) -> Candidates | None:
        if node not in self.looked_up:
            found = self.drafter.candidates(self.context(node))
            self.looked_up[node] = found.warped(self.sampling) if found is not None else None
        return self.looked_up[node]

    def add(self, parent: int, token: int, probability: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.paths.append((self.paths[parent] if parent >= 0 else ()) + (token,))
        base = self.log_joint[parent] if parent >= 0 else 0.0
        self.log_joint.append(base + (math.log(probability) if probability > 0 else -math.inf))
        return len(self.tokens) - 1

    def row(self, node: int) -> torch.Tensor:
        found = self.looked_up.get(node)
        if found is None:
            return torch.zeros(self.drafter.vocab_size)
        return found.dense(self.drafter.vocab_size)

    def chain(self, path: list[int]) -> Proposal:
        """The nodes of `path` (root's child first) as a chain proposal."""
        if not path:
            return empty_proposal(torch.zeros((1, 0), dtype=torch.long), self.drafter.vocab_size)
        rows = [self.row(-1)] + [self.row(node) for node in path[:-1]]
        return Proposal(torch.tensor([[self.tokens[n] for n in path]]), torch.stack(rows).unsqueeze(0))

    def proposal(self, keep: list[int] | None = None, best_leaf: int = -1, rows: bool = True) -> TreeProposal:
        """The tree of the nodes in `keep` (default all; closed under parents), in tree order.
        `rows` False: no q rows (0 wide), for children chosen, not drawn: no rule reads their q."""
        keep = list(range(len(self.tokens))) if keep is None else keep
        renumber = {old: new for new, old in enumerate(keep)}
        parents = [renumber.get(self.parents[node], -1) for node in keep]
        paths = paths_from_parents(parents)
        order = sorted(range(len(keep)), key=lambda i: (len(paths[i]), paths[i]))  # tree_from_paths' order
        nodes = [keep[i] for i in order]
        tree = tree_from_paths([paths[i] for i in order])
        position = {node: i for i, node in enumerate(nodes)}
        return TreeProposal(
            tokens=torch.tensor([self.tokens[node] for node in nodes], dtype=torch.long),
            tree=tree,
            probs=torch.stack([self.row(-1)] + [self.row(node) for node in nodes])
            if rows
            else torch.zeros((1 + len(nodes), 0)),
            log_joint=torch.tensor([self.log_joint[node] for node in nodes], dtype=torch.float64),
            best_leaf=position.get(best_leaf, -1),
        )


def _timed(propose):
    def timed(drafter: TokenDrafter, *args, **kwargs):
        start = time.perf_counter()
        try:
            return propose(drafter, *args, **kwargs)
        finally:
            drafter.seconds += time.perf_counter() - start

    timed.__name__ = timed.__qualname__ = propose.__name__
    timed.__doc__ = propose.__doc__
    return timed


def _pick(weights: torch.Tensor, count: int, with_replacement: bool, generator: torch.Generator) -> list[int]:
    """`count` indices drawn from non-negative `weights` (without replacement: at most the support)."""
    if with_replacement:
        return draw(weights, count, generator).tolist()
    count = min(count, int((weights > 0).sum()))
    return torch.multinomial(normalise(weights), count, replacement=False, generator=generator).tolist()


def _sizes_itself(propose):
    """Marks a proposer that takes `sizer` (an `adaptive.NodePolicy.choose`) and sizes its own
    round: the loop gives it one under gamma "auto" instead of choosing a depth for it."""
    propose.sizes_itself = True
    return propose


def sizes_itself(proposer) -> bool:
    """Whether `proposer` (or the function a `functools.partial` of it wraps) sizes its own round."""
    return getattr(getattr(proposer, "func", proposer), "sizes_itself", False)


def _next_step_pays(sizer, probabilities: list[float], reached: float, found: Candidates | None) -> bool:
    """Whether one more draft step pays (`chain`, `_beam_search`): a next node, expected at path
    probability reached x sum(q^2) (the q of the token a draw from q picks, on average), must
    raise the expected tokens per second `sizer` prices over the path so far."""
    expected = reached * float((found.probs * found.probs).sum()) if found is not None else 0.0
    return sizer(probabilities + [expected]) > len(probabilities)


@_sizes_itself
@_timed
def chain(drafter: TokenDrafter, sequence, n: int, sampling, generator, *,
          sizer: Callable[[list[float]], int] | None = None) -> Proposal:  # fmt: skip
    """sd's draft: up to n tokens, each drawn from q after the ones before (fewer where q runs out).

    With `sizer`, the chain is as long as its own confidence pays (EAGLE-2's ranking by path
    probability, with gamma "auto"'s measured costs): before each draw it asks whether the next
    node pays (`_next_step_pays`), and stops when not. The decision reads only q and the tokens
    drawn so far, and no drawn token is dropped: sd stays lossless.
    """
    tree, node, path = _Tree(drafter, sequence, sampling), -1, []
    reached, probabilities = 1.0, []  # the chain's path probability, and after each node
    for _ in range(n):
        found = tree.candidates(node)
        if found is None:
            break
        if sizer is not None and not _next_step_pays(sizer, probabilities, reached, found):
            break
        k = int(draw(found.probs, 1, generator))
        node = tree.add(node, int(found.ids[k]), float(found.probs[k]))
        path.append(node)
        reached *= float(found.probs[k])
        probabilities.append(reached)
    if sizer is not None:
        sizer(probabilities)  # the policy calibrates against the chain as drawn
    return tree.chain(path)


def _beam_search(tree: _Tree, n: int, width: int, with_replacement: bool, generator,
                 sizer: Callable[[list[float]], int] | None = None) -> tuple[list[int], int]:  # fmt: skip
    """The beam sampling of `mtad.decoding.proposals.beam_sample` over candidates; returns every
    node made and the final beam with the largest joint. With `sizer`, the search stops before a
    step that would not pay, as `chain` does, judged on the best beam's path probability."""
    beams, weights, probabilities = [-1], torch.ones(1), []
    for _ in range(n):
        scored = [(b, c) for b, c in ((b, tree.candidates(b)) for b in beams) if c is not None]
        if not scored:
            break
        if sizer is not None:  # judged on the leading beam, whose candidates `scored` holds
            lead = beams[int(weights.argmax())]
            reached = math.exp(tree.log_joint[lead]) if lead >= 0 else 1.0
            found = next((c for b, c in scored if b == lead), None)
            if not _next_step_pays(sizer, probabilities, reached, found):
                break
        owners = torch.cat([torch.full((len(c.ids),), i) for i, (_, c) in enumerate(scored)])
        scores = torch.cat([weights[beams.index(b)] * c.probs for b, c in scored])
        picked = sorted(_pick(scores, width, with_replacement, generator))  # grouped by parent
        offsets = [0] + torch.tensor([len(c.ids) for _, c in scored]).cumsum(0).tolist()
        new_beams = []
        for k in picked:
            owner = int(owners[k])
            beam, found = scored[owner]
            j = k - offsets[owner]
            new_beams.append(tree.add(beam, int(found.ids[j]), float(found.probs[j])))
        beams, weights = new_beams, normalise(scores[picked])
        probabilities.append(math.exp(tree.log_joint[beams[int(weights.argmax())]]))
    best = beams[int(weights.argmax())] if beams != [-1] else -1
    if sizer is not None:
        sizer(probabilities)  # the policy calibrates against the depth searched
    return beams, best


@_sizes_itself
@_timed
def beams(
    drafter, sequence, n, sampling, generator, *, width: int, with_replacement: bool = True,
    sizer: Callable[[list[float]], int] | None = None,
) -> Proposal:  # fmt: skip
    """mtad's draft: beam sampling over candidates, the best beam verified as a chain (as deep as
    its confidence pays, with `sizer`)."""
    tree = _Tree(drafter, sequence, sampling)
    _, best = _beam_search(tree, n, width, with_replacement, generator, sizer)
    return tree.chain(tree.path(best))


@_timed
def beam_tree(drafter, sequence, n, sampling, generator, *, width: int, with_replacement: bool = True):
    """mmtad's draft: every beam of every step as a tree node."""
    tree = _Tree(drafter, sequence, sampling)
    _, best = _beam_search(tree, n, width, with_replacement, generator)
    return _tree_or_empty(tree, best_leaf=best)


@_timed
def branching_tree(drafter, sequence, branching: tuple[int, ...], sampling, generator, *,
                   with_replacement: bool = True):  # fmt: skip
    """specinfer's draft from a branching config: branching[d] children drawn from q per node."""
    tree = _Tree(drafter, sequence, sampling)
    frontier = [-1]
    for fanout in branching:
        grown = []
        for node in frontier:
            found = tree.candidates(node)
            if found is None:
                continue
            for k in _pick(found.probs, fanout, with_replacement, generator):
                grown.append(tree.add(node, int(found.ids[k]), float(found.probs[k])))
        frontier = grown
    return _tree_or_empty(tree)


@_timed
def cost_sized_tree(drafter, sequence, depth: int, sampling, generator, *, budget: int,
                    sizer: Callable[[list[float]], int], patience: int = 4):  # fmt: skip
    """The most probable paths first, up to `budget` nodes and `depth` deep; then the prefix of
    that order `sizer` picks from the nodes' path probabilities (`adaptive.NodePolicy.choose`).
    Growing stops early once `patience` nodes in a row did not move the sizer's choice (path
    probabilities only fall from there, so later nodes rarely pay; lookups cost time). Children
    are each node's candidates, most likely first; the best leaf (mmtad's reference) is the most
    probable of the deepest nodes kept."""
    tree = _Tree(drafter, sequence, sampling)
    frontier = [(-0.0, 0, -1, 0)]  # (-log joint, tie-break, node, depth)
    order, probabilities, tie, chosen, idle = [], [], 1, 0, 0
    while frontier and len(order) < budget and idle < patience:
        _, _, node, level = heapq.heappop(frontier)
        if node >= 0:
            order.append(node)
            probabilities.append(math.exp(tree.log_joint[node]))
            before, chosen = chosen, sizer(probabilities)
            idle = idle + 1 if chosen == before else 0
        if level >= depth:
            continue
        found = tree.candidates(node)
        if found is None:
            continue
        base = tree.log_joint[node] if node >= 0 else 0.0
        likeliest_first = sorted(zip(found.probs.tolist(), found.ids.tolist(), strict=True), reverse=True)
        for probability, token in likeliest_first:
            child = tree.add(node, token, probability)
            heapq.heappush(frontier, (-(base + math.log(probability)), tie, child, level + 1))
            tie += 1
    keep = order[: sizer(probabilities)]
    # mmtad's reference path ("best"): the most probable of the deepest kept nodes
    best = max(keep, key=lambda node: (len(tree.paths[node]), tree.log_joint[node]), default=-1)
    return _tree_or_empty(tree, keep, best_leaf=best, rows=False)


def _tree_or_empty(tree: _Tree, keep: list[int] | None = None, best_leaf: int = -1, rows: bool = True):
    if not (tree.tokens if keep is None else keep):
        return tree.chain([])
    return tree.proposal(keep, best_leaf, rows)


def row_contexts(proposal, sequence: torch.Tensor) -> list[tuple[int, ...]]:
    """The context of each of a verified round's target rows: after the committed sequence, then
    after each draft node (a chain's tokens in order; a tree's root-to-node paths)."""
    root = tail(sequence)
    tokens = proposal.tokens.flatten().tolist()
    if proposal.tree_nodes:
        parents = proposal.tree.parents
        paths = [[tokens[i] for i in path_to(node, parents)] for node in range(len(tokens))]
    else:
        paths = [tokens[: i + 1] for i in range(len(tokens))]
    return [root] + [(root + tuple(path))[-CONTEXT_TOKENS:] for path in paths]
