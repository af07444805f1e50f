"""Linux namespaces around model-written code: no network, nothing writable but its work directory,
a process limit. Used by `mtad.bench.execution.run_python`.

The tool is `unshare` from util-linux (an essential package on Debian, so present on a fresh
machine; nothing is installed). The child runs in new network, mount and PID namespaces:

- network: a namespace of its own with only a loopback interface, down; nothing outside it
  (the host's loopback services included) can be reached, and abstract Unix sockets are per
  namespace too;
- files: every mount is remounted read-only inside its mount namespace, then its work directory
  is bound back writable; `/proc` is the PID namespace's own, so no other process is visible
  (nor its environment);
- processes: RLIMIT_NPROC, enforced because the program never runs as root: as root we switch
  to a fresh unprivileged uid (no process of the machine has it, so the limit counts the
  program's processes only); as another user we enter a user namespace too and drop every
  capability, so the mounts cannot be undone. The fresh uid runs this very interpreter, with its
  packages: where those lie under a directory only root may traverse (a pyenv Python under
  /root), that directory is covered, inside the namespace, by an empty one holding just the
  way to them (`_reach`). When the program exits, the kernel kills every process left in its
  PID namespace.

`isolation()` probes this once per process by running a self-check inside the sandbox (a write
outside the work directory, a connection to loopback and a remount must all fail); anything
less, and it reports "none" with the reason, and the caller decides (`execution` refuses to run
model-written code without isolation unless told to). What stays open: reading files every user
may read, and filesystem Unix sockets the uid may connect to (none for the fresh uid on a
default Debian; a non-root user's own sockets, such as an ssh-agent, stay reachable).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: The runner's exit code when the sandbox could not be set up (the program never ran).
SETUP_FAILED_EXIT = 87
#: Processes (and threads) the program may have at once, itself included.
DEFAULT_MAX_PROCESSES = 32
_NAMESPACES = ("--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc")

# Runs inside the namespaces, as their root, before the program: read-only mounts, the work
# directory writable, then no privileges left (a fresh uid, or no capabilities in a user
# namespace). Arguments: work directory, mode ("uid" or "userns"), uid.
SETUP = r"""
import ctypes, os, sys
def _sandbox(work, mode, uid):
    libc = ctypes.CDLL(None, use_errno=True)
    RDONLY, REMOUNT, BIND = 1, 32, 4096
    KEEP = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
    def mount(source, target, flags):
        if libc.mount(source, target.encode(), None, flags, None) != 0:
            raise OSError(ctypes.get_errno(), "sandbox: cannot remount " + target)
    if mode == "uid":  # before the read-only pass, which then covers these mounts too
        _reach(libc, mount, [p for p in {sys.prefix, sys.base_prefix, *sys.path} if p and os.path.exists(p)],
               os.path.join(os.path.dirname(work), ".reach"))  # fmt: skip
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    mount(work.encode(), work, BIND)  # a mount of its own, left out of the read-only pass below
    for fields in mounts:
        options = fields[5].split(",")
        if "rw" in options:
            target = fields[4].encode().decode("unicode_escape")  # \040 is a space
            flags = REMOUNT | BIND | RDONLY
            for option in options:
                flags |= KEEP.get(option, 0)
            mount(None, target, flags)
    os.chdir(work)  # onto the writable mount (the old working directory is on the read-only one)
    if mode == "uid":
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: none, twice (64 bits)
        if libc.capset(header, data) != 0:
            raise OSError(ctypes.get_errno(), "sandbox: cannot drop capabilities")

