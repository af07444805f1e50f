"""Every decoding setting, declared once (`SETTINGS`): its default, the values it allows, its
help, how a command line and a server request give it, whether the bench sweeps it. The library's
keyword arguments and defaults (`mtad.api.validate_settings`), the CLI's flags
(`mtad.cli.common`), the server's request fields and the field an error names (`mtad.serve`), the
bench's `--sweep` list and the check that a method reads real settings all derive from it.

Settings travel as frozen dataclasses, validated once, at the edge, by their declarations. Here:
the ones that need no method to check them (the warp, `SamplingConfig`; stop conditions,
`StopConfig`); those that depend on a method are `mtad.decoding.speculation.SpeculationConfig`.
Data only: this module imports nothing of mtad but its errors, so every layer may read it.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

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


def parse_tree(text: str) -> tuple[int, ...] | str:
    """tree as typed on a command line: "auto" or comma-separated integers (ValueError otherwise)."""
    return AUTO if text.strip() == AUTO else tuple(int(part) for part in text.split(","))


def parse_seed(text: str) -> int:
    """seed as typed on a command line: an integer in [0, SEED_LIMIT) (ValueError otherwise)."""
    seed = int(text)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(text)
    return seed


def _parse_bool(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(text)
    return text.strip().lower() == "true"


@dataclass(frozen=True)
class Setting:
    """One decoding setting, as every layer sees it."""

    name: str
    #: `mtad.generate`'s default (the "library" preset).
    default: Any
    #: The values allowed, in words: the tail of "<name> must be <allowed>, got ..." and of --help.
    allowed: str
    valid: Callable[[Any], bool]
    #: What it does, for --help (the CLI adds its own default).
    help: str
    #: Its value from command-line text (a flag, a --sweep value); ValueError when it is not one.
    parse: Callable[[str], Any]
    #: Its JSON type in a server request (every float there must also be finite).
    request_type: Any
    #: Where a request sets it: a top-level OpenAI field, or "mtad.<name>" in the extension object.
    request_field: str
    #: `mtad bench --sweep` compares values of it.
    sweepable: bool = False
    #: The CLI flag, when not --<name> with dashes (a bool defaulting to True is switched off by it).
    flag: str | None = None

    def check(self, value: Any, label: str | None = None) -> None:
        """A `ConfigError` naming the setting (or `label`, e.g. "seed[2]") unless `value` is allowed."""
        if not self.valid(value):
            raise ConfigError(f"{label or self.name} must be {self.allowed}, got {shown(value)}", self.name)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def _declare(*settings: Setting) -> dict[str, Setting]:
    return {setting.name: setting for setting in settings}


#: Every decoding setting by name, in the order of `mtad.generate`'s documentation.
SETTINGS: dict[str, Setting] = _declare(
    Setting(
        "method", "mtad", "a registered method (see mtad.methods())", lambda v: isinstance(v, str),
        "the decoding method", str, str, "mtad.method",
    ),
    Setting(
        "gamma", 4, "an integer >= 1 or 'auto'", lambda v: v == AUTO or (is_int(v) and v >= 1),
        "draft tokens per round, or auto: chosen every round, 0 (a plain target step) to "
        f"{AUTO_MAX_GAMMA}, to maximise expected tokens/s from measured costs and the acceptance so far; "
        f"ignored by ar and greedy; auto is {MTJD_AUTO_GAMMA} for mtjd. The paper used 4",
        parse_gamma, int | Literal["auto"], "mtad.gamma", sweepable=True,
    ),
    Setting(
        "beam_width", 4, "an integer >= 1", lambda v: is_int(v) and v >= 1,
        "beams of the draft's beam sampling (mtad, mmtad, mtjd)", int, int, "mtad.beam_width", sweepable=True,
    ),
    Setting(
        "threshold", 0.5, "in (0, 1]", lambda v: is_finite_number(v) and 0 < v <= 1,
        "MTAD's acceptance threshold tau", float, float, "mtad.threshold", sweepable=True,
    ),
    Setting(
        "with_replacement", True, "True or False", lambda v: isinstance(v, bool),
        "beam and tree sampling draw with replacement (the paper) or without", _parse_bool, bool,
        "mtad.with_replacement", flag="--without-replacement",
    ),
    Setting(
        "tree", (4, 2, 2), "a non-empty sequence of integers >= 1 (e.g. 4,2,2) or 'auto'",
        lambda v: v == AUTO or (isinstance(v, tuple) and bool(v) and all(is_int(b) and b >= 1 for b in v)),
        "specinfer branching per depth, e.g. 4,2,2; or auto (a model-free draft): each round's tree "
        "grown from the most probable paths and cut where the measured verification costs say it pays",
        parse_tree, list[int] | Literal["auto"], "mtad.tree",
    ),
    Setting(
        "reference", "best", ", ".join(REFERENCES[:-1]) + " or " + REFERENCES[-1],
        lambda v: v in REFERENCES, "mmtad's reference draft joint per depth", str, str, "mtad.reference",
        sweepable=True,
    ),
    Setting(
        "temperature", 1.0, "a finite number >= 0 (0 = greedy)", lambda v: is_finite_number(v) and v >= 0,
        "how flat the sampled distribution is", float, float, "temperature",
    ),
    Setting(
        "top_k", 0, "an integer >= 0 (0 = off)", lambda v: is_int(v) and v >= 0,
        "sample from the k most probable tokens only", int, int, "mtad.top_k",
    ),
    Setting(
        "top_p", 1.0, "in (0, 1]", lambda v: is_finite_number(v) and 0 < v <= 1,
        "sample from the most probable tokens that hold this much probability; 1 = off", float, float,
        "top_p",
    ),
    Setting(
        "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, "an integer >= 0", lambda v: is_int(v) and v >= 0,
        "exact upper bound on the tokens generated", int, int, "max_tokens",
    ),
    Setting(
        "seed", None, "an integer in [0, 2**63)", lambda v: v is None or (is_int(v) and 0 <= v < SEED_LIMIT),
        "same seed, same output (none: a fresh seed each call)", parse_seed, int, "seed",
    ),
)  # fmt: skip

#: The paper's warp (its experiments: temperature 1, top-k 10, top-p 0.9).
PAPER_WARP = {"temperature": 1.0, "top_k": 10, "top_p": 0.9}
#: Named sets of defaults. "library": `mtad.generate` (no warp, gamma 4); "paper": the paper's
#: experiments (its warp, gamma 4, W 4, tau 0.5); "cli": the command line, the server and the bench
#: (the paper's warp with gamma auto).
_LIBRARY = {name: setting.default for name, setting in SETTINGS.items()}
PRESETS: dict[str, dict[str, Any]] = {
    "library": _LIBRARY,
    "paper": _LIBRARY | PAPER_WARP | {"gamma": 4},
    "cli": _LIBRARY | PAPER_WARP | {"gamma": AUTO},
}


def check_settings(carrier: object) -> None:
    """Check each field of a settings dataclass against its declaration (the first bad one raises)."""
    for item in fields(carrier):
        if item.name in SETTINGS:
            SETTINGS[item.name].check(getattr(carrier, item.name))


@dataclass(frozen=True)
class SamplingConfig:
    """The one warp applied to every distribution (p and q alike): temperature, top-k, top-p.

    temperature 0 means greedy: the warped distribution is one-hot on the argmax.
    top_k 0 disables top-k; top_p 1.0 disables top-p.
    """

    temperature: float = SETTINGS["temperature"].default
    top_k: int = SETTINGS["top_k"].default
    top_p: float = SETTINGS["top_p"].default

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class StopConfig:
    """When a generation ends: exactly max_new_tokens, the first EOS, or the first stop string."""

    max_new_tokens: int = SETTINGS["max_new_tokens"].default
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_settings(self)
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
