"""The load-and-fault script runs (briefly, on the tiny pair), so it cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def _script_module():
    spec = importlib.util.spec_from_file_location("serve_faults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rss_band_takes_the_samples_after_the_warm_up_only():
    rss_band = _script_module().rss_band
    # (seconds into the load, RSS MB, requests finished): growth during warm-up does not count
    curve = [(0, 500.0, 0), (30, 900.0, 10), (60, 1000.0, 20), (90, 1080.0, 30), (120, 1040.0, 40)]
    band = rss_band(curve, warmup_s=60, band=0.10)
    assert band["samples_after_warmup"] == 3
    assert (band["first_mb"], band["min_mb"], band["max_mb"], band["end_mb"]) == (1000, 1000, 1080, 1040)
    assert band["spread"] == pytest.approx(0.08) and band["within"]
    assert band["slope_mb_per_min"] == pytest.approx(40.0)  # least squares over 60, 90, 120 s
    assert not rss_band(curve, warmup_s=30, band=0.10)["within"]  # 900 -> 1080: 20 %
    nothing = rss_band(curve, warmup_s=200, band=0.10)
    assert not nothing["within"] and "no RSS sample" in nothing["reason"]


def test_a_short_soak_on_the_tiny_pair_writes_the_curve_the_plot_and_the_verdict(tmp_path):
    results = tmp_path / "soak"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--clients",
            "3",
            "--deadline",
            "60",
            "--soak-minutes",
            "0.1",
            "--sample-interval",
            "0.5",
            "--warmup-minutes",
            "0.03",
            "--rss-band",
            "0.5",
            "--results",
            str(results),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["server_errors_5xx"] == 0 and summary["hangs"] == 0 and summary["no_answer"] == 0
    assert summary["rss_after_warmup"]["within"] and summary["probe_same_text"]
    assert summary["requests"] > 0 and summary["rss_ready_mb"] > 0
    rows = (results / "rss.csv").read_text().splitlines()
    assert rows[0] == "seconds,rss_mb,requests_finished"
    seconds = [float(row.split(",")[0]) for row in rows[1:]]
    assert len(seconds) >= 8 and seconds == sorted(seconds) and seconds[-1] >= 6.0  # 6 s at 0.5 s
    assert int(rows[-1].split(",")[2]) == summary["requests"] - summary["hangs"]
    assert summary["rss_after_warmup"]["samples_after_warmup"] == sum(1 for s in seconds if s >= 0.03 * 60)
    assert (results / "rss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (results / "report.md").read_text()
    assert "| minute | RSS MB | requests finished |" in report and "within the 50% band" in report
    assert "RSS after warm-up within 50%" in done.stdout
