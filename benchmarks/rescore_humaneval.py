"""Re-score a HumanEval bench run's recorded programs through today's execution path.

    python benchmarks/rescore_humaneval.py docs/results/humaneval-chat/results.jsonl \
        --out docs/results/humaneval-chat/rescore

Every row of a `mtad bench --dataset humaneval` results.jsonl keeps the answer (`text`), the
program that ran (`task.program`) and its verdict (`task.correct`, `task.detail`). This script
scores each answer again with the bench's own scorer (`mtad.bench.scoring.score_task`: the chat
answer's program is extracted again, then run against the problem's tests by
`mtad.bench.execution.check_solution`, in the sandbox where this machine has one) and compares:

- the program: the one extracted now against the recorded one (the extraction rules have a
  version; a different program means the rules changed since the run). Where they differ, the
  recorded program is also run, so every recorded program is re-executed;
- the verdict: pass/fail now against the recorded one, per method, with pass@1 before and after.

Rows without a program ("no code: ...") are failures either way; nothing runs for them. It
prints the isolation that ran and a table per method, and writes `<out>.jsonl` (one line a row:
both verdicts and details) and `<out>.json` (the counts). Exit code 1 when a verdict changed.
Model-written code runs only in a sandbox, unless --allow-unsandboxed-code is given.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

from mtad.bench.datasets import PromptRecord, load_humaneval
from mtad.bench.execution import allow_unsandboxed, check_isolation, check_solution
from mtad.bench.scoring import score_task

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "docs" / "results" / "humaneval-chat" / "results.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=DEFAULT_RESULTS, help="a results.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="<out>.jsonl and <out>.json (not written)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program (the bench's 10)")
    parser.add_argument("--limit", type=int, default=None, help="the first N rows only")
    parser.add_argument(
        "--allow-unsandboxed-code",
        action="store_true",
        help="run the programs with resource limits only where this machine has no sandbox",
    )
    args = parser.parse_args()
    if args.allow_unsandboxed_code:
        allow_unsandboxed()
    sandbox = check_isolation(args.allow_unsandboxed_code)
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row.get("dataset") == "humaneval" and row.get("task")][: args.limit]
    problems = {record.id: record for record in load_humaneval()}
    print(f"isolation: {sandbox.describe()}")
    print(f"{len(rows)} recorded samples from {args.results}")
    start = time.monotonic()
    rescored = []
    for number, row in enumerate(rows, start=1):
        rescored.append(rescore(row, problems[row["prompt_id"]], args.timeout))
        if number % 50 == 0:
            print(f"  {number}/{len(rows)} in {time.monotonic() - start:.0f} s", flush=True)
    summary = summarize(rescored) | {
        "isolation": sandbox.describe(),
        "results": str(args.results),
        "seconds": round(time.monotonic() - start, 1),
    }
    print("\n".join(table(summary)))
    for item in rescored:
        if item["verdict_changed"] or item["program_changed"]:
            print(
                f"{item['prompt_id']} {item['method']}: recorded {item['recorded_detail']!r}; "
                f"now {item['detail']!r}"
                + (
                    f"; recorded program now {item['recorded_program_detail']!r}"
                    if item["program_changed"]
                    else ""
                )
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.with_suffix(".jsonl").open("w") as f:
            f.writelines(json.dumps(item) + "\n" for item in rescored)
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["verdicts_changed"] else 0


def rescore(row: dict, record: PromptRecord, timeout_s: float) -> dict:
    """One recorded sample scored again by the bench's scorer (and its recorded program run)."""
    task = row["task"]
    chat = row.get("prompt_format") == "chat"
    outcome = score_task(record, row.get("text") or "", timeout_s, chat=chat)
    recorded_program = task.get("program")
    item = {
        "prompt_id": row["prompt_id"],
        "method": row["method"],
        "recorded_correct": bool(task["correct"]),
        "recorded_detail": task["detail"],
        "correct": bool(outcome.correct),
        "detail": outcome.detail,
        "program_changed": outcome.program != recorded_program,
    }
    item["verdict_changed"] = item["correct"] != item["recorded_correct"]
    if item["program_changed"]:  # run the recorded program too: its verdict is the one to compare
        if recorded_program is None:
            item["recorded_program_correct"], item["recorded_program_detail"] = False, "no program recorded"
        else:
            result = check_solution(record.reference, recorded_program, timeout_s=timeout_s)
            item["recorded_program_correct"] = result.passed
            item["recorded_program_detail"] = result.status + (f": {result.reason}" if result.reason else "")
        item["verdict_changed"] = item["recorded_program_correct"] != item["recorded_correct"]
    return item


def summarize(rescored: list[dict]) -> dict:
    """Counts per method: samples, programs run, same/changed verdicts, pass@1 before and after."""
    methods: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for item in rescored:
        counts = methods[item["method"]]
        counts["samples"] += 1
        counts["programs"] += item["recorded_detail"].split(":")[0] != "no code"
        counts["verdict_same"] += not item["verdict_changed"]
        counts["verdict_changed"] += item["verdict_changed"]
        counts["program_changed"] += item["program_changed"]
        counts["passed_before"] += item["recorded_correct"]
        counts["passed_after"] += item.get("recorded_program_correct", item["correct"])
    per_method = {
        method: dict(counts)
        | {
            "pass_at_1_before": counts["passed_before"] / counts["samples"],
            "pass_at_1_after": counts["passed_after"] / counts["samples"],
        }
        for method, counts in methods.items()
    }
    return {
        "samples": len(rescored),
        "verdicts_changed": sum(c["verdict_changed"] for c in methods.values()),
        "programs_changed": sum(c["program_changed"] for c in methods.values()),
        "per_method": per_method,
    }


def table(summary: dict) -> list[str]:
    lines = [
        "| method | samples | programs run | verdict same | verdict changed | pass@1 before | pass@1 after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, c in summary["per_method"].items():
        lines.append(
            f"| {method} | {c['samples']} | {c['programs']} | {c['verdict_same']} | {c['verdict_changed']} "
            f"| {c['pass_at_1_before']:.3f} ({c['passed_before']}) | {c['pass_at_1_after']:.3f} "
            f"({c['passed_after']}) |"
        )
    lines.append(
        f"{summary['samples']} samples; verdicts changed: {summary['verdicts_changed']}; programs "
        f"extracted differently from the recorded ones: {summary['programs_changed']}"
    )
    return lines


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
