"""`mtad serve`: an OpenAI-compatible HTTP server decoding with MTAD and its baselines.

    from mtad.serve import ServeConfig, create_app
    app = create_app(target, draft, ServeConfig("my-model", defaults))  # an ASGI app for uvicorn

Routes: POST /v1/completions, POST /v1/chat/completions (both with `stream`), GET /v1/models,
GET /health, GET /metrics. See docs/serve.md for the request fields and the error policy.
"""

from mtad.serve.app import ServeConfig, create_app
from mtad.serve.background import BackgroundServer

__all__ = ["BackgroundServer", "ServeConfig", "create_app"]
