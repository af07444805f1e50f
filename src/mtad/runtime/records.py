"""Measurements kept across processes on one machine (the fast path's self-test): small JSON
records under `$MTAD_CACHE/machine` (default `~/.cache/mtad/machine`).

A record holds the key it was measured under (`machine_key`: the CPU's model and flags, the torch
version, the threads torch uses, and the caller's own terms) beside the values, in a file named by
the key's digest, so processes with other thread counts keep records of their own instead of
replacing each other's. A record whose key differs from its name's is stale; one that does not
parse, or holds other fields, is corrupt. Either is measured again and rewritten, never trusted.
Writing is one rename (readers never see half a record); a cache that cannot be written (a
read-only home) only means the next process measures again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mtad.runtime.precision import cpu_flags, cpu_model


def cache_root() -> Path:
    """Where mtad keeps converted models, distillation data and machine records: `$MTAD_CACHE`
    or `~/.cache/mtad`."""
    configured = os.environ.get("MTAD_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mtad"


def records_dir() -> Path:
    return cache_root() / "machine"


def record_path(name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return records_dir() / f"{name}-{digest}.json"


def machine_key() -> dict:
    """What a CPU measurement depends on, beyond the code that made it."""
    flags = " ".join(sorted(cpu_flags()))
    return {
        "cpu": cpu_model(),
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def recall(name: str, key: dict) -> dict | None:
    """The values recorded under `name` for exactly `key`, with `measured_at`; None when there is
    no record, or it is stale or corrupt."""
    try:
        record = json.loads(record_path(name, key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("values"), dict):
        return None
    return record["values"] | {"measured_at": record.get("measured_at", "")}


def remember(name: str, key: dict, values: dict) -> Path | None:
    """Record `values` measured under `key` (replacing the record of `name` under that key); the
    path, or None where the cache cannot be written."""
    path = record_path(name, key)
    record = {"key": key, "values": values, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            try:
                json.dump(record, handle, indent=1)
            except OSError:  # a full disk: no half-written file left beside the records
                handle.close()
                os.unlink(handle.name)
                raise
        os.replace(handle.name, path)
    except OSError:
        return None
    return path
