"""A live server on loopback, on tiny random models, started inside the test session."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import openai
import pytest

import mtad
from conftest import tiny_llama, tiny_tokenizer
from mtad.api import DEFAULT_SETTINGS
from mtad.models import LoadedModel
from mtad.serve import BackgroundServer, ServeConfig, create_app

MODEL = "tiny-pair"
# Every word of the template is in the tiny vocabulary: w3 opens a message, w4 opens the reply.
CHAT_TEMPLATE = (
    "{% for m in messages %}w3 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w4{% endif %}"
)
DEFAULTS = DEFAULT_SETTINGS | {"max_new_tokens": 24}


def tiny_pair(delay_s: float = 0.0) -> tuple[LoadedModel, LoadedModel]:
    """The session's tiny pair, rebuilt (same seeds, same weights).

    `delay_s` > 0 makes a slow pair for timing tests: every target call sleeps that long, and EOS
    is off, so a generation runs exactly max_tokens target calls with method "ar".
    """
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    target, draft = tiny_llama(seed=0), tiny_llama(seed=1, layers=1)
    if delay_s:
        target.register_forward_pre_hook(lambda *_: time.sleep(delay_s))
        target.generation_config.eos_token_id = []
    return LoadedModel(target, tokenizer, "target"), LoadedModel(draft, tokenizer, "draft")


@pytest.fixture(scope="session")
def alone() -> Callable[..., mtad.GenerationResult]:
    """What a request gets when it runs alone: the engine called directly, on its own pair.

    `alone(prompt, chat=False, **settings)`; settings override the server's defaults.
    """
    target, draft = tiny_pair()

    def generate(prompt: str | list[dict], chat: bool = False, **settings) -> mtad.GenerationResult:
        tokenizer = target.tokenizer
        if chat:
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            ids = tokenizer(prompt)["input_ids"]
        return mtad.generate(target.model, draft.model, ids, tokenizer=tokenizer, **(DEFAULTS | settings))

    return generate


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., BackgroundServer]]:
    """Start servers on free loopback ports: `start_server(delay_s=..., max_queue=..., ...)`."""
    servers: list[BackgroundServer] = []

    def start(delay_s: float = 0.0, **config) -> BackgroundServer:
        target, draft = tiny_pair(delay_s)
        app = create_app(target, draft, ServeConfig(MODEL, DEFAULTS, **config))
        servers.append(BackgroundServer(app).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> BackgroundServer:
    return start_server()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
