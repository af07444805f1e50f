"""The prepared GPU check runs end to end on tiny sizes on the CPU, so it cannot rot before a GPU comes.

Only correctness is asserted (and that every report part is written); never a timing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    """The script as a module (dataclasses need it registered in sys.modules while it loads)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget-s", "240", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_quick_mode_passes_every_correctness_check(quick_report):
    data, _ = quick_report
    checks = {c["check"]: c for c in data["checks"]}
    assert all(c["status"] in ("pass", "skipped") for c in checks.values()), checks
    names = " ".join(checks)
    for dtype in ("float32", "bfloat16", "float16"):
        assert f"sd T=0 == greedy, {dtype}, scripted errors" in names
    for method in ("sd", "specinfer"):
        assert checks[f"chi-square of the first two tokens, {method}"]["status"] == "pass"
    for method in ("sd", "mtad", "mmtad", "specinfer"):
        assert checks[f"caches == fresh forward after rollbacks, {method}"]["status"] == "pass"
    assert any(name.startswith("device_map") and c["status"] == "pass" for name, c in checks.items())
    assert checks["draft on cpu, target on cuda"]["status"] == "skipped"  # no CUDA here: said, not hidden


def test_scripted_errors_reach_every_accepted_length(quick_report):
    data, _ = quick_report
    check = next(c for c in data["checks"] if c["check"] == "sd T=0 == greedy, float32, scripted errors")
    assert set(range(5)) <= set(check["accepted_lengths"])  # gamma 4: 0..4 accepted, deterministically


def test_timing_sections_report_every_method_with_scripted_acceptance(quick_report):
    data, markdown = quick_report
    rows = {(r["method"], r["draft"]): r for r in data["method_timings"]}
    assert set(rows) == {("ar", "-")} | {
        (m, k) for m in ("sd", "mtad", "mmtad") for k in ("accept-all", "accept-none")
    }
    for method in ("sd", "mtad", "mmtad"):
        assert rows[(method, "accept-all")]["acceptance_rate"] == 1.0  # the scripted draft really scripts
    assert {(t["rows"], t["tokens"]) for t in data["forward_timings"]} >= {(1, 1), (1, 5), (1, 17), (4, 1)}
    assert data["energy"]["available"] or data["energy"]["reasons"]  # a missing meter says why
    assert all(s["status"] in ("done", "skipped") for s in data["sections"]), data["sections"]
    for heading in ("## Correctness", "## Methods at temperature 0", "## One forward after the prefix"):
        assert heading in markdown


def test_chi_square_p_value_matches_scipy():
    gpu_check = load_script()
    probs = torch.tensor([[0.3, 0.2], [0.4, 0.1]], dtype=torch.float64)
    counts = torch.tensor([[70.0, 35.0], [80.0, 15.0]])
    p_value, df = gpu_check.chi_square_p_value(counts, probs)
    expected = chisquare(counts.flatten().numpy(), (probs.flatten() * 200).numpy())
    assert df == 3
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_requested_without_cuda_writes_why_and_stops(tmp_path):
    gpu_check = load_script()
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "no CUDA device" in data["sections"][0]["note"]
    assert "no CUDA device" in (tmp_path / "gpu_check.md").read_text()
