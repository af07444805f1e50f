"""What a target forward of k new tokens costs on this machine, beside its roofline, per weight format.

    python benchmarks/forward_costs.py                                  # default target: off, auto
    python benchmarks/forward_costs.py --variants off,auto,int8,int4 --json costs.json
    python benchmarks/forward_costs.py --target T --sizes 1,2,4,8,16,32

Each variant loads the target with its weight format (`off`: as dtype auto loads it; `auto`/`on`:
the fast path, `mtad.runtime.fast`; `int8`/`int4`: quantized). Costs are what gamma auto measures
(`mtad.decoding.pricing.forward_seconds`: k new tokens after a 128-token prefix, warp included), the
variants interleaved per repeat, medians. The roofline is max(weight bytes / copy bandwidth,
2 k x weights / GEMM peak of the dtype each layer computes in), the rates measured here first
(`mtad.runtime.costs`). The CPU model and flags are printed beside the table: speculation pays
only where k tokens cost little more than one, so these are the numbers that say whether it can.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from mtad.config import PAPER_WARP, SamplingConfig
from mtad.decoding import pricing
from mtad.models import load_model, output_width
from mtad.models.default_pair import default_target_path
from mtad.runtime import native
from mtad.runtime.costs import linear_bytes_and_params, measure_machine, roofline_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line  # noqa: E402

LOADS = {
    "off": {"fast": "off"},
    "auto": {"fast": "auto"},
    "on": {"fast": "on"},
    "fbgemm": {"fast": "on"},  # fp16 weights through fbgemm's kernel (the native one disabled)
    "fp16": {"fast": "on"},  # the native kernel with every layer fp16 (no exact GGUF blocks)
    "int8": {"fast": "off", "quantize": "int8"},
    "int4": {"fast": "off", "quantize": "int4"},
}


def _load(path, variant: str):
    if variant == "fbgemm":
        with native.disabled():
            return load_model(path, **LOADS[variant])
    if variant == "fp16":
        with native.fp16_only():
            return load_model(path, **LOADS[variant])
    return load_model(path, **LOADS[variant])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="default: the built-in pair's target")
    parser.add_argument("--variants", default="off,auto", help=f"comma list of {', '.join(LOADS)}")
    parser.add_argument("--sizes", default="1,2,3,4,5,8,9,16,17,32,33", help="new tokens per forward")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in LOADS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; allowed: {', '.join(LOADS)}")
    sizes = [int(k) for k in args.sizes.split(",")]
    machine = measure_machine()
    peaks = ", ".join(f"{name} {value:.0f}" for name, value in machine.gemm_gflops.items())
    rates = f"GEMM peak GFLOP/s {peaks}, {torch.get_num_threads()} threads"
    print(f"copy bandwidth {machine.bandwidth_gb_s:.1f} GB/s (read + write), {rates}")
    path = args.target or default_target_path()
    models = {name: _load(path, name) for name in variants}
    print(machine_line(models[variants[0]].model))
    for name, loaded in models.items():
        weight_bytes, params = linear_bytes_and_params(loaded.model)
        print(f"{name:5s}: {loaded.fast_path.weights} weights, {loaded.model.dtype}, linear weights "
              f"{weight_bytes / 1e6:.0f} MB ({params / 1e6:.0f} M); {loaded.fast_path.reason}")  # fmt: skip
    sampling = SamplingConfig(**PAPER_WARP)
    samples: dict[str, dict[int, list[float]]] = {name: {k: [] for k in sizes} for name in variants}
    for _ in range(args.repeats):
        for name, loaded in models.items():
            seconds = pricing.forward_seconds(
                loaded.model, output_width(loaded.model), sizes, sampling, repeats=1
            )
            for k, value in seconds.items():
                samples[name][k].append(value)
    table = []
    header = "k   " + "".join(
        f"| {name + ' ms':>10s} {'x k=1':>6s} {'roof ms':>8s} {'x roof':>6s} " for name in variants
    )
    print(header)
    for k in sizes:
        row: dict = {"tokens": k}
        line = f"{k:<4d}"
        for name, loaded in models.items():
            ms = statistics.median(samples[name][k]) * 1e3
            one = statistics.median(samples[name][sizes[0]]) * 1e3
            roof = roofline_seconds(loaded.model, k, machine) * 1e3
            row[name] = {"ms": ms, "vs_first": ms / one, "roofline_ms": roof, "vs_roofline": ms / roof}
            line += f"| {ms:10.1f} {ms / one:6.2f} {roof:8.1f} {ms / roof:6.2f} "
        table.append(row)
        print(line)
    if args.json:
        report = {
            "machine": machine_line(models[variants[0]].model),
            "bandwidth_gb_s": machine.bandwidth_gb_s,
            "gemm_gflops": machine.gemm_gflops,
            "threads": torch.get_num_threads(),
            "variants": {name: loaded.fast_path.as_dict() for name, loaded in models.items()},
            "table": table,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
