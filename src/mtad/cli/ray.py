"""The --ray flags `mtad bench` (actors) and `mtad serve` (replicas) share; Ray itself is imported
only when a command runs with --ray (`mtad.cluster`)."""

from __future__ import annotations

import argparse

from mtad.cluster import INSTALL_HINT, Workers
from mtad.errors import ConfigError

_LOCAL = "local"


def add_ray_arguments(parser: argparse.ArgumentParser, worker: str, workers: str) -> argparse._ArgumentGroup:
    """--ray [ADDRESS], --ray-{workers} N, --ray-cpus-per-{worker}, --ray-gpus-per-{worker}."""
    group = parser.add_argument_group(f"Ray cluster (optional: {INSTALL_HINT})")
    group.add_argument(
        "--ray",
        nargs="?",
        const=_LOCAL,
        default=None,
        metavar="ADDRESS",
        help=f"run on Ray {workers}: no value (or local) starts a cluster of this machine, auto joins "
        "the one `ray start` runs here, else the head's host:port or ray://host:port",
    )
    group.add_argument(
        f"--ray-{workers}",
        type=int,
        default=None,
        metavar="N",
        help=f"how many {workers} (default: as many as the cluster has room for)",
    )
    group.add_argument(
        f"--ray-cpus-per-{worker}", type=int, default=1, metavar="N",
        help=f"CPUs each {worker} reserves, and its torch threads (default 1)",
    )  # fmt: skip
    group.add_argument(
        f"--ray-gpus-per-{worker}", type=float, default=0.0, metavar="N",
        help=f"GPUs each {worker} reserves (default 0; a fraction shares one)",
    )  # fmt: skip
    return group


def ray_workers(args: argparse.Namespace, worker: str, workers: str) -> Workers | None:
    """The workers --ray asks for (None without --ray); a --ray-* flag without --ray is refused.
    `args.ray` becomes the address `mtad.cluster.connect` takes (None: a local cluster)."""
    count = getattr(args, f"ray_{workers}")
    cpus, gpus = getattr(args, f"ray_cpus_per_{worker}"), getattr(args, f"ray_gpus_per_{worker}")
    if args.ray is None:
        given = [f"--ray-{workers}"] if count is not None else []
        given += [f"--ray-cpus-per-{worker}"] if cpus != 1 else []
        given += [f"--ray-gpus-per-{worker}"] if gpus != 0 else []
        if given:
            raise ConfigError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --ray")
        return None
    for flag, value, least in ((f"--ray-{workers}", count, 1), (f"--ray-cpus-per-{worker}", cpus, 1),
                               (f"--ray-gpus-per-{worker}", gpus, 0)):  # fmt: skip
        if value is not None and not value >= least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if args.ray == _LOCAL:
        args.ray = None
    return Workers(count, cpus, gpus)
