"""API-key authentication: every request carries `Authorization: Bearer <key>`, or gets a 401.

As OpenAI's API and the OpenAI-compatible servers (vLLM `--api-key`, llama.cpp `--api-key`, TGI)
do it: the `openai` client sends its `api_key` this way. The key is compared in constant time
(`hmac.compare_digest`, over bytes, so a wrong key's length is the most a timing can tell).
`/health` stays open (load balancers probe it; it tells nothing about the traffic); `/metrics` is
open unless the operator asks otherwise (`--require-api-key-for-metrics`): Prometheus scrapers
are often configured without credentials, but the counters do show the traffic's volume.

The check runs before routing, so an unknown route answers 401 too, and nothing of a request's
body is read without the key. Refusals count in `/metrics` as outcome "unauthorized".
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from mtad.errors import ConfigError
from mtad.serve.responses import error_response
from mtad.serve.schemas import ApiError

OPEN_PATHS = ("/health",)


class ApiKeyMiddleware:
    """ASGI middleware: refuse HTTP requests without the bearer `key` (except `open_paths`)."""

    def __init__(
        self,
        app,
        key: str,
        open_paths: tuple[str, ...] = OPEN_PATHS,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.app, self.key, self.open_paths = app, check_key(key).encode("ascii"), open_paths
        self.on_refused = on_refused  # called with the request path

    async def __call__(self, scope: dict, receive: Callable, send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        if self.on_refused is not None:
            self.on_refused(scope["path"])
        await error_response(unauthorised(_bearer(scope) is not None))(scope, receive, send)

    def _authorised(self, scope: dict) -> bool:
        token = _bearer(scope)
        return token is not None and hmac.compare_digest(token, self.key)


def _bearer(scope: dict) -> bytes | None:
    """The token of the request's `Authorization: Bearer <token>` header, or None."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


def unauthorised(key_given: bool) -> ApiError:
    message = (
        "incorrect API key provided"
        if key_given
        else "no API key provided; send it as 'Authorization: Bearer <key>' (the openai client's api_key)"
    )
    return ApiError(
        message,
        status=401,
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def check_key(key: str, name: str = "api_key") -> str:
    """`key` if a client can send it in a header (printable ASCII, no spaces); `ConfigError` if not."""
    if not isinstance(key, str) or not key or not all(33 <= ord(c) <= 126 for c in key):
        raise ConfigError(
            f"{name} must be a non-empty string of printable ASCII without spaces "
            f"(got {len(key) if isinstance(key, str) else type(key).__name__} characters)",
            "api_key",
        )
    return key
