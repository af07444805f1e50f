"""What a model-free draft is: a source of candidates for the next token after a context, fed by
what decoding already computes, and the per-request drafter the decode loop talks to.

A model draft answers q(. | context) with a forward; a model-free draft answers it from a table
(`recycle`: the target's own earlier distributions) or from text it has seen (`suffix`: prompt,
output, past outputs). Its q is a short list of candidates (`Candidates`), spread to a
vocabulary-wide row only where an acceptance rule reads it. The acceptance rules do not change:
sd and specinfer are lossless for any q fixed before its tokens are drawn, and a model-free q is
a function of committed tokens, the round's own draft path, and earlier rounds' target rows.

A draft *kind* (`ModelFreeDraft`) is what a user names (`draft="recycle"`, `--draft suffix`): it
may hold state shared by every request of a process (a bounded table or store, reported by
`describe`), and makes one `TokenDrafter` per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtad.config import SamplingConfig, is_int, shown
from mtad.errors import ConfigError
from mtad.runtime.cache import CachedModel

#: Tokens of context a source is shown: the committed sequence's end plus the draft path so far.
CONTEXT_TOKENS = 16


@dataclass(frozen=True)
class Candidates:
    """A sparse draft distribution: token ids and their probabilities (summing to 1)."""

    ids: torch.Tensor  # [k] long
    probs: torch.Tensor  # [k] float32

    @staticmethod
    def from_weights(weights: dict[int, float]) -> Candidates | None:
        kept = {token: weight for token, weight in weights.items() if weight > 0}
        if not kept:
            return None
        probs = torch.tensor(list(kept.values()), dtype=torch.float32)
        return Candidates(torch.tensor(list(kept), dtype=torch.long), probs / probs.sum())

    def warped(self, sampling: SamplingConfig) -> Candidates:
        """At temperature 0 the draft proposes its most likely candidate (one-hot q), as a model
        draft's warp would; otherwise q is the source's own distribution (it is already a
        distribution, often the target's warped one: warping it twice would cut it again)."""
        if not sampling.greedy:
            return self
        best = int(self.probs.argmax())
        return Candidates(self.ids[best : best + 1], torch.ones(1))

    def dense(self, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        row = torch.zeros(vocab_size, dtype=torch.float32)
        row[self.ids] = self.probs
        return row.to(device)


class TokenDrafter:
    """One request's model-free drafter: the decode loop's partner where a model draft would be.

    `ready` is asked before every round with the committed sequence (a source that learns from the
    text catches up here) and says whether there is anything to draft after it; `observe` hands it
    the target's rows of the round just verified; `finish` the request's tokens when it ends.
    """

    calls = 0  # forwards run: none, whatever the method (a hybrid counts its model part's)
    #: The request's warp (set by the loop): a hybrid's draft model warps its q with it.
    sampling: SamplingConfig = SamplingConfig()
    #: The prefill returns the target's rows after every prompt token too, for `observe`.
    learns_from_prompt = False

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size, self.device = vocab_size, device
        self.lookups = 0
        self.seconds = 0.0  # time spent drafting (lookups and building q rows), for the step profile

    def ready(self, sequence: torch.Tensor) -> bool:
        return self.candidates(tail(sequence)) is not None

    def candidates(self, context: Sequence[int]) -> Candidates | None:
        """The draft's q after `context` (its last `CONTEXT_TOKENS` tokens), or None: nothing known."""
        raise NotImplementedError

    def observe(self, contexts: list[tuple[int, ...]], p: torch.Tensor) -> None:
        """The target's warped rows [m, vocab] after each of `contexts` (verification just made them)."""

    def finish(self, tokens: list[int]) -> None:
        """The request ended with these tokens (prompt and output)."""


class ModelFreeDraft:
    """A draft kind that runs no model. `name` is what users type; `describe` what `/health` and
    the bench record (settings, and the size of any state shared by the requests of a process)."""

    name = ""

    def drafter(self, target: CachedModel) -> TokenDrafter:
        """This request's drafter, drafting for `target` (its vocabulary width and device)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def tail(sequence: torch.Tensor) -> tuple[int, ...]:
    """The last `CONTEXT_TOKENS` committed tokens of a [1, length] sequence."""
    return tuple(sequence[0, -CONTEXT_TOKENS:].tolist())


def positive_int(value: object, name: str) -> int:
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {shown(value)}", "draft")
    return value
