"""The settings that depend on a method: how a block is proposed and verified (`SpeculationConfig`)
and the ceilings on what sizes a round's tensors (`Limits`). Validated once, at the edge.

They sit above the method registry (`mtad.decoding.methods`), which they ask what a method
drafts; the method-free settings (the warp, stop conditions, seeds) are `mtad.config`.
Names follow the paper: gamma = draft length, beam_width = W, threshold = tau.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtad.config import AUTO, SETTINGS, check_settings, is_int, shown
from mtad.decoding.methods import Method, get_method
from mtad.decoding.shapes import SHAPES, Shape
from mtad.errors import ConfigError

#: Bytes of vocabulary-wide work one drafted row may cost (logits, float32 probabilities, the
#: warp's sort and cumulative sum: about 32 bytes per vocabulary entry), and how many such rows
#: one round may hold: 1 GiB. `Limits.for_models` turns it into a node and beam ceiling.
ROW_BYTES_PER_ENTRY = 32
ROUND_MEMORY_BYTES = 2**30


@dataclass(frozen=True)
class SpeculationConfig:
    """How a block is proposed and verified.

    gamma: draft tokens per round, or "auto": chosen each round, 0..AUTO_MAX_GAMMA, to maximise
    expected tokens per second (`mtad.decoding.adaptive`; sd, mtad, mmtad, specinfer up to its tree depth;
    mtjd, which drafts with the target, takes MTJD_AUTO_GAMMA; ar and greedy ignore gamma).
    beam_width: beams of the draft's beam sampling (mtad, mtjd).
    threshold: tau, MTAD's joint-likelihood-ratio threshold, in (0, 1].
    with_replacement: beam sampling draws (beam, token) pairs with replacement (the paper) or without;
    SpecInfer draws each node's children with or without replacement.
    tree: SpecInfer's branching config, e.g. (4, 2, 2) = 4 + 8 + 16 nodes, depth 3 (gamma is its depth),
    or "auto": each round's tree grown best-first by draft path probability and cut where expected
    tokens per second peak under the measured verification costs (a model-free draft;
    `mtad.decoding.drafts.proposers.cost_sized_tree`).
    reference: MMTAD's reference draft joint per depth (see `mtad.decoding.acceptance.reference_log_joints`).
    """

    method: str = SETTINGS["method"].default
    gamma: int | str = SETTINGS["gamma"].default
    beam_width: int = SETTINGS["beam_width"].default
    threshold: float = SETTINGS["threshold"].default
    with_replacement: bool = SETTINGS["with_replacement"].default
    tree: tuple[int, ...] | str = SETTINGS["tree"].default
    reference: str = SETTINGS["reference"].default

    def __post_init__(self) -> None:
        self.record  # noqa: B018 - an unknown method is a ConfigError naming the allowed ones
        check_settings(self)

    @property
    def record(self) -> Method:
        return get_method(self.method)

    @property
    def shape(self) -> Shape:
        """How a round is drafted (`mtad.decoding.shapes`)."""
        return SHAPES[self.record.shape]

    @property
    def adaptive(self) -> bool:
        """gamma "auto" on a method that drafts: the depth is chosen round by round."""
        return self.gamma == AUTO and self.needs_draft and not self.sized_by_cost

    @property
    def sized_by_cost(self) -> bool:
        """The round's tree is sized by measured costs (tree "auto" on a tree method)."""
        return self.tree == AUTO and "tree" in self.record.settings

    @property
    def depth(self) -> int:
        """Draft tokens per round along one path (at most, when adaptive): gamma, AUTO_MAX_GAMMA
        for gamma "auto" (mtjd: MTJD_AUTO_GAMMA), or the SpecInfer tree's depth."""
        return self.shape.depth(self)

    def verified_nodes(self, stop_above: int | None = None) -> int:
        """Draft nodes the target verifies in one round (each gets a vocabulary-wide row of p).

        sd and mtad verify a chain of gamma tokens; mmtad every beam at every depth; specinfer the
        whole branching tree; target-only methods nothing. Counting may stop once past
        `stop_above` (`mtad.decoding.shapes`).
        """
        return self.shape.nodes(self, self.depth, stop_above)

    @property
    def uses_gamma(self) -> bool:
        return "gamma" in self.record.settings

    @property
    def uses_beams(self) -> bool:
        return "beam_width" in self.record.settings

    @property
    def needs_draft(self) -> bool:
        return self.record.needs_draft


@dataclass(frozen=True)
class Limits:
    """Ceilings on the settings that size a round's tensors, checked before any work is done.

    A round holds a vocabulary-wide row of probabilities for every node the target verifies and
    for every beam the draft extends, so one request asking for a tree of a million nodes (or
    20,000 beams, or gamma 2000) would take the machine's memory, or one block minutes. The
    defaults are far above what pays off (the paper's settings are gamma 3-5, beam width 4, trees
    of a few dozen nodes) and far below what hurts. An operator sets them (`--max-gamma`,
    `--max-beam-width`, `--max-tree-nodes`); `for_models` lowers them to what the model allows.
    """

    max_gamma: int = 32
    max_beam_width: int = 32
    max_tree_nodes: int = 256

    def __post_init__(self) -> None:
        for name in ("max_gamma", "max_beam_width", "max_tree_nodes"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {shown(value)}", name)

    def for_models(self, vocab_size: int, context_length: int | None) -> Limits:
        """These limits, lowered to what one model pair allows: draft tokens per round fit its
        context window, and nodes (and beams) x vocabulary fit `ROUND_MEMORY_BYTES`."""
        rows = max(1, ROUND_MEMORY_BYTES // (ROW_BYTES_PER_ENTRY * vocab_size))
        gamma = self.max_gamma if context_length is None else min(self.max_gamma, max(1, context_length - 1))
        return Limits(gamma, min(self.max_beam_width, rows), min(self.max_tree_nodes, rows))

    def check(self, spec: SpeculationConfig) -> None:
        """Raise `ConfigError` naming the first setting of `spec` over its limit."""
        spec.shape.check_limits(spec, self.max_gamma)
        if spec.uses_gamma and spec.depth > self.max_gamma:
            raise ConfigError(
                f"gamma {spec.gamma} (depth {spec.depth}) is over the limit of {self.max_gamma} (max_gamma)"
                if spec.gamma == AUTO
                else f"gamma {shown(spec.gamma)} is over the limit of {self.max_gamma} (max_gamma)",
                "gamma",
            )
        if spec.uses_beams and spec.beam_width > self.max_beam_width:
            raise ConfigError(
                f"beam_width {shown(spec.beam_width)} is over the limit of {self.max_beam_width} "
                "(max_beam_width)",
                "beam_width",
            )
        nodes = spec.verified_nodes(stop_above=self.max_tree_nodes)
        if nodes > self.max_tree_nodes:
            raise spec.shape.too_many_nodes(spec, nodes, self.max_tree_nodes)
