"""`mtad serve` bounds oneDNN's primitive cache and glibc's mmap threshold before it loads a model,
and leaves an environment that chose either alone. Each case runs in a fresh interpreter: both
knobs act on the whole process, and oneDNN reads its capacity once."""

import json
import os
import subprocess
import sys

import pytest

from mtad.runtime import native_memory

PROBE = """
import json, os
from mtad.runtime.native_memory import bound_native_memory, current_native_memory
before = current_native_memory().as_dict()
after = bound_native_memory().as_dict()
print(json.dumps({"before": before, "after": after, "now": current_native_memory().as_dict(),
                  "env": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")}))
"""


def _probe(**environment: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "MALLOC_MMAP_THRESHOLD_")
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env | environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_plain_environment_is_bounded_before_any_model_loads():
    seen = _probe()
    assert seen["before"] == {
        "onednn_primitive_cache": None,
        "onednn_primitive_cache_source": "default",
        "mmap_threshold": None,
        "mmap_threshold_source": "default",
    }
    assert (
        seen["after"]
        == seen["now"]
        == {
            "onednn_primitive_cache": native_memory.SERVER_PRIMITIVE_CACHE,
            "onednn_primitive_cache_source": "mtad serve",
            "mmap_threshold": native_memory.SERVER_MMAP_THRESHOLD,
            "mmap_threshold_source": "mtad serve",
        }
    )
    assert seen["env"] == str(native_memory.SERVER_PRIMITIVE_CACHE)  # what oneDNN reads


def test_an_environment_that_chose_is_left_alone():
    seen = _probe(ONEDNN_PRIMITIVE_CACHE_CAPACITY="0", MALLOC_MMAP_THRESHOLD_="65536")
    assert seen["after"] == {
        "onednn_primitive_cache": 0,
        "onednn_primitive_cache_source": "environment",
        "mmap_threshold": 65536,
        "mmap_threshold_source": "environment",
    }
    assert seen["env"] == "0"


def test_without_glibc_the_threshold_is_reported_as_not_bounded(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(native_memory, "_mallopt", lambda parameter, value: False)
    monkeypatch.setattr(native_memory, "_bounded", None)
    state = native_memory.bound_native_memory()
    assert (state.mmap_threshold, state.mmap_threshold_source) == (None, "not glibc")
    assert state.onednn_primitive_cache_source == "mtad serve"