def _reach(libc, mount, paths, stash):
    # The interpreter's own files (its standard library, its venv's packages) may lie under a
    # directory only root may traverse (a pyenv Python under /root). Cover each such directory
    # with a tmpfs others may traverse, holding binds of just the children these paths pass
    # through: the fresh uid reaches this interpreter, and nothing else there.
    BIND, REC, DETACH = 4096, 16384, 2
    for path in sorted(paths):
        parts = path.strip("/").split("/")
        for depth in range(len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            if os.stat(ancestor).st_mode & 0o001:
                continue
            inside = ancestor.rstrip("/") + "/"
            children = sorted({p[len(inside):].split("/")[0] for p in paths if p.startswith(inside)})
            os.mkdir(stash)
            for child in children:
                os.mkdir(os.path.join(stash, child))
                mount(os.path.join(ancestor, child).encode(), os.path.join(stash, child), BIND | REC)
            if libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", 0, b"mode=0711") != 0:
                raise OSError(ctypes.get_errno(), "sandbox: cannot cover " + ancestor)
            for child in children:
                os.mkdir(os.path.join(ancestor, child))
                mount(os.path.join(stash, child).encode(), os.path.join(ancestor, child), BIND | REC)
                libc.umount2(os.path.join(stash, child).encode(), DETACH)
                os.rmdir(os.path.join(stash, child))
            os.rmdir(stash)
"""


@dataclass(frozen=True)
class Isolation:
    """How model-written code runs here: `name` "namespaces" or "none", and in words why."""

    name: str
    detail: str
    command: tuple[str, ...] = ()  # the prefix before the interpreter (unshare and its flags)
    python: str = sys.executable  # the interpreter the sandboxed uid can run
    mode: str = "none"  # "uid" (root switches to a fresh uid), "userns", or "none"

    @property
    def isolated(self) -> bool:
        return self.name != "none"

    def describe(self) -> str:
        return f"{self.name} ({self.detail})"


def sandbox_uid() -> int:
    """A uid no process of this machine has: RLIMIT_NPROC then counts the program's processes only."""
    return 2_000_000_000 + int.from_bytes(os.urandom(3), "little")


def prepare_for_uid(work: Path, uid: int) -> None:
    """Give `work` to `uid`, and let it through the (private) directory that holds `work`."""
    os.chown(work, uid, uid)
    os.chmod(work.parent, 0o711)


@functools.cache
def isolation() -> Isolation:
    """The isolation this machine gives model-written code, probed once (about 0.1 s)."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare is None or sys.platform != "linux":
        return Isolation("none", "unshare (util-linux) not found; Linux namespaces need it")
    if os.geteuid() == 0:
        candidates = [("uid", (unshare, *_NAMESPACES), python) for python in _interpreters()]
    else:
        candidates = [("userns", (unshare, "--user", "--map-root-user", *_NAMESPACES), sys.executable)]
    reasons = []
    for mode, command, python in candidates:
        reason = _self_check(command, python, mode)
        if reason is None:
            flags = " ".join(command[1:])
            who = "a fresh unprivileged uid" if mode == "uid" else "a user namespace without capabilities"
            detail = f"unshare {flags}; read-only filesystem but the work directory; RLIMIT_NPROC as {who}"
            return Isolation("namespaces", detail, command, python, mode)
        reasons.append(reason)
    return Isolation("none", f"namespaces are not available here: {'; '.join(reasons)}")


def _interpreters() -> list[str]:
    """This interpreter, then system ones (if covering a private home fails, a system one may still run)."""
    found = [sys.executable]
    for name in ("python3", f"python3.{sys.version_info.minor}"):
        path = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if path and path not in found:
            found.append(path)
    return found


_CHECK = r"""
import ctypes, socket, sys
def refused(action):
    try:
        action()
    except OSError:
        return True
    return False
outside, work = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
checks = {
    "write outside": refused(lambda: open(outside, "w").write("x")),
    "loopback": refused(lambda: socket.create_connection(("127.0.0.1", 9), 0.5)),
    "remount": libc.mount(None, b"/", None, 32, None) != 0,  # MS_REMOUNT read-write
}
open(work + "/ok", "w").write("ok")
failed = [name for name, ok in checks.items() if not ok]
print(", ".join(failed))
sys.exit(1 if failed else 0)
"""


def _self_check(command: tuple[str, ...], python: str, mode: str) -> str | None:
    """None if the sandbox holds for `python` under `command`; else why not, in a few words."""
    with tempfile.TemporaryDirectory(prefix="mtad-sandbox-check-") as base:
        work, outside = Path(base) / "work", Path(base) / "outside.txt"
        work.mkdir()
        uid = sandbox_uid()
        if mode == "uid":
            prepare_for_uid(work, uid)
        runner = SETUP + "\nimport sys\n_sandbox(sys.argv[1], sys.argv[2], int(sys.argv[3]))\n"
        runner += "sys.argv = sys.argv[4:]\nexec(compile(sys.argv[0], 'check', 'exec'))\n"
        argv = [
            *command,
            python,
            "-I",
            "-c",
            runner,
            str(work),
            mode,
            str(uid),
            _CHECK,
            str(outside),
            str(work),
        ]
        try:
            done = subprocess.run(
                argv, cwd=work, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{Path(python).name}: {type(error).__name__}"
        if done.returncode == 0 and (work / "ok").is_file() and not outside.exists():
            return None
        lines = (done.stdout.strip() or done.stderr.strip() or f"exit {done.returncode}").splitlines()
        return f"{Path(python).name}: {lines[-1][:120]}"
