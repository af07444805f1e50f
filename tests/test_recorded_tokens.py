"""Same seeds, same tokens: every built-in method, solo and batched, against tokens recorded once.

`tests/data/recorded_tokens.json` holds the token ids (and the round counts behind them) that
every method gives on the tiny seeded pairs of conftest, with fixed seeds and settings, alone and
in a batch of three prompts, with a token draft and with a feature draft. A change that is meant
to keep behaviour (a refactor, a move) must leave them equal; a change that is meant to alter
what is sampled re-records them on purpose:

    MTAD_RECORD_TOKENS=1 python -m pytest -q tests/test_recorded_tokens.py

gamma is fixed (gamma "auto" measures forward times, so its depths differ between processes).
The models are float32 on the CPU: the recording holds for this torch build on x86-64 CPUs; a
platform whose matmuls round differently may flip a near tie and must re-record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import mtad
from conftest import tiny_llama
from test_feature_draft import feature_draft

RECORDING = Path(__file__).parent / "data" / "recorded_tokens.json"
PROMPTS = [[0, 5, 7, 3], [0, 2], [0, 9, 9, 9, 4, 11, 12, 6]]
SETTINGS = dict(
    gamma=3, beam_width=3, threshold=0.3, tree=(3, 2), reference="best",
    temperature=1.0, top_k=8, top_p=0.9, max_new_tokens=20, eos_token_id=[],
)  # fmt: skip
SEED = 5
RECORD = os.environ.get("MTAD_RECORD_TOKENS") == "1"


@pytest.fixture(scope="module")
def pairs():
    """Draft kind -> (target, draft): conftest's token pair, and a feature draft over an id subset."""
    feature_target = tiny_llama(seed=0, layers=3)
    return {
        "token": (tiny_llama(seed=0), tiny_llama(seed=1, layers=1)),
        "feature": (feature_target, feature_draft(feature_target, token_ids=[1, *range(3, 16)])),
    }


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for kind in ("token", "feature"):
        for method in mtad.METHODS:
            if kind == "feature" and not mtad.methods()[method].needs_draft:
                continue  # target-only methods never read a draft: the token pair covers them
            cases += [(kind, method, "solo"), (kind, method, "batch")]
    return cases


def _record(result: mtad.GenerationResult) -> dict:
    stats = result.stats
    return {
        "tokens": result.tokens,
        "rounds": stats.rounds,
        "accepted": stats.accepted_tokens,
        "target_calls": stats.target_calls,
    }


def _decode(pairs, kind: str, method: str, mode: str) -> list[dict]:
    target, draft = pairs[kind]
    prompts = PROMPTS[0] if mode == "solo" else PROMPTS
    results = mtad.generate(target, draft, prompts, method=method, seed=SEED, **SETTINGS)
    return [_record(r) for r in (results if isinstance(results, list) else [results])]


@pytest.fixture(scope="module")
def recorded(pairs):
    if RECORD:
        cases = {"/".join(case): _decode(pairs, *case) for case in _cases()}
        RECORDING.parent.mkdir(exist_ok=True)
        lines = [f"{json.dumps(case)}: {json.dumps(rows)}" for case, rows in cases.items()]
        RECORDING.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one case a line: diffs read well
    return json.loads(RECORDING.read_text())


def test_the_recording_covers_every_built_in_method(recorded):
    assert sorted(recorded) == sorted("/".join(case) for case in _cases())


@pytest.mark.parametrize("case", _cases(), ids="/".join)
def test_same_seeds_give_the_recorded_tokens(pairs, recorded, case):
    expected = recorded["/".join(case)]
    assert _decode(pairs, *case) == expected
    kind, method, _ = case
    if mtad.methods()[method].needs_draft:  # guard: the recording really exercised drafting
        assert any(0 < row["accepted"] for row in expected)
