"""Acceptance rules: pure functions over probability tensors, one per method family.

Words (Leviathan et al.; vLLM's rejection sampler uses the same):
- p: the target's warped distributions, q: the draft's warped distributions.
- draft tokens x_1..x_n were proposed by the draft; a rule decides how many are *accepted*.
- the *next token* is drawn from the target after the accepted prefix: a *recovered* token
  (drawn from a residual or from p at the first position not accepted) or a *bonus* token
  (drawn from p after the whole block, when every draft token was accepted).

Shapes: every rule is batched over rows so a batch of prompts with ragged acceptance fits later.
    p:      [rows, n + 1, vocab]   p[:, j] is the target distribution of the token after x_<=j
    q:      [rows, n, vocab]       q[:, j] is the draft distribution x_{j+1} was drawn from
    tokens: [rows, n]              the draft tokens x_1..x_n
Each returns a `Verdict`: accepted [rows] (0..n) and next_token [rows]; tree rules (below) return
the same type with the accepted path's node indices.

Which rules are lossless (output distribution equals sampling from p token by token):
`speculative` is; `accept_none` trivially is; `mtad_joint` is not, by design — it is a
mode-seeking approximation of joint (multi-token) sampling; `accept_all` is used only where the
target is its own draft (MTJD), where nothing needs checking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtad.config import REFERENCES
from mtad.decoding.sampling import normalise, sample
from mtad.decoding.tree import path_to


@dataclass(frozen=True)
class Verdict:
    """What a rule decides, per row: how many draft tokens it accepted, the token after them, and
    for a tree which nodes (a chain's accepted nodes are its first `accepted`)."""

    accepted: torch.Tensor  # [rows] long, number of accepted draft tokens
    next_token: torch.Tensor  # [rows] long, recovered or bonus token
    tree_paths: tuple[tuple[int, ...], ...] | None = (
        None  # per row: accepted node indices, root's child first
    )

    def path(self, row: int = 0) -> list[int]:
        """The accepted draft nodes of `row`, in order."""
        if self.tree_paths is not None:
            return list(self.tree_paths[row])
        return list(range(int(self.accepted[row])))


def accept_none(
    p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator
) -> Verdict:
    """Target-only decoding (ar, greedy): nothing drafted, one token from p."""
    return _next_from_p(p, torch.zeros(p.shape[0], dtype=torch.long, device=p.device), generator)


def accept_all(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator) -> Verdict:
    """The target drafted for itself (MTJD): keep the whole block, then a bonus token from p."""
    accepted = torch.full((p.shape[0],), tokens.shape[1], dtype=torch.long, device=p.device)
    return _next_from_p(p, accepted, generator)


def speculative(
    p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator
) -> Verdict:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023). Lossless.

    Accept x_j with probability min(1, p(x_j) / q(x_j)), left to right; at the first rejection
    draw the recovered token from normalise(max(p - q, 0)); if all n are accepted, draw a bonus
    token from p after the block.
    """
    rows, n = tokens.shape
    p_tokens = _token_probs(p[:, :n], tokens)  # [rows, n]
    q_tokens = _token_probs(q, tokens)  # [rows, n]
    uniform = torch.rand((rows, n), generator=generator, device=p.device)
    # u < p/q written without a division, so q = 0 (a scripted draft) cannot produce NaN.
    token_accepted = uniform * q_tokens < p_tokens
    accepted = token_accepted.long().cumprod(-1).sum(-1)  # [rows]

    row = torch.arange(rows, device=p.device)
    p_at = p[row, accepted]  # [rows, vocab]
    q_padded = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # q is 0 after the block: bonus = p
    residual = (p_at - q_padded[row, accepted]).clamp_min(0)
    # p == q leaves no residual mass; rejection then had probability 0, and p is the right answer.
    empty = residual.sum(-1, keepdim=True) <= 0
    residual = torch.where(empty, p_at, residual)
    return Verdict(accepted, sample(normalise(residual), generator))


def mtad_joint(
    p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator, threshold: float
) -> Verdict:
    """MTAD's joint-likelihood test (Qin et al., ICLR 2025). Deterministic, not lossless.

    ratio_d = prod_{j<=d} p(x_j) / prod_{j<=d} q(x_j); accept the *largest* d with ratio_d > tau,
    even if a shorter prefix failed (later tokens may compensate). A token with p = 0 fails every
    prefix that contains it. Then one token from p at the first position not accepted.
    """
    n = tokens.shape[1]
    log_ratio = _log_prefix_ratios(_token_probs(p[:, :n], tokens), _token_probs(q, tokens))  # [rows, n]
    passing = log_ratio > math.log(threshold)
    lengths = torch.arange(1, n + 1, device=p.device)
    accepted = (passing.long() * lengths).amax(-1) if n else torch.zeros(p.shape[0], dtype=torch.long)
    return _next_from_p(p, accepted.to(p.device), generator)


def _log_prefix_ratios(p_tokens: torch.Tensor, q_tokens: torch.Tensor) -> torch.Tensor:
    """log of prod_{j<=d} p / prod_{j<=d} q for every d; -inf once any p is 0."""
    log_terms = torch.where(
        p_tokens > 0, torch.log(p_tokens) - torch.log(q_tokens), torch.full_like(p_tokens, -math.inf)
    )
    ratios = log_terms.cumsum(-1)
    # A p = 0 token after a q = 0 token gives inf + (-inf) = NaN: the p = 0 token must fail.
    return torch.nan_to_num(ratios, nan=-math.inf)


def _token_probs(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """probs[r, j, tokens[r, j]] -> [rows, n]."""
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _next_from_p(p: torch.Tensor, accepted: torch.Tensor, generator: torch.Generator) -> Verdict:
    row = torch.arange(p.shape[0], device=p.device)
    return Verdict(accepted, sample(p[row, accepted], generator))


# --- Trees (batch of one prompt): node i has token tokens[i] and parent parents[i] (-1 = root). ---
# p and q are [1 + nodes, vocab]: row 0 after the root context, row 1 + i after node i.


def _tree_verdict(path: list[int], next_token: torch.Tensor) -> Verdict:
    return Verdict(torch.tensor([len(path)]), next_token, (tuple(path),))


def reference_log_joints(
    log_joint: torch.Tensor, depths: torch.Tensor, parents: torch.Tensor, best_leaf: int, rule: str
) -> torch.Tensor:
    """MMTAD's reference draft joint for every node [nodes] (log), by the named rule:

    best: the best final beam's own prefix at the node's depth (the authors' intent; their code
          reads a misaligned beam slot), max: the largest draft joint among nodes of that depth (an
          older version), own: the node's own draft joint (a per-node likelihood ratio).
    """
    if rule == "own":
        return log_joint.clone()
    depths = depths.to(log_joint.device)
    max_depth = int(depths.max())
    per_depth = torch.full((max_depth + 1,), -math.inf, dtype=log_joint.dtype, device=log_joint.device)
    if rule == "max":
        per_depth = per_depth.scatter_reduce(0, depths, log_joint, reduce="amax")
    elif rule == "best":
        node = best_leaf
        while node >= 0:
            per_depth[depths[node]] = log_joint[node]
            node = int(parents[node])
    else:
        raise ValueError(f"unknown reference rule {rule!r}; allowed: {', '.join(REFERENCES)}")
    return per_depth[depths]


def mmtad_tree(
    p: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    depths: torch.Tensor,
    reference: torch.Tensor,
    generator: torch.Generator,
    threshold: float,
) -> Verdict:
    """MMTAD: accept the path to the deepest node whose target joint / reference joint > tau.

    Ties at that depth go to the higher target joint. Then one token from p after the path (at the
    root when no node passes). Deterministic test, not lossless — MTAD's rule over many candidates.
    """
    log_target = _tree_log_joint(p, tokens, parents)  # [nodes]
    passing = (log_target - reference) > math.log(threshold)
    best, best_key = -1, (0, -math.inf)
    for node in torch.nonzero(passing).flatten().tolist():
        key = (int(depths[node]), float(log_target[node]))
        if key > best_key:
            best, best_key = node, key
    path = path_to(best, parents)
    return _tree_verdict(path, sample(p[best + 1].unsqueeze(0), generator))


def specinfer_tree(
    p: torch.Tensor,
    q: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    generator: torch.Generator,
    with_replacement: bool = True,
) -> Verdict:
    """Multi-candidate speculative sampling down a token tree (SpecInfer; MCSD). Lossless.

    At a node with target p and draft q, try its children in order: accept child x with
    probability min(1, p(x) / q(x)) and descend; on rejection p <- normalise(max(p - q, 0)) and,
    for children drawn without replacement, q(x) <- 0 and q renormalised. When no child is
    accepted, draw from the current p; at an accepted leaf, a bonus token from p after it.
    """
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(parents.tolist()):
        children.setdefault(parent, []).append(node)
    node, path = -1, []
    target, draft = p[0], q[0]
    while children.get(node):
        for child in children[node]:
            x = int(tokens[child])
            u = float(torch.rand((), generator=generator, device=p.device))
            if u * draft[x] < target[x]:
                node = child
                break
            target = _residual(target, draft)
            if not with_replacement:
                draft = draft.clone()
                draft[x] = 0
                draft = normalise(draft) if draft.sum() > 0 else draft
        else:
            return _tree_verdict(path, sample(target.unsqueeze(0), generator))
        path.append(node)
        target, draft = p[node + 1], q[node + 1]
    return _tree_verdict(path, sample(target.unsqueeze(0), generator))


def _residual(target: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
    residual = (target - draft).clamp_min(0)
    # No residual mass means p <= q everywhere, i.e. p == q: rejection had probability 0.
    return normalise(residual) if residual.sum() > 0 else target


def _tree_log_joint(p: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """log prod p(token | path) over each node's root-to-node path [nodes] (parents precede children)."""
    token_probs = p[parents.to(p.device) + 1, tokens.to(p.device)].double()  # p row of the parent context
    log_p = torch.where(token_probs > 0, token_probs.log(), torch.full_like(token_probs, -math.inf))
    joint = torch.empty_like(log_p)
    for node, parent in enumerate(parents.tolist()):
        joint[node] = log_p[node] + (joint[parent] if parent >= 0 else 0.0)
    return joint


def ordered_candidates_tree(
    p: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, generator: torch.Generator
) -> Verdict:
    """Multi-candidate speculative sampling for children *chosen* in advance (most likely first),
    not drawn from q. Lossless.

    Each child is a proposal with a one-hot q: accept child x with probability r(x), r being the
    node's target p at first; on rejection r <- normalise(r with x removed) (the residual of
    max(r - one-hot, 0)). No child accepted: draw from r; at an accepted leaf, a bonus token from p.
    The chance that some child is accepted is the target mass of the children, the most any
    verification of fixed candidates can give.
    """
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(parents.tolist()):
        children.setdefault(parent, []).append(node)
    node, path = -1, []
    target = p[0]
    while children.get(node):
        for child in children[node]:
            x = int(tokens[child])
            u = float(torch.rand((), generator=generator, device=p.device))
            if u < float(target[x]):
                node = child
                break
            if float(target[x]) > 0:
                target = target.clone()
                target[x] = 0
                target = normalise(target)
        else:
            return _tree_verdict(path, sample(target.unsqueeze(0), generator))
        path.append(node)
        target = p[node + 1]
    return _tree_verdict(path, sample(target.unsqueeze(0), generator))
