"""Fused parts of Llama-style decoder layers on the fp16 fast path (mtad's native kernels).

Once the weights stream at the memory bandwidth, what a decode step spends beside its products is
operator calls: a Llama-style layer makes ~40 small ones (a norm alone is eight), each a few
microseconds of dispatch for a few hundred numbers of work. Three module shapes repeat in every
layer of the models we run and fuse cleanly:

- a gated MLP, `down(act(gate(x)) * up(x))` with SiLU: one native call (`FusedGatedMLP`), gate
  and up packed as one weight (the layers keep views into it, so no weight is stored twice);
- an RMSNorm in float32 (`weight * x / sqrt(mean(x^2) + eps)`): one native call (`FusedRMSNorm`);
- attention's q/k/v projections and rotary embedding (`FusedAttention`): one native call, then the
  model's own cache update, then softmax attention over the cache in one native call (torch's SDPA
  costs 35-100 us a layer at 1-5 new tokens, mostly dispatch and the mask; the native one reads a
  causal, boolean or additive tree mask as given). Where the module's attention function computes
  something else (a soft cap, a window), the check below finds it and the model's own runs.

A module is replaced only when it has that shape *and* the replacement gives its output on a
random input (to float32 rounding): a model whose MLP uses another activation, or whose norm adds
one to its weight (Gemma), keeps its own module. Model code is not forked: modules are swapped in
place, as `pack_linears` swaps linear layers. The swaps are undone by loading the model again.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from mtad.runtime.grow import append_along
from mtad.runtime.linear import Fp16Linear

#: How close a fused module's output must be to the module it replaces (relative, float32).
AGREEMENT = 1e-4


class FusedGatedMLP(nn.Module):
    """A SiLU-gated MLP over native fp16 layers, in one call for the rows a decode step has; from
    the layers' dense-copy row count on (prefills, wide batches) the original module runs."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        gate, up = mlp.gate_proj, mlp.up_proj
        self.gate_up = torch.cat([gate.packed, up.packed])
        gate.packed, up.packed = self.gate_up[: len(gate.packed)], self.gate_up[len(gate.packed) :]
        self.original = mlp
        self.in_features = gate.in_features
        self.dense_from_rows = gate.dense_from_rows if gate.dense is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        many_rows = self.dense_from_rows is not None and x.numel() >= self.dense_from_rows * self.in_features
        if many_rows or x.dtype != torch.float32:  # a model cast after packing runs its own module
            return self.original(x)
        down = self.original.down_proj.packed
        return torch.ops.mtad_native.swiglu_fp16_weight(x, self.gate_up, down)


class FusedAttention(nn.Module):
    """Llama-style attention with the q/k/v projections and the rotary embedding in one native
    call; the cache update and the attention itself are the model's own (its cache's `update`, its
    configured attention function), then the output projection. From the layers' dense-copy row
    count on, or for inputs the call does not take, the original module runs."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
        self.qkv = torch.cat([q.packed, k.packed, v.packed])
        ends = torch.tensor([len(q.packed), len(k.packed), len(v.packed)]).cumsum(0).tolist()
        q.packed, k.packed, v.packed = self.qkv[: ends[0]], self.qkv[ends[0] : ends[1]], self.qkv[ends[1] :]
        biases = [layer.bias for layer in (q, k, v)]
        self.qkv_bias = None if biases[0] is None else torch.cat([b.detach().float() for b in biases])
        self.original = attention
        self.in_features = q.in_features
        self.head_dim = attention.head_dim
        self.q_heads = q.out_features // self.head_dim
        self.kv_heads = k.out_features // self.head_dim
        self.dense_from_rows = q.dense_from_rows if q.dense is not None else None
        # The native attention computes plain softmax attention (no sliding window, soft cap or
        # sinks, which a model's own function would add): the agreement check tries it first and
        # turns it off where the module's output differs.
        self.native_attention = self.head_dim % q.native.lanes == 0

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        rows = hidden_states.numel() // self.in_features
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        if (
            (self.dense_from_rows is not None and rows >= self.dense_from_rows)
            or hidden_states.dim() != 3
            or hidden_states.dtype != torch.float32
            or cos is None
            or cos.shape[-1] != self.head_dim
        ):
            return self.original(hidden_states, position_embeddings, attention_mask, **kwargs)
        batch, length = hidden_states.shape[:2]
        cos, sin = cos.expand(batch, length, -1), sin.expand(batch, length, -1)
        query, key, value = torch.ops.mtad_native.qkv_rotary_fp16_weight(
            hidden_states, self.qkv, self.qkv_bias, cos, sin, self.q_heads, self.kv_heads
        )
        original = self.original
        cache = kwargs.pop("cache", None)  # the name the model passes it by; older releases' below
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        if cache is not None:
            key, value = cache.update(key, value, original.layer_idx, kwargs=kwargs)
        output, weights = self.attend(query, key, value, attention_mask, **kwargs)
        return original.o_proj(output), weights

    def attend(self, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention over the cache ([batch, new, heads x head_dim], weights or None): native where
        the check allowed it and the mask is one it reads, else the model's own function."""
        batch, _, length, _ = query.shape
        original = self.original
        if self.native_attention and _mask_fits(attention_mask, batch, length, key.shape[-2]):
            return torch.ops.mtad_native.attention(query, key, value, attention_mask, original.scaling), None
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(original.config._attn_implementation, None)
        if attend is None:
            attend = eager_attention_forward
        output, weights = attend(
            original, query, key, value, attention_mask, dropout=0.0, scaling=original.scaling, **kwargs
        )
        return output.reshape(batch, length, -1), weights


