"""OpenAI response shapes for completions and chat completions, whole and as stream chunks.

Every finished response carries `usage` and an `mtad` object: the decoding settings used
(method, gamma, ..., temperature, top_k, top_p, and the seed, so a run can be repeated) and the
request's statistics (`mtad.Stats.as_dict()`).
In a stream they come in the final chunk, the one with `finish_reason`.
Errors have one shape everywhere: `{"error": {"message", "type", "param", "code"}}` (`ApiError`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from starlette.responses import JSONResponse

from mtad.decoding.loop import GenerationResult
from mtad.errors import NumericalError
from mtad.serve.scheduler import Event
from mtad.serve.schemas import ApiError


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


def failure(event: Event) -> ApiError:
    """The error a job's "error" or "timeout" event answers with."""
    if event.kind == "timeout":
        return ApiError(
            f"generation stopped at the server's time limit of {event.payload:g} s per request; "
            "ask for fewer max_tokens",
            status=504,
            kind="timeout_error",
            code="time_limit_exceeded",
        )
    if isinstance(event.payload, NumericalError):
        # The model, not the request, is at fault: a 5xx, but one that says what happened.
        return ApiError(
            f"the model failed on this request: {event.payload}",
            status=500,
            kind="server_error",
            code="model_numerical_error",
        )
    return server_error(event.payload)


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        f"request body is {size} bytes or more; allowed: at most {limit} bytes",
        status=413,
        code="request_too_large",
    )


def server_error(error: BaseException) -> ApiError:
    return ApiError(f"internal error: {type(error).__name__}: {error}", status=500, kind="server_error")


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
