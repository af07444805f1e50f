"""Run the server on a thread of this process: for tests, benchmarks and notebooks.

`mtad serve` runs uvicorn in the foreground instead; this helper binds the socket itself so a
caller can ask for port 0 (any free port) and read the port back before the first request.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette


class BackgroundServer:
    """`with BackgroundServer(app) as server: ... server.url ...`; loopback only by default."""

    def __init__(
        self, app: Starlette, host: str = "127.0.0.1", port: int = 0, graceful_s: float = 5.0
    ) -> None:
        self._socket = _listening_socket(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="mtad-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket. Made with proto=IPPROTO_TCP, as uvicorn's own are: asyncio
    sets TCP_NODELAY only on such sockets, and without it a keep-alive client waits ~40 ms (delayed
    ACK) for every response sent in two writes."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen()
    return sock
