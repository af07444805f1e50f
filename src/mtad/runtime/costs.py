"""What a forward should cost on this machine (its roofline) beside what it does cost.

A forward over k new tokens reads every linear weight once (whatever k) and does 2 k FLOPs per
weight, so it takes at least max(weight bytes / memory bandwidth, FLOPs / GEMM peak). Both rates
are measured here, on this machine, now: bandwidth by one large tensor copy (bytes read plus bytes
written, over its time), the peaks by one large matrix product in float32 and in bfloat16 (each
layer's FLOPs are priced at the peak of the dtype it computes in). Attention and the KV cache
are left out of the bound (a few MB and MFLOPs at chat lengths), so the ratio measured / roofline
says how far the kernels and the ~1,000 small ops of a forward are from the hardware.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from mtad.runtime.linear import PackedLinear
from mtad.runtime.precision import dtype_name


@dataclass(frozen=True)
class Machine:
    bandwidth_gb_s: float  # copy: (read + written bytes) / time, best of the repeats
    gemm_gflops: dict[str, float]  # by dtype name (float32, bfloat16): 2 n^3 / time, best of the repeats

    def peak(self, dtype: torch.dtype) -> float:
        return self.gemm_gflops.get(dtype_name(dtype), self.gemm_gflops["float32"])


def measure_machine(copy_mb: int = 256, gemm_size: int = 2048, repeats: int = 5) -> Machine:
    """The rates of the roofline: the best of `repeats` after one warm-up (a ceiling is what the
    machine reaches, not its typical run). GEMM peaks in float32 and bfloat16 (~2 s)."""
    source = torch.ones(copy_mb * 2**20 // 4)
    target = torch.empty_like(source)
    copies = _best_seconds(lambda: target.copy_(source), repeats)
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(gemm_size, gemm_size).to(dtype), torch.randn(gemm_size, gemm_size).to(dtype)
        peaks[dtype_name(dtype)] = (
            2 * gemm_size**3 / _best_seconds(lambda a=a, b=b: torch.mm(a, b), repeats) / 1e9
        )
    return Machine(2 * source.numel() * 4 / copies / 1e9, peaks)


def linear_bytes_and_params(model: nn.Module) -> tuple[int, int]:
    """Bytes a forward reads for the linear layers' weights (as stored for few rows: packed or
    dense) and their number of weights (each takes 2 FLOPs per token)."""
    total_bytes = params = 0
    for module, weights, _ in _linears(model, rows=1):
        total_bytes += (
            module.nbytes if isinstance(module, PackedLinear) else weights * module.weight.element_size()
        )
        params += weights
    return total_bytes, params


def roofline_seconds(model: nn.Module, tokens: int, machine: Machine) -> float:
    """max(weight bytes / bandwidth, sum over layers of 2 k weights / the peak of the dtype the
    layer computes in at k rows)."""
    weight_bytes, _ = linear_bytes_and_params(model)
    compute = sum(
        2 * tokens * weights / (machine.peak(dtype) * 1e9) for _, weights, dtype in _linears(model, tokens)
    )
    return max(weight_bytes / (machine.bandwidth_gb_s * 1e9), compute)


def _linears(model: nn.Module, rows: int):
    """(module, weights, compute dtype at `rows` rows) for every linear layer, packed or dense."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            dense = getattr(module, "dense", None)
            switched = dense is not None and rows >= module.dense_from_rows
            yield (
                module,
                module.in_features * module.out_features,
                dense.dtype if switched else module.compute_dtype,
            )
        elif isinstance(module, nn.Linear):
            yield module, module.weight.numel(), module.weight.dtype


def _best_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)