class FusedRMSNorm(nn.Module):
    """A float32 RMSNorm in one call (the replaced module's weight, shared)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.original = norm
        self.eps = float(norm.variance_epsilon)

    @property
    def weight(self) -> torch.Tensor:
        return self.original.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:  # a model cast after packing
            return self.original(x)
        return torch.ops.mtad_native.rms_norm(x, self.weight, self.eps)


class LeanLayer:
    """The forward of a Llama-style decoder layer whose attention, MLP and two norms all fused: the
    layer in four native calls and its cache's `update` (input norm with q/k/v and rotary; attention;
    output projection plus residual; norm, MLP plus residual), where its modules make a dozen
    module calls with their Python around them. It is set as the layer's own `forward`, so the layer
    stays the model's class (hooks that record each layer's output, as `output_hidden_states` does,
    still see it); inputs it does not take go to the class's forward."""

    def __init__(self, layer: nn.Module) -> None:
        self.original = layer.forward  # the class's, bound to the layer
        # What each call reads, held as plain attributes: through the modules it is a dozen
        # `nn.Module.__getattr__` lookups a layer, ~0.5 ms of a 7 ms step. Parameters are held,
        # not their data, so a model cast in place is seen (and then runs the class's forward).
        attention, mlp = layer.self_attn, layer.mlp
        self.attention = attention
        self.norm_weights = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.norm_eps = layer.input_layernorm.eps, layer.post_attention_layernorm.eps
        self.qkv, self.qkv_bias = attention.qkv, attention.qkv_bias
        self.heads = attention.q_heads, attention.kv_heads
        self.head_dim, self.in_features, self.dense_from_rows = (
            attention.head_dim, attention.in_features, attention.dense_from_rows
        )  # fmt: skip
        self.layer_idx = attention.original.layer_idx
        out = attention.original.o_proj
        self.out_packed, self.out_bias = out.packed, out.bias
        self.gate_up, self.down = mlp.gate_up, mlp.original.down_proj.packed

    def __call__(
        self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
        position_embeddings=None, **kwargs,
    ):  # fmt: skip
        cache = kwargs.pop("past_key_values", None) if cache is None else cache  # older releases' name
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        first, second = self.norm_weights
        if (
            (
                self.dense_from_rows is not None
                and hidden_states.numel() >= self.dense_from_rows * self.in_features
            )
            or hidden_states.dim() != 3
            or hidden_states.dtype != torch.float32
            or cos is None
            or cos.shape[-1] != self.head_dim
            or first.dtype != torch.float32
            or second.dtype != torch.float32
        ):
            return self.original(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                use_cache=use_cache, position_embeddings=position_embeddings, **kwargs,
            )  # fmt: skip
        ops = torch.ops.mtad_native
        batch, length = hidden_states.shape[:2]
        cos, sin = cos.expand(batch, length, -1), sin.expand(batch, length, -1)
        query, key, value = ops.norm_qkv_rotary_fp16_weight(
            hidden_states, first, self.norm_eps[0], self.qkv, self.qkv_bias, cos, sin, *self.heads
        )
        if cache is not None:
            key, value = append_in_place(cache, self.layer_idx, key, value, kwargs)
        attended, _ = self.attention.attend(query, key, value, attention_mask, **kwargs)
        hidden_states = ops.linear_residual_fp16_weight(
            attended, self.out_packed, self.out_bias, hidden_states
        )
        return ops.norm_swiglu_residual_fp16_weight(
            hidden_states, second, self.norm_eps[1], self.gate_up, self.down
        )


