"""Which dtype to decode in: `dtype="auto"` picks the fastest one this machine runs natively.

On CPUs with native bfloat16 matrix units (AVX-512 BF16 or AMX), a bf16 target forward is ~1.45x
faster than float32 and verifying 5 tokens costs ~1.07x of one; without them, bf16 is emulated
and slower than float32. So the choice is made at run time, per machine, never hard-coded:

- CUDA: bfloat16 where the GPU supports it (`torch.cuda.is_bf16_supported()`), else float32.
- CPU: bfloat16 when the CPU advertises AVX-512 BF16 or AMX-BF16 *and* a short timed self-test
  (a few ms of decode-shaped matrix products, bf16 against float32, interleaved, median) confirms
  bf16 is not slower; else float32. The answer is remembered for the process.

An explicit dtype always wins. bfloat16 on a GPU that lacks it is refused (`ModelLoadError`).
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mtad.errors import ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: CPU feature flags (Linux /proc/cpuinfo names) that mean bf16 matrix products run natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: bf16 is chosen when its self-test time is at most this fraction of float32's.
BF16_MAX_RATIO = 1.0


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype `auto` resolved to on a device, and why (shown in reports)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """ "bfloat16", "float32", ...: a dtype as users type it and reports show it."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """The torch dtype to load in: an explicit one as given (checked), None or "auto" the best
    for `device` (None: the CPU)."""
    if isinstance(dtype, torch.dtype):
        choice = dtype
    elif dtype is None or dtype == "auto":
        return auto_dtype(device).dtype
    elif dtype in DTYPES:
        choice = DTYPES[dtype]
    else:
        raise ModelLoadError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(DTYPES)}")
    torch_device = torch.device(device or "cpu")
    if choice == torch.bfloat16 and torch_device.type == "cuda" and not _cuda_bf16(torch_device):
        raise ModelLoadError(
            f"dtype bfloat16 is not supported on {torch.cuda.get_device_name(torch_device)}; "
            "allowed: auto, float32, float16"
        )
    return choice


def auto_dtype(device: str | torch.device | None = None) -> DtypeChoice:
    """The fastest native dtype on `device` (see the module docstring); cached per device."""
    torch_device = torch.device(device or "cpu")
    if torch_device.type == "cuda":
        if _cuda_bf16(torch_device):
            return DtypeChoice(torch.bfloat16, "the GPU supports bfloat16")
        return DtypeChoice(torch.float32, "the GPU lacks bfloat16")
    if torch_device.type != "cpu":
        return DtypeChoice(torch.float32, f"no dtype probe for {torch_device.type}; float32 is safe")
    return _cpu_choice()


@functools.cache
def _cpu_choice() -> DtypeChoice:
    flags = cpu_flags()
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if flags and not native:
        return DtypeChoice(torch.float32, "the CPU has no native bfloat16 (no avx512_bf16, no amx_bf16)")
    ratio = bf16_speed_ratio()
    where = ", ".join(native) if native else "CPU flags unknown"
    if ratio <= BF16_MAX_RATIO:
        return DtypeChoice(torch.bfloat16, f"{where}; self-test bf16/fp32 time {ratio:.2f}")
    return DtypeChoice(torch.float32, f"{where}, but self-test bf16/fp32 time {ratio:.2f} > {BF16_MAX_RATIO}")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_speed_ratio(rows: int = 4, width: int = 576, out: int = 1536, repeats: int = 15) -> float:
    """Median time of a decode-shaped matrix product ([rows, width] @ [width, out], SmolLM2-135M's
    MLP) in bfloat16 over float32, interleaved so both see the same machine state (a few ms)."""
    generator = torch.Generator().manual_seed(0)
    x32 = torch.randn(rows, width, generator=generator)
    w32 = torch.randn(width, out, generator=generator)
    x16, w16 = x32.bfloat16(), w32.bfloat16()
    times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    for _ in range(repeats + 2):  # the first two rounds warm up kernels and are dropped below
        for x, w in ((x32, w32), (x16, w16)):
            start = time.perf_counter()
            for _ in range(8):
                torch.mm(x, w)
            times[x.dtype].append(time.perf_counter() - start)
    fp32, bf16 = (statistics.median(times[d][2:]) for d in (torch.float32, torch.bfloat16))
    return bf16 / fp32 if fp32 > 0 else 1.0


def synchronise(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads what the device did (a no-op on CPUs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()
