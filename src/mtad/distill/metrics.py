"""Distillation loss and the numbers a draft is judged by.

KL(p || q) at temperature 1: p = target (teacher), q = draft (student), over the full vocabulary.
With stored top-k teacher log-probs the loss is the KL over the top-k tokens plus one bucket for
all other tokens (see `topk_kl`).
Expected per-token acceptance sum_v min(p_w(v), q_w(v)) uses the paper's warp (T=1, top-k 10,
top-p 0.9) on both: it is speculative sampling's acceptance probability for one token.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from mtad.config import PAPER_WARP, SamplingConfig
from mtad.decoding.sampling import warp
from mtad.models import output_width
from mtad.runtime.vocabulary import target_logits

PAPER_SAMPLING = SamplingConfig(**PAPER_WARP)


def topk_kl(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logp: torch.Tensor,
    teacher_kept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean KL(p || q) over positions, on the teacher's top-k tokens plus one "rest" bucket.

    student_logits [N, vocab]; topk_ids, topk_logp [N, k]. The rest bucket holds all mass
    outside the teacher's top-k, for both p and q. Renormalising the top-k instead would teach
    the draft a sharper distribution than the target's; with the bucket the loss is a lower
    bound of the full KL that is zero exactly when q matches p on the top-k.

    teacher_kept [N, k] (a draft over a token subset): False marks teacher tokens the draft can
    never predict. p drops them and is renormalised: on a fixed support, q = p / p(subset)
    maximises the acceptance sum_v min(p, q). Positions with no kept token are skipped.
    """
    teacher_p = topk_logp.float().exp()
    teacher_rest = (1.0 - teacher_p.sum(-1)).clamp(min=0.0)  # [N], a probability
    ids = topk_ids.long()
    if teacher_kept is not None:
        usable = teacher_kept.any(-1)
        teacher_p, teacher_rest, ids, teacher_kept = (
            teacher_p[usable],
            teacher_rest[usable],
            ids[usable],
            teacher_kept[usable],
        )
        student_logits = student_logits[usable]
        teacher_p = teacher_p * teacher_kept
        total = teacher_p.sum(-1) + teacher_rest
        teacher_p, teacher_rest = teacher_p / total[:, None], teacher_rest / total
        # Dropped entries point at the row's first kept id: harmless for both the gather (p = 0)
        # and the scatter that empties the rest bucket (that id is removed anyway).
        first_kept = ids.gather(-1, teacher_kept.float().argmax(-1, keepdim=True))
        ids = torch.where(teacher_kept, ids, first_kept)
    student_all = torch.log_softmax(student_logits.float(), dim=-1)  # [N, vocab]
    student_top = student_all.gather(-1, ids)  # [N, k]
    # Clamped: with k = vocab the student's bucket is empty (-inf) while float error leaves p a sliver.
    student_rest = student_all.scatter(-1, ids, float("-inf")).logsumexp(-1).clamp(min=-30.0)  # [N]
    kl_top = (torch.xlogy(teacher_p, teacher_p) - teacher_p * student_top).sum(-1)
    kl_rest = torch.xlogy(teacher_rest, teacher_rest) - teacher_rest * student_rest
    return (kl_top + kl_rest).mean()


def compare(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position sums for KL, greedy agreement, acceptance and subset mass. Logits [N, vocab].

    A subset draft has q = 0 outside its subset, where KL(p || q) is infinite; the KL is then
    taken against p renormalised on the subset, and `subset_mass` (p's mass there) says how much
    was left out.
    """
    p_log = torch.log_softmax(target_logits.float(), -1)
    q_log = torch.log_softmax(draft_logits.float(), -1)
    support = torch.isfinite(q_log)
    subset_mass = p_log.exp().where(support, 0.0).sum(-1)
    p_log_on_support = p_log - subset_mass.log()[:, None]
    kl = (p_log_on_support.exp() * (p_log_on_support - q_log)).where(support, 0.0).sum(-1)
    agree = (target_logits.argmax(-1) == draft_logits.argmax(-1)).float()
    accept = torch.minimum(warp(target_logits, PAPER_SAMPLING), warp(draft_logits, PAPER_SAMPLING)).sum(-1)
    return {
        "kl": kl.sum(),
        "greedy_agreement": agree.sum(),
        "acceptance": accept.sum(),
        "subset_mass": subset_mass.sum(),
    }


@torch.inference_mode()
def heldout_metrics(target, draft, samples) -> dict[str, float]:
    """Mean held-out KL(p||q), greedy agreement and expected acceptance over answer positions."""
    totals = {"kl": 0.0, "greedy_agreement": 0.0, "acceptance": 0.0, "subset_mass": 0.0}
    width = output_width(target)
    positions = 0
    for sample in samples:
        ids = sample.ids[None].long()
        span = slice(sample.start, len(sample.ids) - 1)
        if span.start >= span.stop:
            continue
        sums = compare(target(input_ids=ids).logits[0, span], target_logits(draft, ids, width)[0, span])
        for name, value in sums.items():
            totals[name] += float(value)
        positions += span.stop - span.start
    return {name: round(value / max(positions, 1), 4) for name, value in totals.items()} | {
        "positions": positions
    }


@torch.inference_mode()
def forward_ms(model, prefix: int = 200, tokens: int = 1, reps: int = 20) -> float:
    """Lower-quartile wall time (ms) of one cached forward of `tokens` tokens after `prefix` tokens.

    The lower quartile, not the mean: the machine is shared, and other users only ever add time.
    """
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.randint(vocab, (1, prefix), generator=generator), cache=cache, use_cache=True)
    times = []
    for _ in range(reps):
        step = torch.randint(vocab, (1, tokens), generator=generator)
        started = time.perf_counter()
        model(input_ids=step, cache=cache, use_cache=True)
        times.append(time.perf_counter() - started)
        cache.crop(-tokens)
    return round(sorted(times)[len(times) // 4] * 1000, 2)
