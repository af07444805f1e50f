"""OpenAI response shapes for completions and chat completions, whole and as stream chunks.

Every finished response carries `usage` and an `mtad` object: the decoding settings used
(method, gamma, ..., temperature, top_k, top_p, and the seed, so a run can be repeated) and the
request's statistics (`mtad.Stats.as_dict()`).
In a stream they come in the final chunk, the one with `finish_reason`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from mtad.engine import GenerationResult


@dataclass(frozen=True)
class Reply:
    """What one request's responses share: its kind, id, creation time and model name."""

    chat: bool
    model: str
    id: str = ""
    created: int = 0

    @classmethod
    def new(cls, chat: bool, model: str) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(chat, model, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def _envelope(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, result: GenerationResult, prompt_tokens: int, settings: dict) -> dict:
        """The non-streamed response."""
        text = result.text or ""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"logprobs": None, "finish_reason": result.finish_reason}
        return (
            self._envelope(chunk=False) | {"choices": [choice]} | _accounts(result, prompt_tokens, settings)
        )

    def chunk(self, text: str | None = None, role: bool = False) -> dict:
        """A stream chunk adding `text` (chat: `role=True` opens the assistant message)."""
        if self.chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice |= {"logprobs": None, "finish_reason": None}
        return self._envelope(chunk=True) | {"choices": [choice]}

    def last_chunk(self, result: GenerationResult, prompt_tokens: int, settings: dict) -> dict:
        """The final stream chunk: no text, the finish reason, usage and statistics."""
        body = self.chunk()
        body["choices"][0]["finish_reason"] = result.finish_reason
        return body | _accounts(result, prompt_tokens, settings)


def _accounts(result: GenerationResult, prompt_tokens: int, settings: dict) -> dict:
    completion = len(result.tokens)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    decoding = {k: v for k, v in settings.items() if k not in ("stop", "max_new_tokens", "seed")}
    return {"usage": usage, "mtad": decoding | {"seed": result.seed} | result.stats.as_dict()}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
