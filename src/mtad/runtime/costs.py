"""What a forward should cost on this machine (its roofline) beside what it does cost.

A forward over k new tokens reads every linear weight once (whatever k) and does 2 k FLOPs per
weight, so it takes at least max(weight bytes / memory bandwidth, FLOPs / GEMM peak). Both rates
are measured here, on this machine, now: bandwidth by one large tensor copy (bytes read plus bytes
written, over its time), the peak by one large float32 matrix product. Attention and the KV cache
are left out of the bound (a few MB and MFLOPs at chat lengths), so the ratio measured / roofline
says how far the kernels and the ~1,000 small ops of a forward are from the hardware.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from mtad.runtime.linear import PackedLinear


@dataclass(frozen=True)
class Machine:
    bandwidth_gb_s: float  # copy: (read + written bytes) / time
    gemm_gflops: float  # float32 matrix product, 2 n^3 / time


def measure_machine(copy_mb: int = 256, gemm_size: int = 2048, repeats: int = 5) -> Machine:
    """The two rates of the roofline, median of `repeats` after one warm-up (~1 s)."""
    source = torch.ones(copy_mb * 2**20 // 4)
    target = torch.empty_like(source)
    copies = _median_seconds(lambda: target.copy_(source), repeats)
    a, b = torch.randn(gemm_size, gemm_size), torch.randn(gemm_size, gemm_size)
    products = _median_seconds(lambda: torch.mm(a, b), repeats)
    return Machine(2 * source.numel() * 4 / copies / 1e9, 2 * gemm_size**3 / products / 1e9)


def linear_bytes_and_params(model: nn.Module) -> tuple[int, int]:
    """Bytes a forward reads for the linear layers' weights (as stored: packed or dense) and their
    number of weights (each takes 2 FLOPs per token)."""
    total_bytes = params = 0
    for module in model.modules():
        if isinstance(module, PackedLinear):
            total_bytes += module.nbytes
            params += module.in_features * module.out_features
        elif isinstance(module, nn.Linear):
            total_bytes += module.weight.numel() * module.weight.element_size()
            params += module.weight.numel()
    return total_bytes, params


def roofline_seconds(model: nn.Module, tokens: int, machine: Machine) -> float:
    weight_bytes, params = linear_bytes_and_params(model)
    return max(
        weight_bytes / (machine.bandwidth_gb_s * 1e9), 2 * tokens * params / (machine.gemm_gflops * 1e9)
    )


def _median_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
