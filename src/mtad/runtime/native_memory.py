"""Native memory a long-running server must bound: oneDNN's primitive cache and glibc's mmap threshold.

Why: a server meets new matrix shapes for a long time (batch rows x drafted tokens, prompt lengths
of prefills and joins). Measured on the default pair in bfloat16 (docs/results/soak-2026-12):
RSS rose in steps for 30 minutes, +14.7 % after warm-up, while float32 on the same code stayed
flat. Two native caches grow with the number of distinct shapes, not with anything `mtad.serve`
keeps:

- oneDNN, which runs bfloat16 products on CPUs with AVX-512 BF16 or AMX, builds a primitive per
  input shape and keeps up to 1024 of them (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`). Turning the cache
  off stops the growth but rebuilds a primitive on every call (several times the time of a
  product); 64 entries hold every shape a decode step repeats and cost nothing measurable.
- glibc raises its mmap threshold to the largest block freed, after which large activations come
  from the heap and freed memory stays resident. Fixing the threshold (which also switches off
  glibc's dynamic raising) returns large blocks to the system when freed.

Bounded together, 800 distinct bf16 row counts on the pair's layer shapes grow RSS by a third of
what they grow it by with the defaults, and not at all when they repeat
(docs/results/soak-2026-12/native_bounds.py). oneDNN reads its capacity when it builds its first
primitive, so `bound_native_memory` runs before any model is loaded. An
environment that already sets either knob is the user's choice and is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import asdict, dataclass

ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at start-up
#: primitives kept: every shape a decode step repeats, not every shape a server ever meets
SERVER_PRIMITIVE_CACHE = 64
#: bytes: glibc's own starting threshold, kept fixed instead of rising
SERVER_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_bounded: NativeMemory | None = None  # what bound_native_memory set in this process


@dataclass(frozen=True)
class NativeMemory:
    """What bounds a process's native caches, and who chose it (shown in `/health`)."""

    onednn_primitive_cache: int | None  # None: oneDNN's default (1024)
    onednn_primitive_cache_source: str  # "mtad serve" | "environment" | "default"
    mmap_threshold: int | None  # None: glibc's rising threshold
    mmap_threshold_source: str  # "mtad serve" | "environment" | "default" | "not glibc"

    def as_dict(self) -> dict:
        return asdict(self)


def bound_native_memory(
    primitive_cache: int = SERVER_PRIMITIVE_CACHE, mmap_threshold: int = SERVER_MMAP_THRESHOLD
) -> NativeMemory:
    """Bound both caches for this process, unless its environment already chose; say what holds."""
    global _bounded
    cache, cache_source = _environment_int(ONEDNN_CACHE_ENV)
    if cache_source == "default":
        os.environ[ONEDNN_CACHE_ENV] = str(primitive_cache)
        cache, cache_source = primitive_cache, "mtad serve"
    threshold, threshold_source = _environment_int(MMAP_THRESHOLD_ENV)
    if threshold_source == "default":
        if _mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
            threshold, threshold_source = mmap_threshold, "mtad serve"
        else:
            threshold_source = "not glibc"
    _bounded = NativeMemory(cache, cache_source, threshold, threshold_source)
    return _bounded


def current_native_memory() -> NativeMemory:
    """What bounds this process's native caches: as bound here, else as its environment says."""
    if _bounded is not None:
        return _bounded
    cache, cache_source = _environment_int(ONEDNN_CACHE_ENV)
    threshold, threshold_source = _environment_int(MMAP_THRESHOLD_ENV)
    return NativeMemory(cache, cache_source, threshold, threshold_source)


def _environment_int(name: str) -> tuple[int | None, str]:
    text = os.environ.get(name)
    if text is None:
        return None, "default"
    try:
        return int(text), "environment"
    except ValueError:
        return None, "environment"  # the library reading it decides what a bad value means


def _mallopt(parameter: int, value: int) -> bool:
    """glibc's mallopt; False where the C library is not glibc (musl, macOS) or refuses."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(parameter, value) == 1
