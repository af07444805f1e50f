"""Token trees are data: node order, parents, depths, ancestor masks and root-to-leaf paths.

A tree is given by its nodes' *paths*: tuples of child ranks from the root, as in Medusa's tree
buffers — (0,) is the root's first child, (0, 1) that child's second child. Ranks, not tokens,
name nodes, so two siblings may carry the same token (sampling with replacement draws duplicates).
Nodes are ordered by depth, then by path, so a parent always precedes its children; the KV cache
stores fed nodes in this order.

With a cached context of length L in front of the tree, a node at depth d (1-based) sits at
position L + d - 1 and attends to the whole context, its ancestors and itself. That is all a
transformers model needs: a 4D additive attention mask and position ids — no forked model file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtad.runtime.attention import additive_mask


@dataclass(frozen=True)
class TreeBuffers:
    paths: tuple[tuple[int, ...], ...]  # node paths in node order
    parents: torch.Tensor  # [nodes] long, parent node index, -1 under the root
    depths: torch.Tensor  # [nodes] long, 1 for the root's children
    ancestor_mask: torch.Tensor  # [nodes, nodes] bool, [i, j] = j is i or an ancestor of i
    leaf_paths: torch.Tensor  # [leaves, max_depth] long, node indices root-to-leaf, padded with -1

    @property
    def size(self) -> int:
        return len(self.paths)


def tree_from_paths(paths: Sequence[Sequence[int]]) -> TreeBuffers:
    """Tree buffers from node paths; every proper prefix of a path must be a path too."""
    ordered = sorted({tuple(p) for p in paths}, key=lambda p: (len(p), p))
    index = {path: i for i, path in enumerate(ordered)}
    if any(len(p) == 0 for p in ordered):
        raise ValueError("a node path must not be empty (the root is implicit)")
    missing = [p for p in ordered if len(p) > 1 and p[:-1] not in index]
    if missing:
        raise ValueError(f"path {missing[0]} has no parent path {missing[0][:-1]}")
    parents = torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in ordered], dtype=torch.long)
    depths = torch.tensor([len(p) for p in ordered], dtype=torch.long)
    n = len(ordered)
    ancestor = torch.eye(n, dtype=torch.bool)
    for i, path in enumerate(ordered):
        for k in range(1, len(path)):
            ancestor[i, index[path[:k]]] = True
    has_child = {p[:-1] for p in ordered}
    leaves = [p for p in ordered if p not in has_child]
    max_depth = max((len(p) for p in ordered), default=0)
    leaf_paths = torch.full((len(leaves), max_depth), -1, dtype=torch.long)
    for row, leaf in enumerate(leaves):
        for k in range(1, len(leaf) + 1):
            leaf_paths[row, k - 1] = index[leaf[:k]]
    return TreeBuffers(tuple(ordered), parents, depths, ancestor, leaf_paths)


def paths_from_parents(parents: Sequence[int]) -> list[tuple[int, ...]]:
    """Node paths for nodes given by parent index (parents precede children), ranks by creation order."""
    paths: list[tuple[int, ...]] = []
    child_count: dict[int, int] = {}
    for parent in parents:
        rank = child_count.get(parent, 0)
        child_count[parent] = rank + 1
        paths.append((paths[parent] if parent >= 0 else ()) + (rank,))
    return paths


def path_to(node: int, parents: torch.Tensor) -> list[int]:
    """Node indices from the root's child down to `node` (empty for the root, -1)."""
    path = []
    while node >= 0:
        path.append(node)
        node = int(parents[node])
    return path[::-1]


def tree_inputs(
    tree: TreeBuffers,
    context: int,
    pending: int,
    fed: int,
    new: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids [1, pending + new] and an additive mask [1, 1, pending + new, context + fed + new].

    The forward feeds the last `pending` context tokens (causal among themselves) and then nodes
    fed..fed+new-1; the cache already holds context - pending context tokens followed by nodes
    0..fed-1. Columns: context tokens, then nodes in node order.
    """
    rows = pending + new
    visible = torch.zeros((rows, context + fed + new), dtype=torch.bool)
    cached_context = context - pending
    for r in range(pending):
        visible[r, : cached_context + r + 1] = True
    visible[pending:, :context] = True
    visible[pending:, context:] = tree.ancestor_mask[fed : fed + new, : fed + new]
    positions = torch.cat([
        torch.arange(cached_context, context), context + tree.depths[fed : fed + new] - 1
    ]).unsqueeze(0)  # fmt: skip
    return positions.to(device), additive_mask(visible, dtype)[None, None].to(device)
