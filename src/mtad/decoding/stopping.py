"""Stop conditions, applied in the commit step before anything is appended or streamed.

A block is cut at, in token order: the max_new_tokens budget, the first EOS (kept, nothing after
it), the token that completes the first stop string (the returned text ends before the stop
string, as OpenAI's API does).
"""

from __future__ import annotations

from mtad.config import StopConfig
from mtad.errors import ConfigError


class Stopper:
    def __init__(self, stop: StopConfig, tokenizer=None) -> None:
        if stop.stop_strings and tokenizer is None:
            raise ConfigError("stop strings need a tokenizer to decode text; pass tokenizer=...")
        self.stop = stop
        self.tokenizer = tokenizer
        self.stop_at_char: int | None = None  # where the returned text ends, once a stop string hit

    def cut(self, generated: list[int], block: list[int]) -> tuple[list[int], str | None]:
        """The part of `block` to commit after `generated`, and the finish reason if this ends it."""
        budget = self.stop.max_new_tokens - len(generated)
        block = block[:budget]
        reason = "length" if len(generated) + len(block) >= self.stop.max_new_tokens else None
        for i, token in enumerate(block):
            if token in self.stop.eos_token_ids:
                block, reason = block[: i + 1], "stop"
                break
        if self.stop.stop_strings:
            for k in range(1, len(block) + 1):
                text = self.decode(generated + block[:k])
                hits = [text.find(s) for s in self.stop.stop_strings if s in text]
                if hits:
                    self.stop_at_char = min(hits)
                    return block[:k], "stop"
        return block, reason

    def decode(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return text if self.stop_at_char is None else text[: self.stop_at_char]

    def visible_text(self, tokens: list[int], finished: bool) -> str:
        """The text of `tokens` that can be shown now (see `stream_safe_length`)."""
        text = self.decode(tokens)
        return text[: self.stream_safe_length(text, finished)]

    def stream_safe_length(self, text: str, finished: bool) -> int:
        """How much of `text` can be shown: never a trailing U+FFFD, the decoder's stand-in for
        the first bytes of a character whose last bytes a later token brings (when the budget
        ends the text there, those bytes never come: the tokens keep them, the text drops them);
        before the end, also not what may still become a stop string."""
        end = len(text)
        while end and text[end - 1] == "\ufffd":
            end -= 1
        if finished:
            return end
        hold = 0
        for stop in self.stop.stop_strings:
            for overlap in range(min(len(stop) - 1, end), hold, -1):
                if text[:end].endswith(stop[:overlap]):
                    hold = overlap
                    break
        return end - hold
