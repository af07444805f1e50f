"""Fused decoder-layer parts (`mtad.runtime.fused`): a fused model computes what the packed model
it came from does (to float32 rounding), through every path a decode takes (an empty cache, a
cached step, a 4D tree mask, a batch), and a module that only looks fusable keeps its own."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from conftest import VOCAB, tiny_llama
from mtad.runtime import fast, native
from mtad.runtime.fused import FusedAttention, FusedGatedMLP, FusedRMSNorm, LeanLayer, fuse_layers
from mtad.runtime.linear import pack_linears

KERNELS = native.kernels()
pytestmark = pytest.mark.skipif(KERNELS is None, reason=f"no native kernels: {native.unavailable()}")


def fusable_llama(seed: int) -> LlamaForCausalLM:
    """A tiny Llama whose projections are whole tiles of the native kernel (its q, k and v join
    into one packed weight only then), with grouped-query attention."""
    torch.manual_seed(seed)
    width = max(KERNELS.columns, 64) * 2 if KERNELS else 128
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=width, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def packed_pair(seed: int = 0, **options) -> tuple[nn.Module, nn.Module]:
    """The same tiny model packed to fp16 twice: once as it is, once with its layers fused."""
    model = fusable_llama(seed)
    packed = copy.deepcopy(model)
    pack_linears(packed, "fp16", **options)
    fused = copy.deepcopy(packed)
    fuse_layers(fused)
    return packed, fused


def _logits(model, ids, cache=None, **inputs):
    with torch.inference_mode():
        return model(input_ids=ids, cache=cache, use_cache=cache is not None, **inputs).logits


def test_every_attention_mlp_and_norm_of_a_llama_fuses_and_the_fast_path_says_so():
    model = fusable_llama(0)
    path = fast.apply(model, fast.FastPath("on", "fp16", "float32", "test"))
    assert path.fused == "2 attentions, 2 gated MLPs, 5 RMSNorms, 2 lean decoder layers"
    assert all(isinstance(layer.forward, LeanLayer) for layer in model.model.layers)
    kinds = [type(m) for m in model.modules()]
    assert [kinds.count(kind) for kind in (FusedAttention, FusedGatedMLP, FusedRMSNorm)] == [2, 2, 5]
    assert all(m.native_attention for m in model.modules() if isinstance(m, FusedAttention))


def test_a_fused_model_gives_the_packed_models_logits_step_by_step_through_its_cache():
    packed, fused = packed_pair()
    ids = torch.tensor([[0, 5, 7, 3, 9, 2, 11]])
    caches = DynamicCache(), DynamicCache()
    for chunk in (ids[:, :4], ids[:, 4:5], ids[:, 5:]):  # a prefill, one token, two tokens
        want, got = (_logits(m, chunk, c) for m, c in zip((packed, fused), caches, strict=True))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for layer_want, layer_got in zip(caches[0].layers, caches[1].layers, strict=True):
        torch.testing.assert_close(layer_got.keys, layer_want.keys, rtol=1e-4, atol=1e-4)


def test_a_tree_mask_and_a_batch_of_two_give_the_packed_models_logits():
    packed, fused = packed_pair(seed=1)
    ids = torch.tensor([[0, 5, 7, 3], [0, 9, 2, 11]])
    position_ids = torch.tensor([[0, 1, 2, 2], [0, 1, 2, 2]])  # two siblings at depth 2
    mask = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    mask[3, 2] = False  # the second sibling does not see the first
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~mask, torch.finfo(torch.float32).min)
    want = _logits(packed, ids, attention_mask=additive, position_ids=position_ids)
    got = _logits(fused, ids, attention_mask=additive, position_ids=position_ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_lean_layers_still_give_every_layers_hidden_states():
    packed, fused = packed_pair(seed=7)
    ids = torch.tensor([[0, 5, 7, 3]])
    with torch.inference_mode():
        want, got = (m(input_ids=ids, output_hidden_states=True).hidden_states for m in (packed, fused))
    assert len(got) == len(want) == 3
    for layer_got, layer_want in zip(got, want, strict=True):
        torch.testing.assert_close(layer_got, layer_want, rtol=1e-4, atol=1e-4)


def test_a_decoder_layer_that_computes_something_else_keeps_its_own_forward():
    class HalfResidualLayer(LlamaDecoderLayer):  # scales the residual: not what the lean forward does
        def forward(self, hidden_states, **kwargs):
            return 0.5 * hidden_states + super().forward(hidden_states, **kwargs)

    model = fusable_llama(8)
    model.model.layers[0].__class__ = HalfResidualLayer
    pack_linears(model, "fp16")
    packed = copy.deepcopy(model)
    counts = fuse_layers(model)
    assert counts["lean decoder layers"] == 1
    assert not isinstance(model.model.layers[0].forward, LeanLayer)
    ids = torch.tensor([[0, 5, 7, 3, 9]])
    torch.testing.assert_close(_logits(model, ids), _logits(packed, ids), rtol=1e-4, atol=1e-4)


def test_from_the_dense_copy_row_count_on_the_original_modules_run_exactly():
    packed, fused = packed_pair(seed=2, dense_from_rows=4, dense_dtype=torch.bfloat16)
    ids = torch.tensor([[0, 5, 7, 3, 9]])  # 5 rows: the dense copies
    torch.testing.assert_close(_logits(fused, ids), _logits(packed, ids), rtol=0, atol=0)


def test_projections_that_are_not_whole_tiles_keep_their_attention_unfused():
    model = tiny_llama(5)  # k and v project to 16 columns: less than a tile
    pack_linears(model, "fp16")
    counts = fuse_layers(model)
    assert counts["attentions"] == (2 if KERNELS.whole_tiles(16) and KERNELS.whole_tiles(32) else 0)
    assert counts["RMSNorms"] == 5


def test_a_module_that_only_looks_fusable_keeps_its_own():
    class OneOffsetRMSNorm(nn.Module):  # Gemma's norm: scales by (1 + weight)
        def __init__(self, width: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(width))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return x * scale * (1 + self.weight)

    model = fusable_llama(3)
    model.model.norm = OneOffsetRMSNorm(model.config.hidden_size)
    for layer in model.model.layers:
        layer.mlp.act_fn = nn.GELU()  # not the SiLU the fused MLP computes
    pack_linears(model, "fp16")
    counts = fuse_layers(model)
    assert counts == {"attentions": 2, "gated MLPs": 0, "RMSNorms": 4, "lean decoder layers": 0}
    assert isinstance(model.model.norm, OneOffsetRMSNorm)
    assert not any(isinstance(m, FusedGatedMLP) for m in model.modules())


def test_an_attention_function_the_native_one_does_not_compute_keeps_the_models_own():
    def capped(module, query, key, value, attention_mask, **kwargs):  # a soft cap of 1 on the queries
        return sdpa_attention_forward(module, torch.tanh(query), key, value, attention_mask, **kwargs)

    AttentionInterface.register("mtad_test_capped", capped)
    packed, fused = packed_pair(seed=6)
    for model in (packed, fused):
        model.set_attn_implementation("mtad_test_capped")
    refused = copy.deepcopy(packed)
    fuse_layers(refused)  # fused after the switch: the check sees the capped function
    attentions = [m for m in refused.modules() if isinstance(m, FusedAttention)]
    assert len(attentions) == 2 and not any(m.native_attention for m in attentions)
    ids = torch.tensor([[0, 5, 7, 3, 9]])
    torch.testing.assert_close(_logits(refused, ids), _logits(packed, ids), rtol=1e-4, atol=1e-4)


def test_a_model_cast_after_fusing_runs_its_own_modules():
    packed, fused = packed_pair(seed=4)
    packed, fused = packed.to(torch.bfloat16), fused.to(torch.bfloat16)
    ids = torch.tensor([[0, 5, 7]])
    torch.testing.assert_close(_logits(fused, ids), _logits(packed, ids), rtol=0, atol=0)


def test_a_model_dequantized_from_gguf_blocks_runs_on_its_exact_weights():
    model = fusable_llama(9)
    model.lm_head = nn.Linear(model.config.hidden_size, 2 * KERNELS.columns, bias=False)  # whole tiles
    with torch.no_grad():  # every projection onto the Q4_1 grid, the output head onto Q8_0's
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(_on_grid(module.weight, "q8_0" if module is model.lm_head else "q4_1"))
    dense = copy.deepcopy(model)
    path = fast.apply(model, fast.FastPath("on", "fp16", "float32", "test"))
    assert path.weight_error == 0.0
    assert "14 layers as exact Q4_1 blocks, 1 layer as exact Q8_0 blocks" in path.kernel
    assert path.fused.endswith("2 lean decoder layers")
    ids = torch.tensor([[0, 5, 7, 3, 9, 2, 11]])
    caches = DynamicCache(), DynamicCache()
    for chunk in (ids[:, :4], ids[:, 4:5], ids[:, 5:]):  # against the float32 model itself
        want, got = (_logits(m, chunk, c) for m, c in zip((dense, model), caches, strict=True))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _on_grid(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """`weight` rounded as a GGUF quantizer would, then dequantized (32 weights a block along K)."""
    blocks = weight.detach().float().reshape(weight.shape[0], -1, 32)
    if kind == "q8_0":
        scale = (blocks.abs().amax(-1, keepdim=True) / 127).half().float()
        return (torch.round(blocks / scale).clamp(-127, 127) * scale).reshape(weight.shape)
    low = blocks.amin(-1, keepdim=True).half().float()
    scale = ((blocks.amax(-1, keepdim=True) - low) / 15).half().float()
    levels = torch.round((blocks - low) / scale).clamp(0, 15)
    levels[..., 0], levels[..., 1] = 0, 15  # the quantizer's extremes
    return (levels * scale + low).reshape(weight.shape)


def test_lean_layers_append_to_the_cache_in_place_and_every_cache_edit_keeps_its_meaning():
    packed, fused = packed_pair(seed=10)
    ids = torch.tensor([[0, 5, 7, 3, 9, 2, 11, 4, 6, 8]])
    caches = DynamicCache(), DynamicCache()

    def step(chunk):
        want, got = (_logits(m, chunk, c) for m, c in zip((packed, fused), caches, strict=True))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    step(ids[:, :4])
    step(ids[:, 4:5])
    buffer = caches[1].layers[0].keys.data_ptr()
    step(ids[:, 5:7])
    assert caches[1].layers[0].keys.data_ptr() == buffer  # written after the cached keys, not copied
    for cache in caches:  # a rejected token, then a tree pruned to its path
        cache.crop(-1)
    step(ids[:, 6:8])
    keep = torch.tensor([0, 1, 2, 3, 4, 5, 7])
    for cache in caches:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(-2, keep), layer.values.index_select(-2, keep)
    step(ids[:, 8:])
    for layer_want, layer_got in zip(caches[0].layers, caches[1].layers, strict=True):
        torch.testing.assert_close(layer_got.keys, layer_want.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer_got.values, layer_want.values, rtol=1e-4, atol=1e-4)
