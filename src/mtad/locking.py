"""One writer per output directory: `mtad bench` and `mtad distill` hold a lock while they write.

The lock is an advisory `flock` on a file inside the directory. The kernel drops it when its
holder exits, however it exits (`kill -9` included), so a stale lock file never blocks a resume:
only a live process holds the lock. POSIX only; elsewhere there is no lock (one run per directory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mtad.errors import MtadError


class OutputDirError(MtadError):
    """The output directory cannot be used: not a directory, another run's, or busy."""


@contextlib.contextmanager
def exclusive_directory(out: Path, lock_name: str, command: str) -> Iterator[Path]:
    """Create `out` if needed and hold `out/lock_name` for the block; a second holder is refused
    with an `OutputDirError` naming `command` (e.g. "mtad bench") and the directory."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a directory")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield out
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / lock_name).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputDirError(
                f"another {command} is writing to {out}; allowed: one run per directory (wait for it, "
                "or pass another --out)"
            ) from None
        yield out
