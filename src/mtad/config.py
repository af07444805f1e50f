"""Settings travel as frozen dataclasses, validated once here, at the edge.

Names follow the paper: gamma = draft length, beam_width = W, threshold = tau.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

from mtad.errors import ConfigError

# The methods themselves (names, shapes, which settings each reads) live in `mtad.methods`.
DEFAULT_MAX_NEW_TOKENS = 128
#: MMTAD's per-depth reference draft joint: best final beam's prefix, max over beams, node's own.
REFERENCES = ("best", "max", "own")
#: gamma "auto": the draft length is chosen every round, from 0 (a plain target step) up to this.
AUTO = "auto"
AUTO_MAX_GAMMA = 8
#: mtjd drafts with the target itself, a quality reference slow by design: no cost to weigh, so
#: gamma "auto" means the paper's block length there.
MTJD_AUTO_GAMMA = 4
#: Seeds are integers in [0, SEED_LIMIT) everywhere: library, CLI and server (a signed 64-bit int).
SEED_LIMIT = 2**63
#: Bytes of vocabulary-wide work one drafted row may cost (logits, float32 probabilities, the
#: warp's sort and cumulative sum: about 32 bytes per vocabulary entry), and how many such rows
#: one round may hold: 1 GiB. `Limits.for_models` turns it into a node and beam ceiling.
ROW_BYTES_PER_ENTRY = 32
ROUND_MEMORY_BYTES = 2**30


def parse_gamma(text: str) -> int | str:
    """gamma as typed on a command line: "auto" or an integer (ValueError otherwise)."""
    return AUTO if text.strip() == AUTO else int(text)


@dataclass(frozen=True)
class SamplingConfig:
    """The one warp applied to every distribution (p and q alike): temperature, top-k, top-p.

    temperature 0 means greedy: the warped distribution is one-hot on the argmax.
    top_k 0 disables top-k; top_p 1.0 disables top-p.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not _is_finite_number(self.temperature) or self.temperature < 0:
            raise ConfigError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {shown(self.temperature)}",
                "temperature",
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {shown(self.top_k)}", "top_k")
        if not _is_finite_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {shown(self.top_p)}", "top_p")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SpeculationConfig:
    """How a block is proposed and verified.

    gamma: draft tokens per round, or "auto": chosen each round, 0..AUTO_MAX_GAMMA, to maximise
    expected tokens per second (`mtad.adaptive`; sd, mtad, mmtad, specinfer up to its tree depth;
    mtjd, which drafts with the target, takes MTJD_AUTO_GAMMA; ar and greedy ignore gamma).
    beam_width: beams of the draft's beam sampling (mtad, mtjd).
    threshold: tau, MTAD's joint-likelihood-ratio threshold, in (0, 1].
    with_replacement: beam sampling draws (beam, token) pairs with replacement (the paper) or without;
    SpecInfer draws each node's children with or without replacement.
    tree: SpecInfer's branching config, e.g. (4, 2, 2) = 4 + 8 + 16 nodes, depth 3 (gamma is its depth).
    reference: MMTAD's reference draft joint per depth (see `mtad.acceptance.reference_log_joints`).
    """

    method: str = "mtad"
    gamma: int | str = 4
    beam_width: int = 4
    threshold: float = 0.5
    with_replacement: bool = True
    tree: tuple[int, ...] = (4, 2, 2)
    reference: str = "best"

    def __post_init__(self) -> None:
        self.record  # noqa: B018 - an unknown method is a ConfigError naming the allowed ones
        if self.gamma != AUTO and (not _is_int(self.gamma) or self.gamma < 1):
            raise ConfigError(f"gamma must be an integer >= 1 or 'auto', got {shown(self.gamma)}", "gamma")
        if not _is_int(self.beam_width) or self.beam_width < 1:
            raise ConfigError(
                f"beam_width must be an integer >= 1, got {shown(self.beam_width)}", "beam_width"
            )
        if not _is_finite_number(self.threshold) or not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold must be in (0, 1], got {shown(self.threshold)}", "threshold")
        if (
            not isinstance(self.tree, tuple)
            or not self.tree
            or not all(_is_int(b) and b >= 1 for b in self.tree)
        ):
            raise ConfigError(
                f"tree must be a non-empty sequence of integers >= 1 (e.g. 4,2,2), got {shown(self.tree)}",
                "tree",
            )
        if self.reference not in REFERENCES:
            raise ConfigError(
                f"unknown reference {shown(self.reference)}; allowed: {', '.join(REFERENCES)}", "reference"
            )

    @property
    def record(self):  # -> mtad.methods.Method (imported here: the registry builds on this module)
        from mtad.methods import get_method

        return get_method(self.method)

    @property
    def shape(self) -> str:
        """How a round is drafted (`mtad.methods.SHAPES`)."""
        return self.record.shape

    @property
    def adaptive(self) -> bool:
        """gamma "auto" on a method that drafts: the depth is chosen round by round."""
        return self.gamma == AUTO and self.needs_draft

    @property
    def depth(self) -> int:
        """Draft tokens per round along one path (at most, when adaptive): gamma, AUTO_MAX_GAMMA
        for gamma "auto", or the SpecInfer tree's depth."""
        if self.shape == "branching_tree":
            return len(self.tree)
        if self.gamma != AUTO:
            return self.gamma
        return MTJD_AUTO_GAMMA if self.shape == "self_beams" else AUTO_MAX_GAMMA

    def verified_nodes(self, stop_above: int | None = None) -> int:
        """Draft nodes the target verifies in one round (each gets a vocabulary-wide row of p).

        sd and mtad verify a chain of gamma tokens; mmtad every beam at every depth; specinfer the
        whole branching tree; target-only methods nothing. Counting stops early once past
        `stop_above`, so a tree like (1000, 1000, 1000, ...) is refused without big arithmetic.
        """
        if self.shape in ("chain", "beams"):
            return self.depth
        if self.shape == "beam_tree":
            return self.depth * self.beam_width
        if self.shape != "branching_tree":
            return 0
        nodes, width = 0, 1
        for branches in self.tree:
            width *= branches
            nodes += width
            if stop_above is not None and nodes > stop_above:
                break
        return nodes

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
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {shown(value)}", name)

    def for_models(self, vocab_size: int, context_length: int | None) -> Limits:
        """These limits, lowered to what one model pair allows: draft tokens per round fit its
        context window, and nodes (and beams) x vocabulary fit `ROUND_MEMORY_BYTES`."""
        rows = max(1, ROUND_MEMORY_BYTES // (ROW_BYTES_PER_ENTRY * vocab_size))
        gamma = self.max_gamma if context_length is None else min(self.max_gamma, max(1, context_length - 1))
        return Limits(gamma, min(self.max_beam_width, rows), min(self.max_tree_nodes, rows))

    def check(self, spec: SpeculationConfig) -> None:
        """Raise `ConfigError` naming the first setting of `spec` over its limit."""
        if spec.shape == "branching_tree" and len(spec.tree) > self.max_gamma:
            raise ConfigError(
                f"tree depth {len(spec.tree)} is over the limit of {self.max_gamma} (max_gamma)", "tree"
            )
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
        if nodes > self.max_tree_nodes and spec.shape == "branching_tree":
            raise ConfigError(
                f"tree {shown(spec.tree)} has more than {self.max_tree_nodes} nodes, "
                f"the limit (max_tree_nodes)",
                "tree",
            )
        if nodes > self.max_tree_nodes:
            raise ConfigError(
                f"beam_width {spec.beam_width} x gamma {spec.depth} = {nodes} tree nodes a round is over "
                f"the limit of {self.max_tree_nodes} (max_tree_nodes)",
                "beam_width",
            )


@dataclass(frozen=True)
class StopConfig:
    """When a generation ends: exactly max_new_tokens, the first EOS, or the first stop string."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ConfigError(
                f"max_new_tokens must be an integer >= 0, got {shown(self.max_new_tokens)}", "max_new_tokens"
            )
        for token_id in self.eos_token_ids:
            if not _is_int(token_id) or token_id < 0:
                raise ConfigError(
                    f"eos_token_id must be a non-negative integer, got {shown(token_id)}", "eos_token_id"
                )
        for stop in self.stop_strings:
            if not isinstance(stop, str) or not stop:
                raise ConfigError(f"stop strings must be non-empty strings, got {shown(stop)}", "stop")


def shown(value: object, width: int = 60) -> str:
    """`repr(value)`, cut to `width` characters: an error message stays one short line, whatever
    the value (a few levels of nesting, a few digits of a huge int; never an error of its own)."""
    text = _SHORT.repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int past 4300 digits raises ValueError; its size is what matters here.
        return repr(x) if abs(x) < 10**20 else f"{'-' if x < 0 else ''}~1e{int(x.bit_length() * 0.30103)}"


_SHORT = _ShortRepr()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    """An int or float that is a finite float (an int past 1.8e308 is not: it cannot be computed with)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
