"""Energy meters behind one small interface: `start()`, then `stop()` -> joules, or None with a reason.

- `RaplMeter` reads the Linux powercap counters `/sys/class/powercap/intel-rapl:*/energy_uj`
  (micro-joules, also used for AMD CPUs), handling wraparound at `max_energy_range_uj`.
- `NvmlMeter` reads NVIDIA's cumulative energy counter (`nvmlDeviceGetTotalEnergyConsumption`,
  millijoules since driver load, Volta and newer) for the one GPU the models run on.
- `NullMeter` says "n/a (no energy meter on this machine)" and never guesses.

The official MTAD code polls nvidia-smi power once a second and sums every GPU on the host; both
counters here integrate in hardware, so short generations are measured without sampling error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

NO_METER = "n/a (no energy meter on this machine)"
DEFAULT_RAPL_ROOT = Path("/sys/class/powercap")

# Top-level zones are `intel-rapl:<n>`; sub-zones (`intel-rapl:<n>:<m>`) are parts of a package.
_TOP_ZONE = re.compile(r"^intel-rapl:\d+$")
_SUB_ZONE = re.compile(r"^intel-rapl:\d+:\d+$")


@dataclass(frozen=True)
class EnergyReading:
    """Joules consumed between start() and stop(), or None with the reason there is no number."""

    joules: float | None
    reason: str | None = None


class EnergyMeter(Protocol):
    description: str

    def start(self) -> None: ...

    def stop(self) -> EnergyReading: ...


class NullMeter:
    """The meter for machines without counters; `reasons` records why each real meter was skipped."""

    description = NO_METER

    def __init__(self, reasons: tuple[str, ...] = ()) -> None:
        self.reasons = reasons

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(None, NO_METER)


def counter_delta(start: int, end: int, max_range: int) -> int:
    """Increase of a counter that counts 0..max_range and then wraps to 0.

    Assumes at most one wrap between the two reads; `RaplMeter.poll()` keeps that true for long runs.
    """
    if end >= start:
        return end - start
    return (max_range - start) + 1 + end


@dataclass(frozen=True)
class _RaplZone:
    path: Path
    name: str
    max_range: int

    def read(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


def _rapl_zones(root: Path) -> list[_RaplZone]:
    """Package zones plus their DRAM sub-zones: package energy excludes DRAM, and `psys` (the whole
    platform, on some laptops) would double count the packages, so it is left out."""
    zones = []
    for path in sorted(root.glob("intel-rapl:*")):
        name_file = path / "name"
        name = name_file.read_text().strip() if name_file.exists() else path.name
        if _TOP_ZONE.match(path.name) and name.startswith("package"):
            pass
        elif _SUB_ZONE.match(path.name) and name == "dram":
            pass
        else:
            continue
        max_range = int((path / "max_energy_range_uj").read_text().strip())
        zones.append(_RaplZone(path, name, max_range))
    return zones


def rapl_unavailable_reason(root: Path = DEFAULT_RAPL_ROOT) -> str | None:
    """None when RAPL counters under `root` exist and are readable, else why not."""
    if not root.is_dir():
        return f"RAPL: {root} does not exist (no powercap driver, e.g. inside a VM)"
    try:
        zones = _rapl_zones(root)
    except (OSError, ValueError) as exc:
        return f"RAPL: cannot read zone metadata under {root}: {exc}"
    if not zones:
        return f"RAPL: no package zones under {root}"
    try:
        for zone in zones:
            zone.read()
    except PermissionError:
        # Since Linux 5.10 (CVE-2020-8694) energy_uj is readable by root only.
        return f"RAPL: {zones[0].path / 'energy_uj'} is not readable (root only on recent kernels)"
    except (OSError, ValueError) as exc:
        return f"RAPL: cannot read energy_uj: {exc}"
    return None


class RaplMeter:
    """CPU package (+ DRAM) energy from RAPL; `root` is injectable so tests can use a fake sysfs tree."""

    def __init__(self, root: Path = DEFAULT_RAPL_ROOT) -> None:
        self.root = root
        self.zones = _rapl_zones(root)
        if not self.zones:
            raise ValueError(f"no RAPL package zones under {root}")
        self.description = "RAPL " + " + ".join(f"{z.name} ({z.path.name})" for z in self.zones)
        self._last: list[int] = []
        self._micro_joules = 0

    def start(self) -> None:
        self._last = [zone.read() for zone in self.zones]
        self._micro_joules = 0

    def poll(self) -> None:
        """Fold the counters' increase in so far; call it more often than the wrap period (minutes)."""
        current = [zone.read() for zone in self.zones]
        for zone, before, now in zip(self.zones, self._last, current, strict=True):
            self._micro_joules += counter_delta(before, now, zone.max_range)
        self._last = current

    def stop(self) -> EnergyReading:
        if not self._last:
            return EnergyReading(None, "RAPL meter stopped without start()")
        self.poll()
        return EnergyReading(self._micro_joules / 1e6)


def _import_pynvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py; optional (`pip install mtad[gpu]`)
    except ImportError:
        return None
    return pynvml


class NvmlMeter:
    """Energy of one NVIDIA GPU from its cumulative counter; `nvml` is injectable for tests."""

    def __init__(self, device_index: int = 0, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml if nvml is not None else _import_pynvml()
        if self._nvml is None:
            raise ValueError("nvidia-ml-py is not installed")
        self._nvml.nvmlInit()
        self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
        # Probe once: pre-Volta GPUs raise NVMLError_NotSupported here, and we want that at detection.
        self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        name = self._nvml.nvmlDeviceGetName(self._handle)
        name = name.decode() if isinstance(name, bytes) else name
        self.description = f"NVML total energy counter, GPU {device_index} ({name})"
        self._start_mj: int | None = None

    def start(self) -> None:
        self._start_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def stop(self) -> EnergyReading:
        if self._start_mj is None:
            return EnergyReading(None, "NVML meter stopped without start()")
        end_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        # A 64-bit millijoule counter does not wrap in practice; a decrease means a driver reload.
        if end_mj < self._start_mj:
            return EnergyReading(None, "NVML energy counter went backwards (driver reloaded?)")
        return EnergyReading((end_mj - self._start_mj) / 1000.0)


def _cuda_index(device: str) -> int | None:
    """The GPU index of a torch-style device string ('cuda', 'cuda:1'), or None for other devices."""
    if device == "cuda":
        return 0
    match = re.fullmatch(r"cuda:(\d+)", device)
    return int(match.group(1)) if match else None


def detect_energy_meter(
    device: str = "cpu",
    *,
    rapl_root: Path = DEFAULT_RAPL_ROOT,
    nvml: ModuleType | None = None,
) -> EnergyMeter:
    """The best meter for where the models run: NVML for a CUDA device, RAPL for the CPU, else none.

    Never guesses: when a counter is missing or unreadable the NullMeter says so, with `reasons`.
    """
    reasons: list[str] = []
    gpu = _cuda_index(device)
    if gpu is not None:
        try:
            return NvmlMeter(gpu, nvml)
        except Exception as exc:  # any NVMLError: no library, no GPU, counter not supported
            reasons.append(f"NVML: {type(exc).__name__}: {exc}")
    else:
        reason = rapl_unavailable_reason(rapl_root)
        if reason is None:
            return RaplMeter(rapl_root)
        reasons.append(reason)
    return NullMeter(tuple(reasons))
