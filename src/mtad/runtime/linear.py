"""Linear layers whose weights are stored in a format that decode-shaped products read faster.

A decode step multiplies a few rows (1 token, or the k tokens a round verifies) by every weight
matrix of the model, so it is bound by reading the weights, not by arithmetic: bytes read and the
kernel's efficiency at a few rows decide its time. On CPUs the dense kernels are poor at a few
rows (they read the weights well below the memory bandwidth, and two rows can cost nearly twice
one), while fbgemm's packed kernels stream them near it (`docs/results/fast-path-2026-12/`). Each
format below wraps one such kernel from the pinned torch wheel:

- `Fp16Linear`: fp16 weights, float32 activations and accumulation (mtad's native kernel, else
  fbgemm's). Half of float32's bytes and 8x finer than bfloat16 rounding (11 significant bits
  against 8): the fast path's default. Where a layer's float32 weights lie exactly on a GGUF
  block grid (Q4_1 or Q8_0: a model dequantized from such a file, like the default target), the
  native kernel stores them as those blocks instead (`blocks`): 5 or 8.5 bits a weight, and the
  very values of the float32 model (`weight_error` 0).
- `Int8Linear`: weight-only int8, a scale per output channel, bfloat16 activations. A quarter of
  float32's bytes; lossy, so only when asked for. (fbgemm's dynamic int8, which also quantizes
  activations per tensor, is faster at 4-32 rows but multiplied the default target's perplexity
  on held-out answers by 6.3: not offered.)
- `Int4Linear`: 4-bit weights in groups of 32 with a scale and an offset per group, bfloat16
  activations (`_weight_int4pack_mm_for_cpu`; its float32 path is a slow reference). An eighth of
  float32's bytes. Weights that lie on such a grid (a Q4_0/Q4_1 GGUF model dequantized, like the
  default target) keep their levels, and move only by the bfloat16 rounding of the scales and
  offsets (up to 0.021 on the default target); other weights are rounded to the grid.

Every format keeps the `nn.Linear` call contract (`[..., in] -> [..., out]`, the caller's dtype
in and out), so a model's own forward code runs unchanged: no model file is forked.
`weight_error` says how far the stored weights are from the originals (reported, and tested).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mtad.runtime.native import kernels

#: Weights per int4 group (one scale and one offset each): GGUF Q4_0/Q4_1 blocks are 32 wide.
INT4_GROUP = 32


class PackedLinear(nn.Module):
    """An `nn.Linear` replacement whose weights live in a packed format (see the module docstring)."""

    format = "dense"
    compute_dtype = torch.float32  # what the kernel multiplies in: activations are cast to it

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.weight_error = 0.0  # max |stored - original| over the weights, set by each format
        self.nbytes = 0  # bytes the kernel reads per product (weights, scales), set by each format

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


class Fp16Linear(PackedLinear):
    """fp16 weights for products of few rows; optionally a dense copy for many rows.

    The product runs mtad's native kernel (`mtad.runtime.native`: all threads, weights packed per
    tile) where it is built and the layer's shape fits its tile, else fbgemm's fp16 kernel (one
    thread; its cost grows faster with rows): `kernel` says which. Past some row count (prefills,
    wide batches) the dense kernel of the dtype auto would pick is faster: `dense_from_rows`
    (measured per machine by `mtad.runtime.fast`) switches to a copy of the weights in
    `dense_dtype`, at the memory of that copy.
    """

    format = "fp16"
    compute_dtype = torch.float32

    def __init__(
        self,
        linear: nn.Linear,
        dense_from_rows: int | None = None,
        dense_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        half = weight.half()
        self.weight_error = float((half.float() - weight).abs().max()) if weight.numel() else 0.0
        native = kernels()
        self.native = native if native is not None and native.fits(*weight.shape) else None
        exact = None if self.native is None else self.native.exact_blocks(weight)
        self.blocks = None if exact is None else exact[0]  # a GGUF block grid that holds the weights exactly
        if exact is not None:
            self.packed = exact[1]
            self.weight_error = 0.0
            self.nbytes = exact[1].numel()
        elif self.native is not None:
            self.packed = self.native.pack_fp16(half)
        else:
            with warnings.catch_warnings():  # fbgemm's fp16 ops are marked deprecated, not yet replaced
                warnings.simplefilter("ignore")
                self.packed = torch.fbgemm_pack_gemm_matrix_fp16(weight)
        if exact is None:
            self.nbytes = 2 * weight.numel()
        self.dense_from_rows = dense_from_rows
        rounded = weight if exact is not None else half  # the values the packed products compute with
        self.dense = None if dense_from_rows is None else rounded.to(dense_dtype)

    @property
    def kernel(self) -> str:
        """The kernel its products of few rows run: "native" or "fbgemm"."""
        return "native" if self.native is not None else "fbgemm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None and x.numel() >= self.dense_from_rows * self.in_features:
            bias = None if self.bias is None else self.bias.to(self.dense.dtype)
            return nn.functional.linear(x.to(self.dense.dtype), self.dense, bias).to(x.dtype)
        bias = None if self.bias is None else self.bias.float()  # a model cast after packing casts it
        if self.native is not None:
            return self.native.linear_fp16(x.to(self.compute_dtype), self.packed, bias).to(x.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = torch.fbgemm_linear_fp16_weight_fp32_activation(x.to(self.compute_dtype), self.packed, bias)
        return out.to(x.dtype)


class Int8Linear(PackedLinear):
    """Weight-only int8: one scale per output channel, bfloat16 activations, float accumulation
    (`_weight_int8pack_mm`; its float32 path is a slow reference)."""

    format = "int8"
    compute_dtype = torch.bfloat16

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # [out]
        self.levels = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scale.bfloat16()
        stored = self.levels.float() * self.scales.float()[:, None]
        self.weight_error = float((stored - weight).abs().max()) if weight.numel() else 0.0
        self.nbytes = weight.numel() + 2 * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)
        out = torch._weight_int8pack_mm(rows, self.levels, self.scales)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


class Int4Linear(PackedLinear):
    format = "int4"
    compute_dtype = torch.bfloat16

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        if self.in_features % INT4_GROUP or self.out_features % 16:  # the kernel's tiles
            raise ValueError(
                f"int4 needs in_features divisible by {INT4_GROUP} and out_features by 16, "
                f"got {self.in_features} and {self.out_features}"
            )
        weight = linear.weight.detach().float()
        groups = weight.reshape(self.out_features, -1, INT4_GROUP)  # [out, in / 32, 32]
        low = groups.amin(-1)
        scale = (groups.amax(-1) - low) / 15
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        levels = torch.round((groups - low[..., None]) / safe[..., None]).clamp(0, 15)
        # The kernel computes (level - 8) * scale + offset, so the offset is the group's low end + 8 steps.
        scales_offsets = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1)  # [in / 32, out, 2]
        self.scales_offsets = scales_offsets.contiguous().bfloat16()
        stored_scale, stored_offset = self.scales_offsets.float().transpose(0, 1).unbind(-1)
        stored = (levels - 8) * stored_scale[..., None] + stored_offset[..., None]
        self.weight_error = float((stored - groups).abs().max()) if weight.numel() else 0.0
        levels = levels.to(torch.int32).reshape(self.out_features, self.in_features)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(levels, 1)
        self.nbytes = weight.numel() // 2 + self.scales_offsets.numel() * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)
        out = torch._weight_int4pack_mm_for_cpu(rows, self.packed, INT4_GROUP, self.scales_offsets)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


FORMATS: dict[str, type[PackedLinear]] = {cls.format: cls for cls in (Fp16Linear, Int8Linear, Int4Linear)}


def pack_linears(model: nn.Module, format: str, **options) -> list[PackedLinear]:
    """Replace every `nn.Linear` in `model` (a tied output head included: it gets its own packed
    copy, the input embedding stays as it is) by the `format` version, in place; the new modules.

    `options` go to the format's constructor. A layer the format cannot hold (int4 tiles:
    in_features divisible by 32, out_features by 16) stays dense.
    """
    cls = FORMATS[format]
    packed: list[PackedLinear] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                try:
                    replacement = cls(child, **options)
                except ValueError:
                    continue
                setattr(parent, name, replacement)
                packed.append(replacement)
    return packed
