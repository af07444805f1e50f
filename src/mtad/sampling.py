"""Sampling lives here, in one place: the warp every distribution goes through, and seeded draws.

The warp (paper brief): divide logits by temperature, keep the top-k, keep the top-p nucleus (the
most likely token is always kept), softmax. temperature 0 gives a one-hot distribution on the
argmax, so greedy decoding is sampling from a degenerate distribution and every acceptance rule
works unchanged.
"""

from __future__ import annotations

import torch

from mtad.config import SamplingConfig
from mtad.errors import NumericalError


def warp(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Warped probabilities, float32, same shape as `logits` (`[..., vocab]`)."""
    check_finite(logits)
    logits = logits.float()
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        probs = _nucleus(probs, sampling.top_p)
    return probs


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p; renormalise."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly more likely tokens
    keep_sorted = mass_before < top_p  # the first token has mass_before 0, so it is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(-1, keepdim=True)


def check_finite(logits: torch.Tensor) -> None:
    """Refuse NaN and +inf logits (-inf is a legitimate mask) before they poison a draw."""
    bad = torch.isnan(logits) | torch.isposinf(logits)
    if bool(bad.any()):
        raise NumericalError("model produced NaN or +inf logits; allowed: finite values or -inf")
    if bool(torch.isneginf(logits).all(-1).any()):
        raise NumericalError("model produced a row of all -inf logits; at least one token must be possible")


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of `probs` (`[rows, vocab]` -> `[rows]`)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """Rows of non-negative weights to distributions (`[..., vocab]`)."""
    return weights / weights.sum(-1, keepdim=True)
