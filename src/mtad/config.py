"""Settings travel as frozen dataclasses, validated once here, at the edge.

Names follow the paper: gamma = draft length, beam_width = W, threshold = tau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mtad.errors import ConfigError

#: Every decoding method, by the name users type.
METHODS = ("ar", "greedy", "sd", "mtad", "mmtad", "specinfer", "mtjd")
#: Methods that need a draft model.
DRAFTED_METHODS = ("sd", "mtad", "mmtad", "specinfer")
DEFAULT_MAX_NEW_TOKENS = 128
#: MMTAD's per-depth reference draft joint: best final beam's prefix, max over beams, node's own.
REFERENCES = ("best", "max", "own")


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
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_finite_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SpeculationConfig:
    """How a block is proposed and verified.

    gamma: draft tokens per round. beam_width: beams of the draft's beam sampling (mtad, mtjd).
    threshold: tau, MTAD's joint-likelihood-ratio threshold, in (0, 1].
    with_replacement: beam sampling draws (beam, token) pairs with replacement (the paper) or without;
    SpecInfer draws each node's children with or without replacement.
    tree: SpecInfer's branching config, e.g. (4, 2, 2) = 4 + 8 + 16 nodes, depth 3 (gamma is its depth).
    reference: MMTAD's reference draft joint per depth (see `mtad.acceptance.reference_log_joints`).
    """

    method: str = "mtad"
    gamma: int = 4
    beam_width: int = 4
    threshold: float = 0.5
    with_replacement: bool = True
    tree: tuple[int, ...] = (4, 2, 2)
    reference: str = "best"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if not _is_int(self.gamma) or self.gamma < 1:
            raise ConfigError(f"gamma must be an integer >= 1, got {self.gamma!r}")
        if not _is_int(self.beam_width) or self.beam_width < 1:
            raise ConfigError(f"beam_width must be an integer >= 1, got {self.beam_width!r}")
        if not _is_finite_number(self.threshold) or not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if (
            not isinstance(self.tree, tuple)
            or not self.tree
            or not all(_is_int(b) and b >= 1 for b in self.tree)
        ):
            raise ConfigError(
                f"tree must be a non-empty sequence of integers >= 1 (e.g. 4,2,2), got {self.tree!r}"
            )
        if self.reference not in REFERENCES:
            raise ConfigError(f"unknown reference {self.reference!r}; allowed: {', '.join(REFERENCES)}")

    @property
    def depth(self) -> int:
        """Draft tokens per round along one path: gamma, or the SpecInfer tree's depth."""
        return len(self.tree) if self.method == "specinfer" else self.gamma

    @property
    def needs_draft(self) -> bool:
        return self.method in DRAFTED_METHODS


@dataclass(frozen=True)
class StopConfig:
    """When a generation ends: exactly max_new_tokens, the first EOS, or the first stop string."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        for token_id in self.eos_token_ids:
            if not _is_int(token_id) or token_id < 0:
                raise ConfigError(f"eos_token_id must be a non-negative integer, got {token_id!r}")
        for stop in self.stop_strings:
            if not isinstance(stop, str) or not stop:
                raise ConfigError(f"stop strings must be non-empty strings, got {stop!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
