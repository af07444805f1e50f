"""The fast path (`mtad.runtime`): packed linear layers compute what the dense ones do, within the
rounding of their format, and every decoding invariant holds on a packed model (greedy equality,
caches against a fresh forward, the lossless methods' distribution)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import mtad
from conftest import tiny_llama
from mtad.runtime import fast
from mtad.runtime.linear import FORMATS, Int4Linear, pack_linears
from test_distribution import RUNS, VOCAB, WARP, chi_square_p_value, exact_first_two
from test_engine import _assert_cache_matches_fresh_forward as assert_cache_matches_fresh_forward

NO_EOS = {"eos_token_id": []}
# Relative error of a product against float32: fp16 weights ~2^-11, int8 weights ~1/254 of a row's
# range with bfloat16 activations, int4 weights (random, off-grid: ~1/30 of a group's range).
TOLERANCE = {"fp16": 2e-3, "int8": 3e-2, "int4": 1.5e-1}


def packed_copy(model: nn.Module, format: str = "fp16") -> nn.Module:
    clone = copy.deepcopy(model)
    fast.apply(clone, fast.FastPath("on", format, "float32", "test"))
    return clone


def _linear(out_features: int, in_features: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("format", sorted(FORMATS))
@pytest.mark.parametrize("rows", [(1, 64), (3, 64), (2, 5, 64)])
def test_packed_linear_computes_the_dense_product(format, rows):
    dense = _linear(96, 64, seed=0)
    packed = FORMATS[format](dense)
    x = torch.randn(*rows)
    with torch.inference_mode():
        want, got = dense(x), packed(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    error = float((got - want).abs().max() / want.abs().max())
    assert error < TOLERANCE[format], error
    assert packed.weight_error > 0 if format != "fp16" else packed.weight_error >= 0


def test_fp16_switches_to_its_dense_copy_from_the_crossover_row_count():
    """Few rows: fbgemm's fp16 kernel; from `dense_from_rows` rows: a dense product over the same
    fp16-rounded weights in the dense dtype (prefills and wide batches)."""
    dense = _linear(96, 64, seed=1)
    plain = FORMATS["fp16"](dense)
    switching = FORMATS["fp16"](dense, dense_from_rows=4, dense_dtype=torch.bfloat16)
    few, many = torch.randn(1, 3, 64), torch.randn(2, 2, 64)  # 3 rows, then 4 rows
    with torch.inference_mode():
        torch.testing.assert_close(switching(few), plain(few), atol=0, rtol=0)
        rounded = dense.weight.detach().half().bfloat16()
        expected = nn.functional.linear(many.bfloat16(), rounded, dense.bias.detach().bfloat16()).float()
        torch.testing.assert_close(switching(many), expected, atol=0, rtol=0)


def test_apply_counts_the_dense_copies_memory(target):
    model = copy.deepcopy(target)
    path = fast.FastPath("on", "fp16", "float32", "test", dense_from_rows=16, dense_dtype="bfloat16")
    result = fast.apply(model, path)
    weights = sum(m.weight.numel() for m in target.modules() if type(m) is nn.Linear)
    assert result.weight_bytes == 2 * weights + 2 * weights  # fp16 packed + bf16 copy
    assert result.dense_from_rows == 16 and result.layers > 0


def test_the_self_test_names_a_crossover_it_tried():
    test = fast.fp16_self_test()
    assert test.dense_from_rows in (None, *fast.CROSSOVER_ROWS) and test.ratio > 0
    path = fast.plan("on", None, "cpu")
    assert (path.dense_from_rows, path.dense_dtype) == (
        test.dense_from_rows, test.dense_dtype if test.dense_from_rows else None
    )  # fmt: skip


def test_int4_is_exact_for_weights_on_a_four_bit_grid():
    """A GGUF Q4_1 block is scale * level + low with levels 0..15: stored exactly (scales and lows
    that bfloat16 holds exactly), so the product differs from float32 only by bfloat16 activations."""
    torch.manual_seed(0)
    levels = torch.randint(0, 16, (48, 64)).float()
    levels[:, ::32] = 0  # every group reaches both ends of the grid, as a quantizer's blocks do
    levels[:, 1::32] = 15
    scale = 2.0 ** torch.randint(-8, -4, (48, 2)).float().repeat_interleave(32, dim=1)
    low = -8 * scale
    layer = nn.Linear(64, 48, bias=False)
    layer.weight = nn.Parameter(levels * scale + low)
    packed = Int4Linear(layer)
    assert packed.weight_error == 0.0
    x = torch.randn(2, 64).bfloat16().float()  # activations bf16 holds: the product is exact too
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), layer(x), atol=1e-2, rtol=1e-2)


def test_pack_linears_replaces_every_linear_and_keeps_the_model_callable(target):
    model = copy.deepcopy(target)
    count = sum(type(m) is nn.Linear for m in model.modules())
    packed = pack_linears(model, "fp16")
    assert len(packed) == count and not any(type(m) is nn.Linear for m in model.modules())
    assert mtad.models.output_width(model) == target.config.vocab_size


def test_packed_model_logits_match_the_dense_model(target):
    model = packed_copy(target)
    ids = torch.tensor([[0, 5, 7, 3, 9, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, target(ids).logits, atol=2e-3, rtol=2e-3)


def test_greedy_and_sd_at_temperature_zero_equal_greedy_on_a_packed_model(target, draft):
    packed_target, packed_draft = packed_copy(target), packed_copy(draft)
    prompt = [0, 5, 7, 3]
    greedy = mtad.generate(packed_target, None, prompt, method="greedy", max_new_tokens=30, **NO_EOS)
    for method, gamma in (("sd", 3), ("mtad", 2), ("specinfer", 3)):
        result = mtad.generate(
            packed_target, packed_draft, prompt, method=method, gamma=gamma, temperature=0,
            max_new_tokens=30, **NO_EOS,
        )  # fmt: skip
        assert result.tokens == greedy.tokens, method
        assert result.stats.drafted_tokens > 0


@pytest.mark.parametrize("method", ["sd", "mmtad"])
def test_caches_equal_a_fresh_forward_on_a_packed_model(target, draft, method):
    packed_target = packed_copy(target)
    generation = mtad.stream(
        packed_target, packed_copy(draft), [0, 5, 7, 3], method=method, gamma=3, max_new_tokens=30,
        seed=3, **NO_EOS,
    )  # fmt: skip
    for _ in generation:
        assert_cache_matches_fresh_forward(generation.target, generation.sequence)


def test_sd_on_a_packed_model_samples_the_packed_targets_distribution():
    """Lossless means: exactly the distribution of the model that runs, here the packed one."""
    target = packed_copy(tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0))
    draft = packed_copy(tiny_llama(seed=11, vocab=VOCAB, sharpness=3.0, layers=1))
    counts = torch.zeros(VOCAB, VOCAB)
    for seed in range(RUNS):
        result = mtad.generate(
            target, draft, [0, 3, 5], method="sd", gamma=2, max_new_tokens=3, seed=seed, **NO_EOS, **WARP
        )
        counts[result.tokens[0], result.tokens[1]] += 1
    assert chi_square_p_value(counts, exact_first_two(target)) > 1e-3


def test_plan_decides_by_device_and_request():
    assert fast.plan("off", None, "cpu").weights == "dense"
    assert fast.plan("auto", None, "cuda").weights == "dense"
    assert fast.plan("auto", None, "cpu", device_map=True).weights == "dense"
    assert fast.plan("on", None, "cpu").weights == "fp16"
    assert fast.plan("auto", "int4", "cpu").dtype == "bfloat16"
    assert fast.plan("auto", None, "cpu", dtype_asked=True).weights == "dense"
    assert fast.plan("auto", None, "cpu").weights in ("dense", "fp16")  # the machine decides


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("fast", None, "cpu"), "unknown fast mode 'fast'; allowed: auto, on, off"),
        (("auto", "int3", "cpu"), "unknown quantize format 'int3'; allowed: none, int8, int4"),
        (("on", None, "cuda"), "fast on packs weights for CPU kernels; device cuda is not a CPU"),
        (("auto", "int8", "cuda"), "quantize int8 runs on CPUs only, not on cuda; allowed: none there"),
    ],
)
def test_bad_fast_settings_are_one_line_errors(arguments, message):
    with pytest.raises(fast.FastPathError) as caught:
        fast.plan(*arguments)
    assert str(caught.value) == message and isinstance(caught.value, mtad.MtadError)


def test_fast_on_with_a_device_map_is_refused():
    with pytest.raises(fast.FastPathError, match="device map"):
        fast.plan("on", None, "cpu", device_map=True)


@pytest.mark.parametrize(
    ("settings", "weights", "dtype"),
    [
        ({"fast": "on"}, "fp16", torch.float32),
        ({"fast": "off"}, "dense", torch.float32),
        ({"fast": "off", "quantize": "int4", "dtype": "auto"}, "int4", torch.bfloat16),
        ({"fast": "off", "quantize": "int8", "dtype": "auto"}, "int8", torch.bfloat16),
        ({"fast": "on", "dtype": "bfloat16"}, "fp16", torch.bfloat16),
    ],
)
def test_load_pair_packs_both_models_and_says_so(pair_dirs, settings, weights, dtype):
    settings = {"dtype": "float32"} | settings
    target, draft = mtad.load_pair(*pair_dirs, **settings)
    for loaded in (target, draft):
        assert loaded.fast_path.weights == weights and loaded.model.dtype == dtype
        assert (loaded.fast_path.layers > 0) == (weights != "dense")
    result = mtad.generate(target.model, draft.model, [0, 5, 7], method="sd", max_new_tokens=8, seed=0)
    assert len(result.tokens) == 8


def _cli(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtad", *words], capture_output=True, text=True, timeout=300)


def test_cli_records_the_fast_path_and_refuses_bad_values(pair_dirs):
    target, draft = pair_dirs
    run = _cli("generate", "--target", target, "--draft", draft, "--fast", "on", "--json",
               "--max-new-tokens", "4", "--seed", "0", "w5 w7")  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["fast_path"]["weights"] == "fp16" and record["draft_fast_path"]["layers"] > 0
    refused = _cli("generate", "--target", target, "--quantize", "int8", "--device", "cuda", "w5")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "mtad generate: error: quantize int8 runs on CPUs only, not on cuda; allowed: none there"
    ]


def test_roofline_prices_bytes_as_stored_and_flops_at_each_layers_dtype():
    from mtad.runtime.costs import Machine, linear_bytes_and_params, roofline_seconds

    machine = Machine(bandwidth_gb_s=1.0, gemm_gflops={"float32": 1.0, "bfloat16": 4.0})
    dense = nn.Sequential(nn.Linear(64, 32, bias=False)).to(torch.bfloat16)
    assert linear_bytes_and_params(dense) == (64 * 32 * 2, 64 * 32)
    assert roofline_seconds(dense, 1, machine) == pytest.approx(64 * 32 * 2 / 1e9)  # bandwidth-bound
    assert roofline_seconds(dense, 1000, machine) == pytest.approx(2 * 1000 * 64 * 32 / 4e9)  # bf16 peak
    packed = nn.Sequential(FORMATS["fp16"](nn.Linear(64, 32), dense_from_rows=16))
    assert roofline_seconds(packed, 8, machine) == pytest.approx(max(64 * 32 * 2, 2 * 8 * 64 * 32) / 1e9)
    assert roofline_seconds(packed, 1000, machine) == pytest.approx(2 * 1000 * 64 * 32 / 4e9)
