"""Request bodies of the OpenAI-compatible endpoints, validated once: a bad field is a 400 naming it.

Which OpenAI fields this server honours, and what happens to the others:

- honoured: `model`, `prompt` / `messages`, `max_tokens` (chat also `max_completion_tokens`),
  `temperature`, `top_p`, `stop` (up to 4 strings), `seed`, `stream`, and the extension field
  `mtad` (each decoding setting `mtad.config.SETTINGS` places there: method, gamma, beam_width,
  threshold, with_replacement, tree, reference, top_k).
- the common extension `top_k` at the top level too (vLLM and others take it there, e.g. the
  openai client's `extra_body={"top_k": 10}`); given both there and in `mtad`, the two must agree.
- accepted and ignored, because they cannot change the output: `user` (an end-user id for a
  provider's abuse monitoring) and `stream_options.include_usage` (usage is always sent, in the
  final chunk of a stream).
- accepted only at their neutral value, the one that means "feature off" (see `NEUTRAL`):
  `n=1`, `best_of=1`, `echo=false`, `logprobs`, `presence_penalty=0`, ...
- anything else: 400 "unsupported parameter". Nothing is silently ignored.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from mtad.config import SETTINGS, Setting, shown

MAX_STOP_STRINGS = 4

#: Fields accepted only at these values (None, i.e. JSON null, is always accepted).
NEUTRAL: dict[str, tuple] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "suffix": ("",),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none",),
    # Sampling extensions other OpenAI-compatible servers take, accepted where they change nothing.
    "min_p": (0, 0.0),
    "repetition_penalty": (1, 1.0),
}


class ApiError(Exception):
    """An OpenAI-style error: HTTP status and `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.kind = message, status, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _option(setting: Setting) -> tuple:
    """A decoding setting as an optional request field (a float must be finite)."""
    finite = {"allow_inf_nan": False} if setting.request_type is float else {}
    return setting.request_type | None, Field(default=None, **finite)


#: The `mtad` extension field: every setting declared at "mtad.<name>" (`mtad.config.SETTINGS`);
#: unset values take the server's defaults (its CLI flags).
DecodingOptions = create_model(
    "DecodingOptions",
    __base__=_Strict,
    **{
        name: _option(setting)
        for name, setting in SETTINGS.items()
        if setting.request_field == f"mtad.{name}"
    },
)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Request(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    # Finite whatever the method: greedy ignores the temperature but the response echoes it.
    temperature: float | None = Field(default=None, allow_inf_nan=False)
    top_p: float | None = Field(default=None, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = None
    mtad: DecodingOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if stops is not None and not all(stops):
            raise ValueError("stop strings must be non-empty")
        return stops or None

    def new_tokens_requested(self) -> int | None:
        return self.max_tokens

    def decoding_options(self) -> dict:
        """The `mtad` object's settings, with a top-level `top_k` (which must agree with its own)."""
        options = self.mtad.model_dump(exclude_none=True) if self.mtad else {}
        if self.top_k is None:
            return options
        if options.get("top_k", self.top_k) != self.top_k:
            raise ApiError(
                f"top_k={self.top_k} and mtad.top_k={options['top_k']} disagree; allowed: one of them, "
                "or the same value in both",
                param="top_k",
                code="invalid_parameter",
            )
        return options | {"top_k": self.top_k}


class CompletionRequest(_Request):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError(f"exactly one prompt per request (n=1), got a list of {len(prompt)}")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("prompt is empty")
        return prompt


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_input(self) -> dict:
        """The message as chat templates expect it: text content, `developer` read as `system`."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content}
        return message | ({"name": self.name} if self.name is not None else {})


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def new_tokens_requested(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ApiError(
                "give max_tokens or max_completion_tokens, not both",
                param="max_completion_tokens",
                code="invalid_parameter",
            )
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(raw: bytes, schema: type[_Request]) -> _Request:
    """Validate a JSON body against `schema`; raise `ApiError` (400) naming the first bad field."""
    data = _json_object(raw)
    _check_text(data)
    _check_neutral(data)
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise _api_error(error, schema) from None


def _json_object(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(f"request body is not valid JSON: {error}", code="invalid_json") from None
    except RecursionError:  # '[[[[...' nested deeper than the parser's stack
        raise ApiError(
            "request body nests arrays or objects too deeply; allowed: a flat request object",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise ApiError(f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def _check_text(data: dict) -> None:
    """Refuse strings that are not valid Unicode text (JSON allows a lone surrogate like
    "\\ud800"; no tokenizer does), naming the field. Iterative: nesting is bounded only by json."""
    pending: list[tuple[str, object]] = [("", data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            pending += [(f"{path}.{k}" if path else k, v) for k, v in reversed(list(value.items()))]
            pending += [(f"{path} (a key)" if path else "body (a key)", k) for k in value]
        elif isinstance(value, list):
            pending += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value)))]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                bad = error.object[error.start : error.end].encode("utf-8", "backslashreplace").decode()
                field = path.encode("utf-8", "backslashreplace").decode()
                raise ApiError(
                    f"invalid {field!r}: not valid Unicode text ({bad} at character {error.start}); "
                    "allowed: text without lone surrogates",
                    param=field,
                    code="invalid_parameter",
                ) from None


def _check_neutral(data: dict) -> None:
    """Remove fields set to their neutral value; a non-neutral value is a 400 naming the field."""
    for name, allowed in NEUTRAL.items():
        if name not in data:
            continue
        value = data.pop(name)
        if value is not None and not any(_same(value, a) for a in allowed):
            shown = " or ".join(json.dumps(a) for a in allowed)
            raise ApiError(
                f"{name}={_shown_json(value)} is not supported by this server; allowed: {shown} or null",
                param=name,
                code="unsupported_parameter",
            )


def _same(value: object, allowed: object) -> bool:
    """Equal and of the same JSON type (so `true` is not `1`)."""
    numeric = (int, float)
    if isinstance(value, bool) or isinstance(allowed, bool):
        return type(value) is type(allowed) and value == allowed
    if isinstance(value, numeric) and isinstance(allowed, numeric):
        return value == allowed
    return type(value) is type(allowed) and value == allowed


def _api_error(error: ValidationError, schema: type[_Request]) -> ApiError:
    first = error.errors(include_url=False)[0]
    param = _param(first["loc"])
    if first["type"] == "extra_forbidden":
        parent, name = _param((*first["loc"][:-1], "")), first["loc"][-1]
        param = f"{parent}.{name}" if parent else str(name)
        allowed = ", ".join(_allowed(schema, parent))
        return ApiError(
            f"unsupported parameter {shown(param)}; allowed: {allowed}",
            param=param,
            code="unsupported_parameter",
        )
    if first["type"] == "missing":
        return ApiError(f"{param!r} is required", param=param, code="missing_parameter")
    message = first["msg"].removeprefix("Value error, ")
    value = _shown_json(first.get("input"))
    return ApiError(f"invalid {param!r}: {message}; got {value}", param=param, code="invalid_parameter")


def _shown_json(value: object, width: int = 60) -> str:
    """`value` as JSON, cut to `width` characters (a message stays one short line)."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):  # an int past 4300 digits; nesting deeper than the stack
        text = shown(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _allowed(schema: type[_Request], parent: str) -> list[str]:
    """The fields an object at `parent` (a request path) honours (`NEUTRAL` ones are left out)."""
    if parent == "":
        return list(schema.model_fields)
    inner = {"mtad": DecodingOptions, "stream_options": StreamOptions}.get(parent)
    if inner is None:  # messages[i] or a content part
        inner = TextPart if parent.endswith("]") and ".content" in parent else ChatMessage
    return list(inner.model_fields)


def _param(loc: tuple) -> str:
    """`messages[0].role` from pydantic's location, leaving out union-member tags like `list[str]`."""
    names = _field_names()
    path = ""
    for part in loc[:-1] if loc and loc[-1] not in names and not isinstance(loc[-1], int) else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in names:
            path += f".{part}" if path else part
    return path


def _field_names() -> set[str]:
    schemas = (CompletionRequest, ChatRequest, ChatMessage, TextPart, DecodingOptions, StreamOptions)
    return {name for schema in schemas for name in schema.model_fields}


def chat_prompt_ids(tokenizer, messages: list[ChatMessage]) -> list[int]:
    """The prompt ids of a chat request: the tokenizer's chat template with the generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(
            "this model's tokenizer has no chat template; use /v1/completions",
            param="messages",
            code="no_chat_template",
        )
    try:
        ids = tokenizer.apply_chat_template(
            [m.as_template_input() for m in messages], add_generation_prompt=True, tokenize=True
        )
    except Exception as error:  # noqa: BLE001 - templates raise anything (jinja2, ValueError)
        raise ApiError(f"the chat template rejected the messages: {error}", param="messages") from None
    if hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
