"""The load-and-fault script runs (briefly, on the tiny pair), so it cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_faults.py"


def test_the_fault_script_finds_no_5xx_and_no_hang_on_the_tiny_pair():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--duration", "4", "--clients", "3", "--deadline", "60"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    total = next(line for line in done.stdout.splitlines() if line.startswith("total"))
    sent, ok, client_errors, server_errors, hangs = map(int, total.split()[1:])
    assert sent > 0 and ok > 0 and client_errors > 0
    assert server_errors == 0 and hangs == 0
    assert "seeded probe before and after the load: same text" in done.stdout
