"""What the benchmark ran on, and how much memory generation took.

Peak memory is measured one of two ways, and the report says which:
- CUDA: `torch.cuda.max_memory_allocated` of the model device, reset before each generation, so
  each sample's number is the peak of tensors torch allocated during that generation alone;
- CPU: the process's peak resident set size (`resource.getrusage(...).ru_maxrss`), a high-water
  mark over the whole process lifetime that includes model loading and the scoring pass.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from importlib import metadata

import torch

from mtad.runtime.precision import cpu_model, dtype_name

CUDA_MEMORY_KIND = "torch.cuda.max_memory_allocated during each generation"
CPU_MEMORY_KIND = "peak RSS of the bench process (ru_maxrss; includes model loading and scoring)"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "n/a"


#: The CPU features that decide matmul speed and the dtype auto picks (reported beside every number).
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def relevant_flags() -> str:
    """The RELEVANT_FLAGS this CPU has, space-separated (or which it lacks, all of them)."""
    from mtad.runtime.precision import cpu_flags

    flags = cpu_flags()
    return " ".join(flag for flag in RELEVANT_FLAGS if flag in flags) or "none of " + " ".join(RELEVANT_FLAGS)


def describe_machine(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """CPU, threads, accelerator, software versions, device and dtype, as report-ready strings."""
    info = {
        "cpu": cpu_model(),
        "cpu_flags": relevant_flags(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "mtad": _version("mtad"),
        "device": str(device),
        "dtype": dtype_name(dtype),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


class PeakMemory:
    """`reset()` before a generation, `read_mb()` after it; `kind` says what the number means."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = CUDA_MEMORY_KIND if device.type == "cuda" else CPU_MEMORY_KIND

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return kilobytes / (2**20 if sys.platform == "darwin" else 2**10)
