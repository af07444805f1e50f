"""dtype "auto": bfloat16 only where this machine runs it natively, decided at run time (issue 11)."""

from __future__ import annotations

import json

import pytest
import torch

import mtad
from mtad.cli import main
from mtad.errors import ModelLoadError
from mtad.runtime import precision


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given flags and self-test ratio; forget the cached choice."""

    def pretend(flags: set[str], ratio: float) -> list[int]:
        probes: list[int] = []
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
        monkeypatch.setattr(precision, "bf16_speed_ratio", lambda: probes.append(1) or ratio)
        precision._cpu_choice.cache_clear()
        return probes

    yield pretend
    precision._cpu_choice.cache_clear()


def test_a_cpu_without_native_bf16_gets_float32_without_a_self_test(cpu):
    probes = cpu({"avx", "avx2", "fma"}, ratio=0.5)
    choice = precision.auto_dtype("cpu")
    assert choice.dtype == torch.float32 and "no native bfloat16" in choice.reason
    assert probes == []


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_native_bf16_confirmed_by_the_self_test_gets_bfloat16(cpu, flag):
    probes = cpu({"avx512f", flag}, ratio=0.4)
    choice = precision.auto_dtype("cpu")
    assert choice.dtype == torch.bfloat16 and flag in choice.reason and "0.40" in choice.reason
    precision.auto_dtype("cpu")
    assert probes == [1]  # measured once per process


def test_native_bf16_that_the_self_test_finds_slower_gets_float32(cpu):
    cpu({"avx512_bf16"}, ratio=1.6)
    choice = precision.auto_dtype(None)
    assert choice.dtype == torch.float32 and "1.60" in choice.reason


def test_unknown_flags_fall_back_to_the_self_test(cpu):
    cpu(set(), ratio=0.7)
    assert precision.auto_dtype("cpu").dtype == torch.bfloat16


def test_the_self_test_measures_a_ratio():
    ratio = precision.bf16_speed_ratio(repeats=2)
    assert ratio > 0  # its value depends on the machine; never asserted


@pytest.mark.parametrize(("given", "expected"), [("float32", torch.float32), ("float16", torch.float16),
                                                 (torch.bfloat16, torch.bfloat16)])  # fmt: skip
def test_an_explicit_dtype_wins(cpu, given, expected):
    cpu({"avx512_bf16"}, ratio=0.1)
    assert precision.resolve_dtype(given, "cpu") == expected


def test_an_unknown_dtype_is_one_line():
    with pytest.raises(
        ModelLoadError, match="unknown dtype 'int8'; allowed: auto, float32, float16, bfloat16"
    ):
        precision.resolve_dtype("int8", "cpu")


@pytest.mark.parametrize("auto", [torch.float32, torch.bfloat16])
def test_the_draft_follows_the_target_unless_told(pair_dirs, monkeypatch, auto):
    """(With the fast path off: where it packs, it decides the dtype; `test_fast_path` covers that.)"""
    monkeypatch.setattr(precision, "auto_dtype", lambda device=None: precision.DtypeChoice(auto, "test"))
    target, draft = mtad.load_pair(*pair_dirs, fast="off")
    assert target.model.dtype == draft.model.dtype == auto
    target, draft = mtad.load_pair(*pair_dirs, dtype="float32", draft_dtype="bfloat16", fast="off")
    assert target.model.dtype == torch.float32 and draft.model.dtype == torch.bfloat16


def test_generate_json_says_which_dtype_ran(pair_dirs, capsys):
    target, draft = pair_dirs
    argv = [
        "generate",
        "--target",
        target,
        "--draft",
        draft,
        "--dtype",
        "float32",
        "--draft-dtype",
        "bfloat16",
    ]
    assert main([*argv, "--method", "sd", "--max-new-tokens", "4", "--json", "w3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dtype"] == "float32" and record["draft_dtype"] == "bfloat16"


def test_a_bad_dtype_flag_exits_2_before_loading(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--dtype", "int8", "--target", "/nonexistent", "w3"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err
