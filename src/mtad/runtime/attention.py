"""Custom attention as transformers takes it: a 4D additive mask (0 where a query sees a key, the
dtype's lowest value elsewhere) beside position ids. Tree attention (`mtad.decoding.tree`) and a
batch's ragged rows (`mtad.runtime.ragged`) both build their masks from these; no model file is
forked."""

from __future__ import annotations

import torch


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form transformers takes for a custom mask: 0 where `visible`, the dtype's lowest
    value elsewhere."""
    zeros = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return zeros.masked_fill(~visible, torch.finfo(dtype).min)


def causal(cached: int, new: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [new, cached + new]: every cached column, the new ones causally."""
    visible = torch.ones((new, cached + new), dtype=torch.bool, device=device)
    visible[:, cached:] = torch.ones((new, new), dtype=torch.bool, device=device).tril()
    return additive_mask(visible, dtype)
