"""Sampling lives here, in one place: the warp every distribution goes through, and seeded draws.

The warp (paper brief): divide logits by temperature, keep the top-k, keep the top-p nucleus (the
most likely token is always kept), softmax. temperature 0 gives a one-hot distribution on the
argmax, so greedy decoding is sampling from a degenerate distribution and every acceptance rule
works unchanged.

Every finite temperature > 0 gives a distribution, never NaN: logits are shifted so the row's
maximum is 0 before the division (softmax is shift-invariant), so a tiny temperature sends the
others to -inf (greedy, ties shared) instead of +inf - inf; and a temperature float32 cannot hold
(below its smallest normal number, or above its largest) is divided in float64, where a subnormal
like 1e-45 is not rounded to 0 and 1e308 not to inf (-inf / inf is NaN). A huge temperature gives
the uniform distribution over the kept tokens.
"""

from __future__ import annotations

import torch

from mtad.config import SamplingConfig
from mtad.errors import NumericalError
from mtad.runtime.cache import CachedModel

#: Temperatures float32 divides exactly enough (its normal range); outside it, float64 divides.
_FLOAT32 = torch.finfo(torch.float32)


def warp(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Warped probabilities, float32, same shape as `logits` (`[..., vocab]`)."""
    row_max = check_finite(logits)  # [..., 1]
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    if 0 < sampling.top_k < logits.shape[-1]:
        # Fast path: top-p only ever keeps a subset of the top-k, so sort k values, not the
        # vocabulary; dividing by the temperature keeps the order, so it waits for the k values.
        # Ties with the k-th value are kept, as a threshold on logits would keep them; bf16 logits
        # tie often. One value past the cut shows a tie without a vocabulary-wide comparison; while
        # the last value read still ties, read twice as many (never a full sort).
        k, width = sampling.top_k, sampling.top_k + 1
        values, order = torch.topk(logits, width, dim=-1)  # sorted, largest first
        kth_largest = values[..., k - 1 : k]
        while width < logits.shape[-1] and bool((values[..., -1:] == kth_largest).any()):
            width = min(2 * width, logits.shape[-1])
            values, order = torch.topk(logits, width, dim=-1)
        # Equal values in token-id order, so which tied token top-p keeps is fixed (lowest id
        # first), not whatever order topk's kernel returns on this device.
        order, by_id = order.sort(dim=-1)
        values, by_value = values.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)
        order = order.gather(-1, by_value)
        outside = values < kth_largest
        values = _scaled(values, values[..., :1], sampling.temperature).masked_fill(outside, float("-inf"))
        kept = _nucleus_sorted(torch.softmax(values, dim=-1), sampling.top_p)
        probs = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        return probs.scatter(-1, order, kept)
    return _warp_sorted_full(_scaled(logits, row_max, sampling.temperature), sampling.top_p)


@torch.inference_mode()
def distributions(
    model: CachedModel,
    tokens: torch.Tensor,  # [rows, m] fed after the model's cache
    sampling: SamplingConfig,
    keep: int = 1,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`model.forward`, then the warp: distributions of the last `keep` positions [rows, keep, V].

    A subset draft is warped over its own K ids and only then scattered to target width: the
    same distribution as warping target-width logits that are -inf outside the subset (the
    warp never gives those ids mass), with K / V of the vocabulary-wide work.
    """
    logits = model.own_logits(tokens, keep, position_ids, attention_mask)
    if model.subset is not None:
        return model.subset.to_target_probs(warp(logits[..., : model.subset.size], sampling))
    return warp(model.align_vocab(logits), sampling)


def _scaled(logits: torch.Tensor, row_max: torch.Tensor, temperature: float) -> torch.Tensor:
    """(logits - row max) / temperature in float32 (`[..., n]`, row_max `[..., 1]`): every entry is
    <= 0 or -inf, the maximum exactly 0, so softmax never meets +inf or NaN (see the docstring)."""
    temperature = float(temperature)  # an int like 2**70 is a valid temperature; torch reads ints as int64
    if _FLOAT32.tiny <= temperature <= _FLOAT32.max:
        return (logits.float() - row_max.float()) / temperature
    return ((logits.double() - row_max.double()) / temperature).float()


def _warp_sorted_full(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # ties: lowest id first
    return torch.zeros_like(probs).scatter(-1, order, _nucleus_sorted(sorted_probs, top_p))


def _nucleus_sorted(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest prefix of descending probabilities whose mass reaches top_p; renormalise."""
    if top_p >= 1.0:
        return sorted_probs
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly more likely tokens
    keep = mass_before < top_p
    # The first token is always kept, even where top_p rounds to 0 in float32 (e.g. 1e-300).
    keep[..., 0] = True
    kept = sorted_probs * keep
    return kept / kept.sum(-1, keepdim=True)


def check_finite(logits: torch.Tensor) -> torch.Tensor:
    """Refuse NaN and +inf logits (-inf is a legitimate mask) before they poison a draw; return
    each row's maximum (`[..., vocab]` -> `[..., 1]`), which the warp shifts by."""
    # One reduction instead of three elementwise passes: the row maximum is NaN if any entry is
    # NaN, +inf if any is +inf, and -inf only if every entry is -inf.
    row_max = logits.amax(-1, keepdim=True)
    if bool((torch.isnan(row_max) | torch.isposinf(row_max)).any()):
        raise NumericalError("model produced NaN or +inf logits; allowed: finite values or -inf")
    if bool(torch.isneginf(row_max).any()):
        raise NumericalError("model produced a row of all -inf logits; at least one token must be possible")
    return row_max


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of `probs` (`[rows, vocab]` -> `[rows]`)."""
    return draw(probs, 1, generator).squeeze(-1)


def draw(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` indices per row drawn with replacement from non-negative `weights` (`[..., k]` ->
    `[..., count]`; rows need not sum to 1), by inverse transform sampling.

    One uniform u per draw, and the first index whose cumulative weight exceeds u x total: exact
    up to float rounding, as `torch.multinomial` is, but a cumulative sum and a binary search
    cost about a tenth of multinomial's time on a 49k vocabulary on a CPU (and multinomial's
    parallel region stalls on a loaded machine, waiting for busy cores). A zero-weight index is
    never drawn: its cumulative weight equals its predecessor's, so it is never the first to
    exceed u x total, and u x total is kept strictly below the total.
    """
    rows = weights.reshape(-1, weights.shape[-1])
    cumulative = rows.float().cumsum(-1)  # [rows, k]
    total = cumulative[:, -1:]  # [rows, 1]
    uniform = torch.rand((rows.shape[0], count), generator=generator, device=rows.device)
    below_total = torch.nextafter(total, torch.zeros_like(total))
    targets = torch.minimum(uniform * total, below_total)  # [rows, count]
    picked = torch.searchsorted(cumulative, targets, right=True)
    return picked.reshape(*weights.shape[:-1], count)


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """Rows of non-negative weights to distributions (`[..., vocab]`)."""
    return weights / weights.sum(-1, keepdim=True)
