"""HumanEval in chat form: the instruction, and the program extracted from hand-written answers."""

from __future__ import annotations

import pytest

from mtad.bench.datasets import PromptRecord
from mtad.bench.execution import check_solution
from mtad.bench.humaneval import chat_instruction, extract_program
from mtad.bench.scoring import score_task

PROBLEM = {
    "task_id": "Test/1",
    "prompt": (
        "from typing import List\n\n\n"
        "def double(x: int) -> int:\n    return 2 * x\n\n\n"
        'def double_all(numbers: List[int]) -> List[int]:\n    """Double every number."""\n'
    ),
    "test": "def check(candidate):\n    assert candidate([1, 2]) == [2, 4]\n    assert candidate([]) == []\n",
    "entry_point": "double_all",
}
SOLUTION = "def double_all(numbers: List[int]) -> List[int]:\n    return [double(n) for n in numbers]\n"


def passes(answer: str) -> bool:
    extraction = extract_program(answer, PROBLEM)
    assert extraction.program is not None, extraction.reason
    return check_solution(PROBLEM, extraction.program).passed


def test_the_instruction_holds_the_problem_in_a_python_block():
    message = chat_instruction(PROBLEM["prompt"])
    assert message.startswith("Complete the following Python function.")
    assert "```python\nfrom typing import List" in message and message.endswith(
        '"""Double every number."""\n```'
    )


def test_a_fenced_answer_that_restates_the_signature_gets_the_prompts_imports_and_helpers():
    answer = f"Sure! Here is the function:\n\n```python\n{SOLUTION}```\n\nIt doubles each number."
    extraction = extract_program(answer, PROBLEM)
    assert extraction.source == "fenced block 1" and extraction.reason == ""
    # List and double() come from the prompt's preamble; the model restated neither
    assert extraction.program.startswith("from typing import List\n")
    assert "def double(x: int)" in extraction.program and SOLUTION in extraction.program
    assert check_solution(PROBLEM, extraction.program).passed


def test_an_unfenced_answer_takes_the_longest_parseable_span():
    answer = f"Here is my solution.\n\n{SOLUTION}\nThis works because doubling is linear.\n"
    extraction = extract_program(answer, PROBLEM)
    assert extraction.source == "unfenced answer" and "This works" not in extraction.program
    assert passes(answer)


def test_a_body_only_answer_continues_the_prompts_function():
    answer = "```python\n    return [double(n) for n in numbers]\n```"
    extraction = extract_program(answer, PROBLEM)
    assert extraction.program.startswith(PROBLEM["prompt"])
    assert passes(answer)


def test_several_blocks_the_first_that_implements_the_function_wins():
    restated = 'def double_all(numbers: List[int]) -> List[int]:\n    """Double every number."""\n'
    wrong = "def double_all(numbers):\n    return numbers\n"
    answer = (
        f"The signature is:\n```python\n{restated}```\nAn implementation:\n```py\n{SOLUTION}```\n"
        f"A worse one:\n```python\n{wrong}```\nUsage:\n```python\nprint(double_all([1]))\n```"
    )
    extraction = extract_program(answer, PROBLEM)
    assert extraction.source == "fenced block 2" and "return [double(n)" in extraction.program
    assert passes(answer)


def test_demo_code_in_the_block_is_dropped_and_needed_helpers_and_constants_kept():
    answer = (
        "```python\nimport math\n\nFACTOR = 2\n\n\ndef scale(n):\n    return FACTOR * n\n\n\n"
        "def double_all(numbers):\n    return [scale(n) for n in numbers]\n\n\n"
        "def test_it():\n    assert False\n\n\nassert double_all([1]) == [3]  # a wrong demo\n"
        'print(double_all([1, 2]))\nif __name__ == "__main__":\n    raise SystemExit(1)\n```'
    )
    program = extract_program(answer, PROBLEM).program
    assert "import math" in program and "FACTOR = 2" in program and "def scale(n)" in program
    for dropped in ("def test_it", "assert double_all", "print(", "__main__"):
        assert dropped not in program, dropped
    assert passes(answer)


def test_blocks_in_other_languages_are_not_taken_as_code():
    answer = f"Output:\n```text\n[2, 4]\n```\nCode:\n```python\n{SOLUTION}```"
    assert extract_program(answer, PROBLEM).source == "fenced block 2"
    assert passes(answer)


def test_a_block_cut_off_by_the_token_budget_keeps_what_parses():
    answer = f"```python\n{SOLUTION}\n\ndef unrelated(x):\n    if x:\n        return [x for x in"
    extraction = extract_program(answer, PROBLEM)
    assert extraction.source == "fenced block 1" and "unrelated" not in extraction.program
    assert passes(answer)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "no code: the answer is empty"),
        (
            "I am sorry, I cannot help with that.",
            "no code: no parseable Python in the answer defines `double_all`",
        ),
        ("```python\nprint('hello')\n```", "no code: no parseable Python in the answer defines `double_all`"),
        (
            '```python\ndef double_all(numbers: List[int]) -> List[int]:\n    """Double it."""\n    ...\n```',
            "no code: `double_all` in the fenced block 1 has no body (the signature only)",
        ),
        ("```python\ndef double_all(numbers):\n    return [\n```", "no code: no parseable Python"),
    ],
)
def test_no_code_is_a_recorded_failure_with_its_reason_never_a_crash(answer, reason):
    extraction = extract_program(answer, PROBLEM)
    assert extraction.program is None and extraction.reason.startswith(reason)
    outcome = score_task(PromptRecord("Test/1", "humaneval", prompt="", reference=PROBLEM), answer, chat=True)
    assert outcome.correct is False and outcome.score == 0.0 and outcome.program is None
    assert outcome.detail == extraction.reason


def test_score_task_records_the_executed_program_for_chat_and_raw_answers():
    record = PromptRecord("Test/1", "humaneval", prompt=PROBLEM["prompt"], reference=PROBLEM)
    chat = score_task(record, f"```python\n{SOLUTION}```", chat=True)
    assert chat.correct and chat.detail == "passed (from the fenced block 1)"
    assert chat.record()["program"] == extract_program(f"```python\n{SOLUTION}```", PROBLEM).program
    wrong = score_task(record, "```python\ndef double_all(numbers):\n    return numbers\n```", chat=True)
    assert not wrong.correct and "AssertionError" in wrong.detail and "return numbers" in wrong.program
    raw = score_task(record, "    return [double(n) for n in numbers]\n\nprint(1)\n")
    assert raw.correct and raw.program == PROBLEM["prompt"] + "    return [double(n) for n in numbers]\n"