def append_in_place(cache, layer_idx: int, key: torch.Tensor, value: torch.Tensor, kwargs: dict):
    """`cache.update` for a plain `DynamicCache`, without its concatenation of every cached key
    and value (`mtad.runtime.grow`): 1 % of a step at 128 cached tokens, 8 % at 600."""
    if type(cache) is not DynamicCache or layer_idx >= len(cache.layers):
        return cache.update(key, value, layer_idx, kwargs=kwargs)
    layer = cache.layers[layer_idx]
    if type(layer) is not DynamicLayer or not layer.is_initialized or layer.keys.dim() != 4:
        return cache.update(key, value, layer_idx, kwargs=kwargs)
    buffers = getattr(layer, "mtad_buffers", (None, None))
    layer.keys, keys_buffer = append_along(layer.keys, buffers[0], key, 2)
    layer.values, values_buffer = append_along(layer.values, buffers[1], value, 2)
    layer.mtad_buffers = keys_buffer, values_buffer
    return layer.keys, layer.values


def fuse_layers(model: nn.Module) -> dict[str, int]:
    """Replace, in place, every attention, gated MLP and RMSNorm of `model` that fuses (see the
    module docstring; only layers packed for the native kernels do), then give every decoder layer
    whose parts all fused a `LeanLayer` forward; how many of each were."""
    counts = {"attentions": 0, "gated MLPs": 0, "RMSNorms": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            fused, kind = _fused(child)
            if fused is not None and _agrees(child, fused):
                setattr(parent, name, fused)
                counts[kind] += 1
    counts["lean decoder layers"] = sum(_lean(layer) for layer in list(model.modules()))
    return counts


def _lean(layer: nn.Module) -> bool:
    """Give `layer` a `LeanLayer` forward if its parts fused and the lean forward gives the class's
    outputs and cache on the agreement steps; whether it did."""
    parts = [
        getattr(layer, name, None)
        for name in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    ]
    kinds = (FusedAttention, FusedGatedMLP, FusedRMSNorm, FusedRMSNorm)
    if not all(isinstance(part, kind) for part, kind in zip(parts, kinds, strict=True)):
        return False
    if not (parts[0].native_attention and parts[0].original.o_proj.kernel == "native"):
        return False
    if isinstance(layer.forward, LeanLayer):
        return True
    lean = LeanLayer(layer)

    def step(forward):
        return lambda x, rotary, mask, cache: forward(
            x, attention_mask=mask, cache=cache, use_cache=True, position_embeddings=rotary
        )

    attention = parts[0]
    if not _steps_agree(step(lean.original), step(lean), attention.in_features, attention.head_dim,
                        attention.original.layer_idx):  # fmt: skip
        return False
    layer.forward = lean
    return True


def _fused(module: nn.Module) -> tuple[nn.Module | None, str]:
    """The fused replacement for `module` if it has a shape that fuses (not yet checked)."""
    attention = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if all(isinstance(p, Fp16Linear) and p.kernel == "native" for p in attention) and all(
        hasattr(module, name) for name in ("head_dim", "layer_idx", "scaling", "config")
    ):
        q, k, v, _ = attention
        same = (
            q.dense_from_rows == k.dense_from_rows == v.dense_from_rows and q.blocks == k.blocks == v.blocks
        )
        has_bias = {layer.bias is None for layer in (q, k, v)}
        joins = q.native.whole_tiles(q.out_features) and q.native.whole_tiles(k.out_features)
        if same and joins and len(has_bias) == 1 and q.out_features % module.head_dim == 0:
            return FusedAttention(module), "attentions"
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if all(isinstance(p, Fp16Linear) and p.kernel == "native" and p.bias is None for p in projections):
        gate, up, down = projections
        same_rows = gate.packed.shape == up.packed.shape and gate.dense_from_rows == up.dense_from_rows
        same_rows = same_rows and gate.blocks == up.blocks  # one packed format: they join as one weight
        joins = gate.native.whole_tiles(gate.out_features)
        if same_rows and joins and down.in_features == gate.out_features:  # the activation: the check tells
            # Building it points gate's and up's weights at views of the joint copy: same values,
            # so the module keeps computing what it did if the check below rejects the fusion.
            return FusedGatedMLP(module), "gated MLPs"
    weight = getattr(module, "weight", None)
    if (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(getattr(module, "variance_epsilon", None), float)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
        and weight.dtype == torch.float32
    ):
        return FusedRMSNorm(module), "RMSNorms"
    return None, ""


def _agrees(module: nn.Module, fused: nn.Module) -> bool:
    if isinstance(fused, FusedAttention):
        return _attention_agrees(module, fused)
    width = fused.in_features if isinstance(fused, FusedGatedMLP) else len(fused.weight)
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = module(x), fused(x)
    return _close(got, want)


def _attention_agrees(module: nn.Module, fused: FusedAttention) -> bool:
    """Whether the fused module gives the module's outputs and cache, with the native attention if
    it does, else with the model's own attention function."""
    if fused.native_attention and _attention_steps_agree(module, fused):
        return True
    fused.native_attention = False
    return _attention_steps_agree(module, fused)


def _attention_steps_agree(module: nn.Module, fused: FusedAttention) -> bool:
    def attend(attention):
        return lambda x, rotary, mask, cache: attention(x, rotary, mask, cache=cache)[0]

    return _steps_agree(attend(module), attend(fused), fused.in_features, fused.head_dim, module.layer_idx)


def _steps_agree(want_call, got_call, width: int, head_dim: int, layer_idx: int) -> bool:
    """Both calls (x, rotary, mask, cache) -> output run a 3-token step into an empty cache, a
    1-token step after it, then two 2-token steps whose tokens see the cache and themselves but not
    each other (a tree's siblings), the mask additive and then boolean: outputs and cached keys and
    values must agree (this also proves the cache call matches the model's)."""
    generator = torch.Generator().manual_seed(0)
    caches = {"want": DynamicCache(), "got": DynamicCache()}
    siblings = torch.eye(2, dtype=torch.bool)
    steps = [(3, None), (1, None)]
    for cached, kind in ((4, "additive"), (6, "boolean")):
        seen = torch.cat([torch.ones(2, cached, dtype=torch.bool), siblings], dim=1)[None, None]
        mask = seen if kind == "boolean" else torch.zeros(seen.shape).masked_fill(~seen, float("-inf"))
        steps.append((2, mask))
    try:
        with torch.inference_mode():
            for length, mask in steps:
                x = torch.randn(1, length, width, generator=generator)
                angles = torch.rand(1, length, head_dim, generator=generator) * 6.3
                rotary = (angles.cos(), angles.sin())
                want = want_call(x, rotary, mask, caches["want"])
                got = got_call(x, rotary, mask, caches["got"])
                if not _close(got, want):
                    return False
            layers = [cache.layers[layer_idx] for cache in caches.values()]
            stored = [(layer.keys, layer.values) for layer in layers]
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError):
        return False  # a model whose attention calls its cache otherwise: it keeps its own module
    return all(_close(got, want) for got, want in zip(stored[1], stored[0], strict=True))


def _mask_fits(mask: torch.Tensor | None, batch: int, length: int, cached: int) -> bool:
    """Whether the native attention reads this mask: none (causal), or [batch or 1, 1, new, cached]
    boolean or additive."""
    if mask is None:
        return True
    return (
        mask.dim() == 4
        and mask.shape[0] in (1, batch)
        and tuple(mask.shape[1:]) == (1, length, cached)
        and (mask.dtype == torch.bool or mask.is_floating_point())
    )


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    tolerance = AGREEMENT * float(want.abs().max())
    return got.shape == want.shape and torch.allclose(got, want, rtol=AGREEMENT, atol=tolerance)
