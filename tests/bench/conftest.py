"""Where this machine has no sandbox for model-written code, the bench tests opt in, as a user
would with `--allow-unsandboxed-code`: they run known, harmless programs (test_sandbox.py
checks the sandbox itself, and the refusal without the opt-in)."""

from __future__ import annotations

import pytest

from mtad.bench import execution
from mtad.bench.sandbox import isolation


@pytest.fixture(autouse=True)
def _allow_code_where_there_is_no_sandbox(monkeypatch):
    if not isolation().isolated:
        monkeypatch.setattr(execution, "_unsandboxed_allowed", True)
