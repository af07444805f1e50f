"""Settings travel as frozen dataclasses, validated once, at the edge. Here: the ones that need no
method to check them (the warp, `SamplingConfig`; stop conditions, `StopConfig`), the constants
every layer shares, and `shown` for one-line error messages. Data only: this module imports
nothing of mtad but its errors, so every layer may read it.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

from mtad.errors import ConfigError

# The methods themselves (names, shapes, which settings each reads) live in `mtad.decoding.methods`;
# the settings that depend on a method (`SpeculationConfig`, `Limits`) in `mtad.decoding.speculation`.
DEFAULT_MAX_NEW_TOKENS = 128
#: MMTAD's per-depth reference draft joint: best final beam's prefix, max over beams, node's own.
REFERENCES = ("best", "max", "own")
#: gamma "auto": the draft length is chosen every round, from 0 (a plain target step) up to this.
AUTO = "auto"
AUTO_MAX_GAMMA = 8
#: Most draft nodes a tree "auto" round may verify (it verifies as many as its costs say pay).
AUTO_TREE_NODES = 32
#: mtjd drafts with the target itself, a quality reference slow by design: no cost to weigh, so
#: gamma "auto" means the paper's block length there.
MTJD_AUTO_GAMMA = 4
#: Seeds are integers in [0, SEED_LIMIT) everywhere: library, CLI and server (a signed 64-bit int).
SEED_LIMIT = 2**63


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
        if not is_finite_number(self.temperature) or self.temperature < 0:
            raise ConfigError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {shown(self.temperature)}",
                "temperature",
            )
        if not is_int(self.top_k) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {shown(self.top_k)}", "top_k")
        if not is_finite_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {shown(self.top_p)}", "top_p")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class StopConfig:
    """When a generation ends: exactly max_new_tokens, the first EOS, or the first stop string."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ConfigError(
                f"max_new_tokens must be an integer >= 0, got {shown(self.max_new_tokens)}", "max_new_tokens"
            )
        for token_id in self.eos_token_ids:
            if not is_int(token_id) or token_id < 0:
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


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An int or float that is a finite float (an int past 1.8e308 is not: it cannot be computed with)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
