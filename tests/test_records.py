"""The fast path's self-test is measured once per machine and kept (`mtad.runtime.records`): a
later process reads it; a stale record (another CPU, torch or thread count) or a corrupt one is
measured again and rewritten, never trusted."""

from __future__ import annotations

import json

import pytest
import torch

from mtad.runtime import fast, records

MEASURED = fast.SelfTest(0.5, "float32", 64)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fresh cache, and a self-test that counts its measurements instead of timing kernels."""
    monkeypatch.setenv("MTAD_CACHE", str(tmp_path))
    measured = []
    monkeypatch.setattr(fast, "_measure_fp16", lambda repeats: measured.append(repeats) or MEASURED)
    fast._self_test.cache_clear()
    yield measured
    fast._self_test.cache_clear()


def fresh_process_self_test() -> fast.SelfTest:
    fast._self_test.cache_clear()  # what a new process starts with
    return fast.fp16_self_test()


def test_a_self_test_is_measured_once_per_machine_and_kept(machine):
    assert fresh_process_self_test() == MEASURED and machine == [7]
    kept = fresh_process_self_test()
    assert machine == [7]  # the second process read the record
    assert (kept.ratio, kept.dense_dtype, kept.dense_from_rows) == (0.5, "float32", 64) and kept.kept_from
    [path] = records.records_dir().glob("fp16-self-test-*.json")
    record = json.loads(path.read_text())
    assert record["key"]["torch"] == torch.__version__ and record["values"]["dense_from_rows"] == 64
    assert "kept from" in fast.plan("on", None, "cpu").reason


@pytest.mark.parametrize(
    "damage", ["stale threads", "stale version", "corrupt", "other fields", "other types", "out of range"]
)
def test_a_stale_or_corrupt_record_is_measured_again_and_rewritten(machine, damage):
    fresh_process_self_test()
    [path] = records.records_dir().glob("fp16-self-test-*.json")
    record = json.loads(path.read_text())
    if damage == "stale threads":
        record["key"]["threads"] += 1
    elif damage == "stale version":
        record["key"]["test"] = fast.SELF_TEST_VERSION - 1
    elif damage == "other fields":
        record["values"] = {"speed": "fast"}
    elif damage == "other types":
        record["values"]["ratio"] = "fast"
    elif damage == "out of range":
        record["values"]["dense_from_rows"] = 3
    path.write_text("{not json" if damage == "corrupt" else json.dumps(record))
    assert fresh_process_self_test() == MEASURED and machine == [7, 7]
    assert fresh_process_self_test().kept_from and machine == [7, 7]  # rewritten, then kept


def test_each_thread_count_keeps_its_own_record(machine, monkeypatch):
    fresh_process_self_test()
    with monkeypatch.context() as other:
        other.setattr(torch, "get_num_threads", lambda: 97)
        fresh_process_self_test()
    assert machine == [7, 7] and len(list(records.records_dir().glob("fp16-self-test-*.json"))) == 2
    assert fresh_process_self_test().kept_from and machine == [7, 7]  # the first one's is still there


def test_a_cache_that_cannot_be_written_only_means_measuring_again(machine, tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("MTAD_CACHE", str(blocked))  # its "machine" folder cannot be made
    assert records.remember("x", {"k": 1}, {"v": 2}) is None
    assert fresh_process_self_test() == MEASURED and fresh_process_self_test() == MEASURED
    assert machine == [7, 7]
