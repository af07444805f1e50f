"""The HTTP layer: OpenAI-compatible routes over one `Scheduler` that owns the model pair.

A request flows: check the bearer key (only with `ServeConfig.api_key`; `auth`) -> parse and
validate the body (`schemas`) -> encode the prompt -> build the `mtad.Generation` here, so every
engine validation error is a 400 before anything is queued -> submit to the scheduler (full: a
429 and Retry-After) -> relay its events as one JSON response or as server-sent events. A client
that disconnects cancels its job; the worker moves on at once.

The HTTP thread encodes prompts with its own copy of the tokenizer; the worker thread's copy is
used only inside generations, so the two threads never share a tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mtad.api import price_forwards, stream
from mtad.config import SETTINGS
from mtad.decoding.drafts import LoadedDraft, as_draft, describe_draft
from mtad.decoding.loop import Generation
from mtad.decoding.speculation import SpeculationConfig
from mtad.errors import ConfigError, ContextLengthError, MtadError, NumericalError
from mtad.models import LoadedModel, pair_context_length
from mtad.runtime.native_memory import current_native_memory
from mtad.runtime.precision import dtype_name
from mtad.serve.auth import OPEN_PATHS, ApiKeyMiddleware, check_key
from mtad.serve.config import ServeConfig
from mtad.serve.metrics import CONTENT_TYPE, Metrics
from mtad.serve.responses import Reply, error_response, failure, server_error, sse, too_large
from mtad.serve.scheduler import TERMINAL, Event, Job, QueueFull, Scheduler
from mtad.serve.schemas import ApiError, ChatRequest, CompletionRequest, chat_prompt_ids, parse_request

logger = logging.getLogger("mtad.serve")

# The request field behind each engine setting a `ConfigError` names (`error.setting`).
_ENGINE_PARAMS = {name: setting.request_field for name, setting in SETTINGS.items()} | {"stop": "stop"}
# The settings a request sets at its top level under their own names (OpenAI's fields).
_TOP_LEVEL = tuple(name for name, setting in SETTINGS.items() if setting.request_field == name)
_GENERATING = ("/v1/completions", "/v1/chat/completions")
_OUTCOME = {"done": "ok", "error": "error", "timeout": "timeout", "gone": "cancelled"}


def create_app(target: LoadedModel, draft: LoadedDraft, config: ServeConfig) -> Starlette:
    """The ASGI app serving `target` (with `draft` for drafted methods: a loaded model, or a model-free
    draft whose shared store, if any, serves every request); run it with uvicorn."""
    server = _Server(target, draft, config)
    routes = [
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", server.model, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
    ]
    handlers = {ApiError: server.api_error, HTTPException: _http_error, Exception: server.internal_error}
    middleware = []
    if config.api_key is not None:
        check_key(config.api_key)  # now, not at the first request (Starlette builds middleware lazily)
        open_paths = OPEN_PATHS if config.metrics_need_key else (*OPEN_PATHS, "/metrics")
        refused = server.unauthorised
        middleware.append(Middleware(ApiKeyMiddleware, config.api_key, open_paths, refused))
    app = Starlette(
        routes=routes, exception_handlers=handlers, lifespan=server.lifespan, middleware=middleware
    )
    app.state.server = server
    return app


class _Server:
    def __init__(self, target: LoadedModel, draft: LoadedDraft, config: ServeConfig) -> None:
        if target.tokenizer is None:
            raise ValueError("the target model needs a tokenizer to serve text")
        self.target, self.draft, self.config = target, draft, config
        self.tokenizer = copy.deepcopy(target.tokenizer)  # the HTTP thread's own copy
        self.metrics = Metrics(
            lambda: self.scheduler.depth, lambda: float(self.scheduler.busy), lambda: self.scheduler.rows
        )
        models = (target.model, as_draft(draft))
        self.scheduler = Scheduler(
            config.max_queue, config.max_batch_size, models, self.metrics.batch_step, config.batch_invariant
        )
        self.started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # gamma "auto" reads forward costs measured once per process and batch size: measured
        # before the first request, for the defaults and the largest batch, so none waits for it.
        rows = 1 if self.config.batch_invariant else self.config.max_batch_size
        await asyncio.to_thread(
            price_forwards, self.target.model, as_draft(self.draft), rows, **self.config.defaults
        )
        self.scheduler.start()
        yield
        await asyncio.to_thread(self.scheduler.close)

    # -- routes ------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body = self._parse(await self._body(request), CompletionRequest)
        prompt_ids = self.tokenizer(body.prompt, add_special_tokens=True)["input_ids"]
        return await self._respond(request, body, prompt_ids, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        body = self._parse(await self._body(request), ChatRequest)
        prompt_ids = chat_prompt_ids(self.tokenizer, body.messages)
        return await self._respond(request, body, prompt_ids, chat=True)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    async def health(self, request: Request) -> Response:
        alive = self.scheduler.alive
        described = describe_draft(self.draft)
        body = {
            "status": "ok" if alive else "worker stopped",
            "model": self.config.model_name,
            "queue_depth": self.scheduler.depth,
            "busy": self.scheduler.busy,
            "batch_rows": self.scheduler.rows,
            "max_batch_size": self.config.max_batch_size,
            "batch_invariant": self.config.batch_invariant,
            "limits": dataclasses.asdict(self.config.limits),
            "dtype": dtype_name(self.target.model.dtype),
            "draft_dtype": (described or {}).get("dtype"),
            "fast_path": self.target.fast_path.as_dict() if self.target.fast_path else None,
            "draft_fast_path": (described or {}).get("fast_path"),
            "draft": described,  # a model-free draft: its kind and the memory of any shared store
            "native_memory": current_native_memory().as_dict(),
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    # -- errors --------------------------------------------------------------------------------

    async def api_error(self, request: Request, error: ApiError) -> Response:
        self.metrics.count(_endpoint(request), "rejected" if error.status == 429 else "invalid")
        return error_response(error)

    def unauthorised(self, path: str) -> None:
        self.metrics.count(path if path in _GENERATING else "other", "unauthorized")

    async def internal_error(self, request: Request, error: Exception) -> Response:
        logger.error("unhandled error on %s", request.url.path, exc_info=error)
        self.metrics.count(_endpoint(request), "error")  # every 5xx is counted, expected or not
        return error_response(server_error(error))

    # -- one generation request -----------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) past `max_request_bytes` without reading it whole."""
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(
        self, raw: bytes, schema: type[CompletionRequest | ChatRequest]
    ) -> CompletionRequest | ChatRequest:
        body = parse_request(raw, schema)
        self._check_model(body.model)
        return body

    async def _respond(
        self, request: Request, body: CompletionRequest | ChatRequest, prompt_ids: list[int], chat: bool
    ) -> Response:
        prompt_param = "messages" if chat else "prompt"
        settings = self._settings(body, len(prompt_ids), prompt_param)
        params = _ENGINE_PARAMS | ({"top_k": "top_k"} if body.top_k is not None else {})
        generation = self._generation(prompt_ids, settings, prompt_param, params)
        job = Job(generation, asyncio.get_running_loop(), self.config.request_timeout_s)
        self._submit(job)
        reply, prompt_tokens = Reply.new(chat, self.config.model_name), len(prompt_ids)
        events = self._events(job, request, _endpoint(request), settings["method"], prompt_tokens)
        if body.stream:
            chunks = self._stream(events, reply, prompt_tokens, settings)
            return StreamingResponse(
                chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await self._collect(events, reply, prompt_tokens, settings)

    def _check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise ApiError(
                f"unknown model {name!r}; this server serves {self.config.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def _settings(self, body: CompletionRequest | ChatRequest, prompt_len: int, prompt_param: str) -> dict:
        """Server defaults, overridden by what the request set; max_new_tokens capped by the context."""
        settings = self.config.defaults | body.decoding_options()
        for name in _TOP_LEVEL:
            if getattr(body, name) is not None:
                settings[name] = getattr(body, name)
        settings["stop"] = body.stop
        requested = body.new_tokens_requested()
        room = self._room(prompt_len, self._needs_draft(settings["method"]), prompt_param)
        budget = self.config.defaults["max_new_tokens"] if requested is None else requested
        settings["max_new_tokens"] = budget if room is None else min(budget, room)
        return settings

    def _needs_draft(self, method: str) -> bool:
        try:
            return SpeculationConfig(method=method).needs_draft
        except MtadError as error:
            raise ApiError(str(error), param="mtad.method", code="invalid_parameter") from None

    def _room(self, prompt_len: int, needs_draft: bool, prompt_param: str) -> int | None:
        """Tokens the context window leaves after the prompt (None: no known limit)."""
        draft = self.draft.model if needs_draft and isinstance(self.draft, LoadedModel) else None
        limit = pair_context_length(self.target.model, draft)
        if limit is None:
            return None
        if prompt_len >= limit:
            raise ApiError(
                f"the prompt is {prompt_len} tokens and the context length is {limit}: no room "
                "for a completion; shorten the prompt",
                param=prompt_param,
                code="context_length_exceeded",
            )
        return limit - prompt_len

    def _generation(
        self, prompt_ids: list[int], settings: dict, prompt_param: str, params: dict
    ) -> Generation:
        """The request's generation; an engine `ConfigError` is a 400 naming the field (`params`:
        the request field behind each engine setting)."""
        draft = as_draft(self.draft)
        try:
            return stream(
                self.target.model,
                draft,
                prompt_ids,
                tokenizer=self.target.tokenizer,
                limits=self.config.limits,
                **settings,
            )
        except MtadError as error:
            if isinstance(error, ContextLengthError):
                raise ApiError(str(error), param=prompt_param, code="context_length_exceeded") from None
            setting = error.setting if isinstance(error, ConfigError) else None
            param = prompt_param if setting == "prompt" else params.get(setting)
            raise ApiError(str(error), param=param, code="invalid_parameter") from None

    def _submit(self, job: Job) -> None:
        try:
            self.scheduler.submit(job)
        except QueueFull:
            wait = self.scheduler.retry_after_s()
            raise ApiError(
                f"the server is busy ({self.config.max_queue} requests queued); retry in about {wait} s",
                status=429,
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            ) from None

    async def _events(
        self, job: Job, request: Request, endpoint: str, method: str, prompt_tokens: int
    ) -> AsyncIterator[Event]:
        """The job's events up to the terminal one; a disconnect ends them with "gone"."""
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        outcome = "cancelled"  # unless a terminal event says otherwise
        try:
            while True:
                event = await job.events.get()
                if event.kind in (*TERMINAL, "gone"):
                    outcome = _OUTCOME[event.kind]
                    if event.kind == "done":
                        self.metrics.observe(method, prompt_tokens, event.payload)
                    if event.kind == "error" and isinstance(event.payload, NumericalError):
                        logger.error("generation failed: %s", event.payload)  # the model's, not ours
                    elif event.kind == "error":
                        logger.error("generation failed", exc_info=event.payload)
                    yield event
                    return
                yield event
        finally:
            watcher.cancel()
            job.cancel()  # a no-op when the job finished; frees the worker when we stopped early
            self.metrics.count(endpoint, outcome)

    async def _collect(
        self, events: AsyncIterator[Event], reply: Reply, prompt_tokens: int, settings: dict
    ) -> Response:
        async with contextlib.aclosing(events):
            async for event in events:
                if event.kind == "done":
                    return JSONResponse(reply.whole(event.payload, prompt_tokens, settings))
                if event.kind in ("error", "timeout"):
                    return error_response(failure(event))
                if event.kind == "gone":
                    return Response(status_code=499)  # nobody is listening
        return Response(status_code=499)

    async def _stream(
        self, events: AsyncIterator[Event], reply: Reply, prompt_tokens: int, settings: dict
    ) -> AsyncIterator[bytes]:
        """One chunk per committed block that adds text, a final chunk with finish_reason and
        usage, then `data: [DONE]`. A failure mid-stream is an `{"error": ...}` event."""
        async with contextlib.aclosing(events):
            if reply.chat:
                yield sse(reply.chunk(text="", role=True))
            async for event in events:
                if event.kind == "block" and event.payload.text:
                    yield sse(reply.chunk(event.payload.text))
                elif event.kind == "done":
                    yield sse(reply.last_chunk(event.payload, prompt_tokens, settings))
                elif event.kind in ("error", "timeout"):
                    yield sse(failure(event).body())
                elif event.kind == "gone":
                    return
            yield sse("[DONE]")

    def _model_card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": self.started, "owned_by": "mtad"}


def _endpoint(request: Request) -> str:
    """The metrics label: a generating route, or "other" (paths a client invents stay out)."""
    return request.url.path if request.url.path in _GENERATING else "other"


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to go away; then cancel its job and wake whoever waits on its events."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()
    job.events.put_nowait(Event("gone"))


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Unknown route or method, in the same error shape as everything else."""
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {error.detail}"
    return error_response(ApiError(message, status=error.status_code, kind=kind))
