"""Draft shapes: how a round is drafted, and all that follows from it, in one object per shape.

A method names its shape (`Method.shape`, a key of `SHAPES`); the shape answers what the rest of
the code asks about a round: whether it reads a draft model, how deep it drafts (`depth`), how
many draft nodes the target verifies (`nodes`: each gets a vocabulary-wide row of p), what its
draft forwards cost (`draft_seconds`, for gamma "auto"), and how a round too big for the limits
is refused (`check_limits`). A new shape is one subclass and one entry in `SHAPES`; nothing else
compares shape names.

    target          nothing drafted (ar, greedy)
    chain           gamma tokens one after another (sd)
    beams           W beams as cache rows, the best one verified as a chain (mtad)
    beam_tree       every beam of every step as a tree, verified whole (mmtad)
    branching_tree  a token tree from a branching config (specinfer; depth = the tree's)
    self_beams      the target beam-samples for itself (mtjd): no draft model, nothing verified
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mtad.config import AUTO, AUTO_MAX_GAMMA, AUTO_TREE_NODES, MTJD_AUTO_GAMMA, shown
from mtad.errors import ConfigError


class RoundSettings(Protocol):
    """What a shape reads of the settings (`mtad.decoding.speculation.SpeculationConfig`)."""

    gamma: int | str
    beam_width: int
    tree: tuple[int, ...] | str


class ForwardCosts(Protocol):
    """Seconds of one forward by new tokens (`mtad.decoding.adaptive.Costs`)."""

    def draft(self, tokens: int) -> float: ...


@dataclass(frozen=True)
class Shape:
    """A shape that drafts nothing; subclasses draft. `drafts`: reads a draft model;
    `self_drafted`: the target drafts for itself, on its own cache."""

    name: str
    drafts: bool = False
    self_drafted: bool = False

    def depth(self, spec: RoundSettings) -> int:
        """Draft tokens per round along one path (at most, when gamma is "auto")."""
        return AUTO_MAX_GAMMA if spec.gamma == AUTO else spec.gamma

    def nodes(self, spec: RoundSettings, depth: int, stop_above: int | None = None) -> int:
        """Draft nodes the target verifies in a round `depth` deep."""
        return 0

    def draft_width(self, spec: RoundSettings) -> int:
        """The widest draft forward (tokens) a round may feed: what gamma "auto" measures."""
        return spec.beam_width

    def draft_seconds(self, spec: RoundSettings, depth: int, costs: ForwardCosts) -> float:
        """Seconds of the draft forwards of a round `depth` deep."""
        return 0.0

    def check_limits(self, spec: RoundSettings, max_gamma: int) -> None:
        """Refuse what only this shape can get wrong, before the common checks (`Limits.check`)."""

    def too_many_nodes(self, spec: RoundSettings, nodes: int, limit: int) -> ConfigError:
        """The error for a round of more than `limit` verified nodes."""
        if spec.tree == AUTO:
            return ConfigError(
                f"tree 'auto' verifies up to {AUTO_TREE_NODES} nodes a round, over the limit of {limit} "
                f"(max_tree_nodes); allowed: a limit of at least {AUTO_TREE_NODES}, or a fixed tree",
                "tree",
            )
        return ConfigError(
            f"beam_width {spec.beam_width} x gamma {self.depth(spec)} = {nodes} tree nodes a round is over "
            f"the limit of {limit} (max_tree_nodes)",
            "beam_width",
        )


@dataclass(frozen=True)
class Chain(Shape):
    drafts: bool = True

    def draft_width(self, spec: RoundSettings) -> int:
        return 1  # one token a draft step (a beam_width given to a chain method is not its to read)

    def nodes(self, spec: RoundSettings, depth: int, stop_above: int | None = None) -> int:
        return depth

    def draft_seconds(self, spec: RoundSettings, depth: int, costs: ForwardCosts) -> float:
        return depth * costs.draft(1)


@dataclass(frozen=True)
class Beams(Chain):
    """W beams as cache rows: one token, then W a step; the best beam is verified as a chain."""

    def draft_width(self, spec: RoundSettings) -> int:
        return spec.beam_width

    def draft_seconds(self, spec: RoundSettings, depth: int, costs: ForwardCosts) -> float:
        return costs.draft(1) + (depth - 1) * costs.draft(spec.beam_width)


@dataclass(frozen=True)
class BeamTree(Beams):
    """Every beam of every step is a node, fed as a tree on one cache and verified whole. Tree
    "auto" (a model-free draft): up to AUTO_TREE_NODES nodes, gamma deep, sized by the costs."""

    def nodes(self, spec: RoundSettings, depth: int, stop_above: int | None = None) -> int:
        if spec.tree == AUTO:
            return AUTO_TREE_NODES if depth else 0
        return depth * spec.beam_width

    def draft_seconds(self, spec: RoundSettings, depth: int, costs: ForwardCosts) -> float:
        return 0.0 if spec.tree == AUTO else super().draft_seconds(spec, depth, costs)


@dataclass(frozen=True)
class BranchingTree(Shape):
    """tree[d] children under every node of depth d; the tree's depth is the round's. Tree "auto":
    up to AUTO_TREE_NODES nodes, AUTO_MAX_GAMMA deep, as many as the costs say pay."""

    drafts: bool = True

    def depth(self, spec: RoundSettings) -> int:
        return AUTO_MAX_GAMMA if spec.tree == AUTO else len(spec.tree)

    def nodes(self, spec: RoundSettings, depth: int, stop_above: int | None = None) -> int:
        """Counting stops once past `stop_above`: (1000, 1000, 1000, ...) is refused without big
        arithmetic."""
        if spec.tree == AUTO:
            return AUTO_TREE_NODES if depth else 0
        nodes, width = 0, 1
        for branches in spec.tree[:depth]:
            width *= branches
            nodes += width
            if stop_above is not None and nodes > stop_above:
                break
        return nodes

    def draft_width(self, spec: RoundSettings) -> int:
        return spec.beam_width if spec.tree == AUTO else max(spec.beam_width, max(spec.tree))

    def draft_seconds(self, spec: RoundSettings, depth: int, costs: ForwardCosts) -> float:
        if spec.tree == AUTO:  # a model-free draft: lookups, no forward
            return 0.0
        widths, level = [], 1
        for branches in spec.tree[:depth]:
            level *= branches
            widths.append(level)
        return costs.draft(1) + sum(costs.draft(w) for w in widths[:-1])

    def check_limits(self, spec: RoundSettings, max_gamma: int) -> None:
        if self.depth(spec) > max_gamma:
            raise ConfigError(
                f"tree depth {self.depth(spec)} is over the limit of {max_gamma} (max_gamma)", "tree"
            )

    def too_many_nodes(self, spec: RoundSettings, nodes: int, limit: int) -> ConfigError:
        if spec.tree == AUTO:
            return super().too_many_nodes(spec, nodes, limit)
        return ConfigError(
            f"tree {shown(spec.tree)} has more than {limit} nodes, the limit (max_tree_nodes)", "tree"
        )


@dataclass(frozen=True)
class SelfBeams(Shape):
    """The target beam-samples its own block: gamma "auto" has no draft cost to weigh, so it
    means the paper's block length."""

    self_drafted: bool = True

    def depth(self, spec: RoundSettings) -> int:
        return MTJD_AUTO_GAMMA if spec.gamma == AUTO else spec.gamma


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape("target"),
        Chain("chain"),
        Beams("beams"),
        BeamTree("beam_tree"),
        BranchingTree("branching_tree"),
        SelfBeams("self_beams"),
    )
}
