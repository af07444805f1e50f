"""Reaching a Ray cluster, for `mtad bench --ray` and `mtad serve --ray` (Ray is the optional extra
`mtad[ray]`; this module imports it only when called).

`connect(address)` joins a cluster: `LOCAL` (None) starts a local one on this machine, "auto" the
one `ray start` runs here, anything else is an address (host:port of the head's GCS, or
ray://host:port). Each way of failing is one line, a `ClusterError`, raised before any model
loads: Ray not installed, nothing listening at the address, no running cluster for "auto", and
(`check_room`) a cluster whose nodes cannot hold the workers asked for. A process that is already
connected (a test, a notebook) keeps its connection, and `connect` leaves it open when done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mtad.errors import ClusterError

LOCAL = None  # `--ray` without a value: a cluster of this machine alone, started for the run
INSTALL_HINT = "pip install 'mtad[ray]'"
_REACH_TIMEOUT_S = 3.0


def require_ray() -> Any:
    """The `ray` module, or a `ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Workers:
    """How many workers (Ray actors or Serve replicas) and what each reserves."""

    count: int | None  # None: as many as the cluster has room for
    cpus: int = 1
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ClusterError(f"the number of Ray workers must be >= 1, got {self.count}")
        if self.cpus < 1:
            raise ClusterError(f"CPUs per Ray worker must be >= 1, got {self.cpus}")
        if not 0 <= self.gpus or not math.isfinite(self.gpus):
            raise ClusterError(f"GPUs per Ray worker must be >= 0, got {self.gpus}")

    def describe(self) -> str:
        gpus = f" and {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus} CPU{'s' if self.cpus > 1 else ''}{gpus} each"


@contextlib.contextmanager
def connect(address: str | None, *, log_to_driver: bool = False) -> Iterator[Any]:
    """Join the cluster at `address` for the block (see the module docstring); yields `ray`."""
    ray = require_ray()
    if address not in (LOCAL, "auto") and not address.startswith("ray://"):
        _check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        local = {"include_dashboard": False} if address is LOCAL else {}  # no web UI to leave behind
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver, **local)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = "this machine" if address == "auto" else address
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ClusterError(f"cannot join a Ray cluster at {where}: {first}") from None
    previous = _stop_on_sigterm()
    try:
        yield ray
    finally:
        ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C while joined (Ray's own handler ends the driver without stopping
    the cluster it started, whose agents then outlive it); returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _check_reachable(address: str) -> None:
    """A head's GCS listens at host:port; say so in one line, in seconds, when nothing does (Ray
    itself retries for a minute or more)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(f"invalid Ray address {address!r}; allowed: auto, host:port or ray://host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_REACH_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {reason}") from None


def check_room(ray: Any, workers: Workers) -> int:
    """How many workers start: `workers.count`, or all that fit. A `ClusterError` when the live
    nodes cannot hold that many (each worker's CPUs and GPUs on one node)."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    room = sum(_fits(node, workers) for node in nodes)
    if workers.count is not None and room < workers.count or room == 0:
        totals = ", ".join(f"{n.get('CPU', 0):g} CPUs/{n.get('GPU', 0):g} GPUs" for n in nodes) or "none"
        asked = "one worker" if workers.count is None else f"{workers.count} workers"
        raise ClusterError(
            f"the Ray cluster has room for {room} workers of {workers.describe()} (nodes: {totals}); "
            f"asked for {asked}"
        )
    return room if workers.count is None else workers.count


def _fits(node: dict, workers: Workers) -> int:
    by_cpu = int(node.get("CPU", 0) // workers.cpus)
    by_gpu = int(node.get("GPU", 0) // workers.gpus) if workers.gpus else by_cpu
    return min(by_cpu, by_gpu)


def node_of_this_process(ray: Any) -> dict[str, Any]:
    """This worker's node: its address and the CPUs and GPUs Ray counts there."""
    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            resources = node.get("Resources", {})
            return {
                "node_ip": node.get("NodeManagerAddress"),
                "node_cpus": resources.get("CPU", 0),
                "node_gpus": resources.get("GPU", 0),
            }
    return {"node_ip": None, "node_cpus": None, "node_gpus": None}
