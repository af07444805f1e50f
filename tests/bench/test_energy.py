import types
from pathlib import Path

import pytest

from mtad.bench import energy
from mtad.bench.energy import NO_METER, NullMeter, NvmlMeter, RaplMeter, counter_delta, detect_energy_meter

MAX = 262_143_328_850  # a real package max_energy_range_uj


def make_zone(root: Path, zone: str, name: str, energy_uj: int, max_range: int = MAX) -> Path:
    path = root / zone
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


def test_counter_delta_handles_one_wrap():
    assert counter_delta(100, 350, MAX) == 250
    # MAX-100 -> MAX is 100 uJ, MAX -> 0 is one more step, 0 -> 50 is 50
    assert counter_delta(MAX - 100, 50, MAX) == 151


def test_rapl_sums_packages_and_dram_with_wraparound(tmp_path):
    pkg0 = make_zone(tmp_path, "intel-rapl:0", "package-0", MAX - 1_000_000)
    pkg1 = make_zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    dram = make_zone(tmp_path, "intel-rapl:0:2", "dram", 10, max_range=65_532_610_987)
    core = make_zone(tmp_path, "intel-rapl:0:0", "core", 0)  # inside package-0: must not be added
    psys = make_zone(tmp_path, "intel-rapl:2", "psys", 0)  # whole platform: would double count
    meter = RaplMeter(tmp_path)
    assert [z.name for z in meter.zones] == ["package-0", "dram", "package-1"]
    meter.start()
    set_energy(pkg0, 2_000_000 - 1)  # wrapped: 1 J before the wrap, 2 J after
    set_energy(pkg1, 7_000_000)  # +2 J
    set_energy(dram, 500_010)  # +0.5 J
    set_energy(core, 99_000_000)
    set_energy(psys, 99_000_000)
    reading = meter.stop()
    assert reading.reason is None
    assert reading.joules == pytest.approx(5.5)


def test_rapl_poll_counts_more_than_one_wrap(tmp_path):
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0, max_range=999)
    meter = RaplMeter(tmp_path)
    meter.start()
    for value in (600, 200, 800):  # +600, wrap +600, +600
        set_energy(pkg, value)
        meter.poll()
    set_energy(pkg, 100)  # wrap again: +300
    assert meter.stop().joules == pytest.approx(2100 / 1e6)


def test_detect_reports_missing_and_unreadable_rapl(tmp_path, monkeypatch):
    meter = detect_energy_meter("cpu", rapl_root=tmp_path / "absent")
    assert isinstance(meter, NullMeter)
    assert meter.description == "n/a (no energy meter on this machine)"
    assert "does not exist" in meter.reasons[0]
    assert meter.stop() == energy.EnergyReading(None, NO_METER)

    make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    assert isinstance(detect_energy_meter("cpu", rapl_root=tmp_path), RaplMeter)

    def denied(self):
        raise PermissionError("root only")

    monkeypatch.setattr(energy._RaplZone, "read", denied)
    meter = detect_energy_meter("cpu", rapl_root=tmp_path)
    assert isinstance(meter, NullMeter) and "not readable" in meter.reasons[0]


def test_this_machine_is_detected_honestly():
    """No guessing: a RAPL meter only where the counters really exist and can be read."""
    meter = detect_energy_meter("cpu")
    if energy.rapl_unavailable_reason() is None:
        assert isinstance(meter, RaplMeter)
    else:
        assert meter.description == NO_METER and meter.reasons


def fake_nvml(readings: list[int], supported: bool = True) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    values = iter(readings)

    class NVMLError_NotSupported(Exception):  # noqa: N801 - pynvml's naming
        pass

    def total_energy(handle):
        if not supported:
            raise NVMLError_NotSupported("Not Supported")
        return next(values)

    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: f"handle{index}"
    module.nvmlDeviceGetName = lambda handle: b"Fake GPU"
    module.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return module


def test_nvml_meter_reads_millijoules_of_the_chosen_gpu():
    meter = detect_energy_meter("cuda:1", nvml=fake_nvml([0, 10_000, 13_500]))
    assert isinstance(meter, NvmlMeter)
    assert meter.description == "NVML total energy counter, GPU 1 (Fake GPU)"
    meter.start()
    assert meter.stop().joules == pytest.approx(3.5)


def test_nvml_unsupported_or_missing_falls_back_to_none(monkeypatch):
    meter = detect_energy_meter("cuda", nvml=fake_nvml([], supported=False))
    assert isinstance(meter, NullMeter) and "NotSupported" in meter.reasons[0]
    monkeypatch.setattr(energy, "_import_pynvml", lambda: None)
    meter = detect_energy_meter("cuda")
    assert isinstance(meter, NullMeter) and "not installed" in meter.reasons[0]
