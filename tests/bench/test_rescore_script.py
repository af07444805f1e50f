"""benchmarks/rescore_humaneval.py scores recorded answers again with the bench's scorer and names
every changed verdict: here a recorded pass that wrote outside its directory fails in the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtad.bench.datasets import load_humaneval
from mtad.bench.humaneval import extract_program
from mtad.bench.sandbox import isolation

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rescore_humaneval.py"
SOLVED = """```python
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])
```"""
WRONG = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
NO_CODE = "I would compare every pair of numbers."


def _row(method: str, text: str, correct: bool, detail: str) -> dict:
    problem = load_humaneval()[0].reference
    program = extract_program(text, problem).program
    task = {
        "metric": "pass@1",
        "score": float(correct),
        "detail": detail,
        "correct": correct,
        "program": program,
    }
    return {"prompt_id": "HumanEval/0", "dataset": "humaneval", "method": method, "prompt_format": "chat",
            "text": text, "task": task}  # fmt: skip


def _rescore(tmp_path: Path, rows: list[dict]) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    flags = [] if isolation().isolated else ["--allow-unsandboxed-code"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(results), "--out", str(tmp_path / "rescore"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = json.loads((tmp_path / "rescore.json").read_text())
    items = [json.loads(line) for line in (tmp_path / "rescore.jsonl").read_text().splitlines()]
    return done, summary, items


def test_unchanged_verdicts_are_counted_per_method_with_pass_at_1(tmp_path):
    rows = [
        _row("ar", SOLVED, True, "passed (from the fenced block 1)"),
        _row("ar", WRONG, False, "failed: AssertionError (from the fenced block 1)"),
        _row("sd", NO_CODE, False, "no code: no parseable Python in the answer defines `has_close_elements`"),
    ]
    done, summary, items = _rescore(tmp_path, rows)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"isolation: {isolation().describe()}" in done.stdout
    assert summary["verdicts_changed"] == 0 and summary["programs_changed"] == 0
    ar, sd = summary["per_method"]["ar"], summary["per_method"]["sd"]
    assert (ar["samples"], ar["programs"], ar["verdict_same"], ar["passed_before"], ar["passed_after"]) == (
        2, 2, 2, 1, 1,
    )  # fmt: skip
    assert ar["pass_at_1_before"] == ar["pass_at_1_after"] == 0.5
    assert (sd["samples"], sd["programs"], sd["passed_after"]) == (1, 0, 0)
    assert [item["correct"] for item in items] == [True, False, False]


@pytest.mark.skipif(not isolation().isolated, reason=f"no sandbox here: {isolation().detail}")
def test_a_recorded_pass_that_wrote_outside_its_directory_fails_now_and_is_named(tmp_path):
    outside = tmp_path / "written-by-the-model.txt"
    escaping = SOLVED.replace("    return any", f"    open({str(outside)!r}, 'w').write('x')\n    return any")
    done, summary, items = _rescore(
        tmp_path, [_row("mtad", escaping, True, "passed (from the fenced block 1)")]
    )
    assert done.returncode == 1  # a verdict changed
    assert summary["verdicts_changed"] == 1 and summary["per_method"]["mtad"]["pass_at_1_after"] == 0.0
    # refused by the read-only mount, or before it by the directory's permissions (a fresh uid)
    assert items[0]["verdict_changed"] and items[0]["detail"].startswith("failed:")
    assert "Read-only file system" in items[0]["detail"] or "Permission denied" in items[0]["detail"]
    assert "HumanEval/0 mtad: recorded 'passed" in done.stdout
    assert not outside.exists()
