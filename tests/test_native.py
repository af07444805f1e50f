"""mtad's native CPU kernels (`mtad.runtime.native`): built for this machine, checked against a
float64 product over the same fp16-rounded weights, and a fallback to fbgemm's kernel that says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mtad.runtime import fast, native
from mtad.runtime.linear import Fp16Linear

KERNELS = native.kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason=f"no native kernels: {native.unavailable()}")


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ weight.half().double().T
    return (out if bias is None else out + bias.double()).float()


@needs_kernels
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 17, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_the_product_equals_a_float64_one_over_the_rounded_weights(rows, bias):
    generator = torch.Generator().manual_seed(rows)
    out_features, in_features = 2 * KERNELS.columns + 3 * KERNELS.lanes, 3 * KERNELS.lanes + 5  # a part tile
    weight = torch.randn(out_features, in_features, generator=generator)
    b = torch.randn(out_features, generator=generator) if bias else None
    x = torch.randn(rows, in_features, generator=generator)
    got = KERNELS.linear_fp16(x, KERNELS.pack_fp16(weight), b)
    torch.testing.assert_close(got, _reference(x, weight, b), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_leading_dimensions_and_non_contiguous_inputs_are_kept():
    weight = torch.randn(2 * KERNELS.columns, 2 * KERNELS.lanes)
    x = torch.randn(3, 2 * KERNELS.lanes, 4).transpose(1, 2)  # [3, 4, K], not contiguous
    got = KERNELS.linear_fp16(x, KERNELS.pack_fp16(weight), None)
    assert got.shape == (3, 4, 2 * KERNELS.columns)
    torch.testing.assert_close(got, _reference(x, weight, None), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_a_weight_that_is_not_packed_is_refused():
    for unpacked in (torch.randn(KERNELS.columns, 8), torch.randn(KERNELS.lanes + 1, 8).half()):
        with pytest.raises(RuntimeError, match="packed by mtad.runtime.native"):
            KERNELS.linear_fp16(torch.randn(1, 8), unpacked, None)


@needs_kernels
def test_a_bias_of_another_width_is_refused():
    packed = KERNELS.pack_fp16(torch.randn(KERNELS.lanes, 8))
    with pytest.raises(RuntimeError, match="bias has 3 values"):
        KERNELS.linear_fp16(torch.randn(1, 8), packed, torch.randn(3))


def _attention_reference(query, keys, values, mask, scaling):
    """float64 softmax attention, causal with the new tokens last when there is no mask."""
    group = query.shape[1] // keys.shape[1]
    keys, values = (t.double().repeat_interleave(group, dim=1) for t in (keys, values))
    scores = query.double() @ keys.transpose(-1, -2) * scaling
    new, cached = scores.shape[-2:]
    if mask is None:
        mask = torch.ones(new, cached, dtype=torch.bool).tril(cached - new)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    out = scores.softmax(-1) @ values  # [B, Hq, S, D]
    return out.transpose(1, 2).reshape(query.shape[0], new, -1).float()


@needs_kernels
@pytest.mark.parametrize("new", [1, 2, 5, 17])
@pytest.mark.parametrize("mask", ["causal", "boolean", "additive"])
def test_attention_equals_a_float64_softmax_attention(new, mask):
    generator = torch.Generator().manual_seed(new)
    batch, q_heads, kv_heads, head_dim, cached = 2, 6, 2, 2 * KERNELS.lanes, 9 + new
    query = torch.randn(batch, q_heads, new, head_dim, generator=generator)
    # keys of a longer cache cut short (a rolled-back cache): strided, not contiguous
    longer = torch.randn(2, batch, kv_heads, cached + 4, head_dim, generator=generator)
    keys, values = longer[:, :, :, :cached]
    given = None
    if mask != "causal":  # a random tree over the new tokens: each sees the cache, itself, some others
        seen = torch.rand(batch, 1, new, cached, generator=generator) < 0.5
        seen[..., : cached - new] = True
        seen[..., cached - new :] |= torch.eye(new, dtype=torch.bool)
        given = seen if mask == "boolean" else torch.zeros(seen.shape).masked_fill(~seen, float("-inf"))
    got = torch.ops.mtad_native.attention(query, keys, values, given, 0.125)
    want = _attention_reference(query, keys, values, given, 0.125)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_attention_gives_zeros_where_a_query_sees_no_key_and_refuses_a_mask_of_another_shape():
    query, keys = torch.randn(1, 2, 2, KERNELS.lanes), torch.randn(1, 1, 3, KERNELS.lanes)
    seen = torch.tensor([[True, False, True], [False, False, False]])[None, None]
    got = torch.ops.mtad_native.attention(query, keys, keys, seen, 1.0)
    assert torch.equal(got[0, 1], torch.zeros(2 * KERNELS.lanes))
    torch.testing.assert_close(got[:, :1], _attention_reference(query, keys, keys, seen, 1.0)[:, :1])
    with pytest.raises(RuntimeError, match="mask must be"):
        torch.ops.mtad_native.attention(query, keys, keys, seen[..., :2], 1.0)


@needs_kernels
def test_the_gated_mlp_equals_silu_gate_times_up_in_float64_across_the_exponent_range():
    generator = torch.Generator().manual_seed(0)
    inner, width = 3 * KERNELS.columns, KERNELS.lanes
    gate_up = torch.randn(2 * inner, width, generator=generator)
    down = torch.randn(width, inner, generator=generator)
    x = torch.randn(5, width, generator=generator)
    x[1] *= 40  # gates far into both tails of the SiLU (e^x under- and overflows float there)
    x[2] *= 1e-3
    got = torch.ops.mtad_native.swiglu_fp16_weight(x, KERNELS.pack_fp16(gate_up), KERNELS.pack_fp16(down))
    gated = x.double() @ gate_up.half().double().T
    hidden = torch.nn.functional.silu(gated[:, :inner]) * gated[:, inner:]
    want = (hidden @ down.half().double().T).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))


@needs_kernels
def test_fp16_layers_use_the_native_kernel_where_their_shape_fits_else_fbgemm():
    fits = nn.Linear(2 * KERNELS.lanes, 3 * KERNELS.columns)
    odd = nn.Linear(2 * KERNELS.lanes, KERNELS.lanes + 1)  # out_features off the SIMD width
    assert Fp16Linear(fits).kernel == "native" and Fp16Linear(odd).kernel == "fbgemm"
    with native.disabled():
        fallback = Fp16Linear(fits)
    assert fallback.kernel == "fbgemm" and native.kernels() is KERNELS
    x = torch.randn(4, 2 * KERNELS.lanes)
    with torch.inference_mode():
        torch.testing.assert_close(Fp16Linear(fits)(x), fallback(x), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_the_fast_path_says_which_kernel_its_layers_run():
    width = 2 * KERNELS.columns
    model = nn.Sequential(nn.Linear(2 * KERNELS.lanes, width), nn.Linear(width, 7))  # 7 outputs: off the tile
    path = fast.apply(model, fast.FastPath("on", "fp16", "float32", "test"))
    assert path.kernel.startswith(f"native {KERNELS.isa} on 1 of 2 layers")
    with native.disabled():
        path = fast.apply(nn.Sequential(nn.Linear(64, 64)), fast.FastPath("on", "fp16", "float32", "test"))
    assert path.kernel == "fbgemm (native: disabled while this model was packed)"


def _in_a_fresh_process(code: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=os.environ | env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


WHERE = "import json; from mtad.runtime import native; where = str(native.build_directory());"
REPORT = WHERE + (
    "k = native.kernels(); print(json.dumps({'isa': k and k.isa, 'why': native.unavailable(), 'dir': where}))"
)


def test_mtad_native_0_turns_them_off_and_says_so():
    report = _in_a_fresh_process(REPORT, MTAD_NATIVE="0")
    assert report["isa"] is None and report["why"] == "MTAD_NATIVE=0 is set"


@needs_kernels
def test_a_corrupt_build_and_a_stale_lock_in_the_cache_are_built_again_not_trusted(tmp_path):
    where = _in_a_fresh_process(WHERE + "print(json.dumps({'dir': where}))", MTAD_CACHE=str(tmp_path))["dir"]
    os.makedirs(where)
    with open(os.path.join(where, "mtad_native.so"), "wb") as handle:
        handle.write(b"not a shared library")  # a build cut short ...
    lock = os.path.join(where, "lock")
    open(lock, "w").close()
    os.utime(lock, (0, 0))  # ... whose lock it left behind: waited on, a later build would hang
    report = _in_a_fresh_process(REPORT, MTAD_CACHE=str(tmp_path))
    assert report["isa"] == KERNELS.isa and report["why"] is None and report["dir"] == where


def _on_block_grid(out_features: int, in_features: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Weights as a GGUF Q4_1 or Q8_0 model dequantizes to: d q (+ m) per block of 32 along K."""
    generator = torch.Generator().manual_seed(seed)
    shape = (out_features, in_features // 32, 32)
    scale = (torch.rand(*shape[:2], 1, generator=generator) * 0.02 + 1e-3).half().float()
    if kind == "q4_1":
        levels = torch.randint(0, 16, shape, generator=generator).float()
        levels[..., 3], levels[..., 17] = 0, 15  # the quantizer's extremes, anywhere in the block
        offset = (torch.randn(*shape[:2], 1, generator=generator) * 0.05).half().float()
        return (levels * scale + offset).reshape(out_features, in_features)
    levels = torch.randint(-127, 128, shape, generator=generator).float()
    levels[..., 5] = -127
    return (levels * scale).reshape(out_features, in_features)


@needs_kernels
@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 13])
def test_weights_on_a_gguf_block_grid_are_stored_as_blocks_and_multiply_exactly(kind, rows):
    weight = _on_block_grid(2 * KERNELS.columns, 96, kind, seed=rows)
    found = KERNELS.exact_blocks(weight)
    assert found is not None and found[0] == kind
    expected_bytes = {"q4_1": 20, "q8_0": 34}[kind] * weight.numel() // 32
    assert found[1].numel() == expected_bytes  # 5 or 8.5 bits a weight
    bias = torch.randn(weight.shape[0])
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(rows))
    want = (x.double() @ weight.double().T + bias.double()).float()  # the float32 weights, unrounded
    torch.testing.assert_close(KERNELS.linear_fp16(x, found[1], bias), want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_weights_off_the_grid_by_one_ulp_or_of_a_partial_tile_stay_fp16():
    weight = _on_block_grid(2 * KERNELS.columns, 64, "q4_1")
    nudged = weight.clone()
    nudged[7, 40] = torch.nextafter(nudged[7, 40], torch.tensor(1.0))
    assert KERNELS.exact_blocks(nudged) is None  # neither Q4_1 nor Q8_0 holds it to the bit
    assert KERNELS.exact_blocks(torch.randn(KERNELS.columns, 64)) is None
    assert KERNELS.exact_blocks(weight[: KERNELS.columns + KERNELS.lanes]) is None  # not whole tiles
    with native.fp16_only():
        assert KERNELS.exact_blocks(weight) is None
    layer = Fp16Linear(_linear_with(weight))
    assert layer.blocks == "q4_1" and layer.weight_error == 0.0 and layer.nbytes == weight.numel() * 20 // 32


def _linear_with(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear
