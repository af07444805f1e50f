"""`mtad serve`: an OpenAI-compatible HTTP server decoding with MTAD and its baselines.

    from mtad.serve import ServeConfig, create_app
    app = create_app(target, draft, ServeConfig("my-model", defaults))  # an ASGI app for uvicorn

Routes: POST /v1/completions, POST /v1/chat/completions (both with `stream`), GET /v1/models,
GET /health, GET /metrics. See docs/serve.md for the request fields and the error policy. The app
needs the serve extra (`pip install 'mtad[serve]'`); its names load on first use, so `ServeConfig`
(`mtad.serve.config`) is readable without it.
"""

from __future__ import annotations

import importlib

__all__ = ["BackgroundServer", "ServeConfig", "create_app"]
_HOMES = {"BackgroundServer": "mtad.serve.background", "ServeConfig": "mtad.serve.config",
          "create_app": "mtad.serve.app"}  # fmt: skip


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mtad.serve' has no attribute {name!r}")
