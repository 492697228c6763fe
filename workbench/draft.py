"""The Draft: the tree of tokens every drafter proposes, and the buffers verification needs.

(Its shape alone, torch-free, is workbench.tree_shape; the drafters that grow top-k trees are
workbench.methods.top_k_trees.)

A draft is a tree of n nodes hanging under a *root*, the last committed token
(which the target has not processed yet). Node i has a token and a parent
(-1 = the root). A chain (ordinary speculative decoding) is the tree whose
parents are [-1, 0, 1, ...].

For one verification forward the target sees n + 1 tokens: row 0 is the root,
row i + 1 is node i. Tree attention (SpecInfer, Medusa) lets each row attend to
the whole cached prefix, to the root, and to its own ancestors only, with
position id = prefix length + depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from . import tree_shape


@dataclass
class Draft:
    """What a drafter proposes for one step.

    tokens[i], parents[i]: the tree. Siblings are listed in the order the
    verifier should try them (most likely first).
    q[i]: the drafter's probability of tokens[i] (for display; None for
        deterministic drafters such as n-gram lookup).
    q_dist: (n, V) tensor or None. Row i is the exact distribution node i was
        drawn from (given its parent and its earlier siblings). Needed only for
        lossless verification under sampling; None means every node is a
        deterministic proposal (a one-hot q).
    """

    tokens: list[int]
    parents: list[int]
    q: list[float | None] = field(default_factory=list)  # the same as a Trace Step's q
    q_dist: torch.Tensor | None = None
    forwards: int = 0  # drafter forwards that produced it (1: a block drafted in one forward); 0: not counted

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.parents) != n:
            raise ValueError("tokens and parents must have the same length")
        for i, par in enumerate(self.parents):
            if not -1 <= par < i:
                raise ValueError(f"node {i} has parent {par}: parents must come before their children")
        if not self.q:
            self.q = [None] * n
        if self.q_dist is not None and self.q_dist.shape[0] != n:
            raise ValueError("q_dist must have one row per node")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def chain(cls, tokens: list[int], q: list[float | None] | None = None,
              q_dist: torch.Tensor | None = None, forwards: int = 0) -> "Draft":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), list(q or []), q_dist, forwards)

    @cached_property
    def is_chain(self) -> bool:
        return tree_shape.is_chain(self.parents)

    @cached_property
    def depths(self) -> list[int]:
        """Depth of each node; children of the root have depth 1."""
        return tree_shape.depths(self.parents)

    @cached_property
    def children(self) -> dict[int, list[int]]:
        """Node -> its children in order; key -1 is the root."""
        return tree_shape.children(self.parents)

    @cached_property
    def _ancestors(self) -> torch.Tensor:
        """(n+1, n+1) bool on the CPU, built once per draft (through numpy: cheaper than from nested lists)."""
        return torch.from_numpy(np.array(tree_shape.ancestor_rows(self.parents), dtype=bool))

    @cached_property
    def _blocks(self) -> dict[torch.device, torch.Tensor]:
        return {}  # device -> the ancestor block there

    def ancestor_matrix(self) -> torch.Tensor:
        """(n+1, n+1) bool: row r may attend to column c (root is row/column 0)."""
        return self._ancestors.clone()

    def ancestor_block(self, device: torch.device | str) -> torch.Tensor:
        """(n+1, n+1) bool ancestor matrix on `device`, cached: the tree part of the attention mask.

        For a backend that places it into a wider mask; read it, never write to it.
        """
        device = torch.device(device)
        block = self._blocks.get(device)
        if block is None:
            block = self._blocks[device] = self._ancestors.to(device, non_blocking=True)
        return block

    def attention_mask(self, past_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1, 1, n+1, past_len+n+1) additive mask: 0 where attention is allowed, min(dtype) elsewhere."""
        return additive_mask(self.ancestor_block(device), past_len + len(self.tokens) + 1, dtype)

    def position_ids(self, past_len: int, device: torch.device) -> torch.Tensor:
        """(1, n+1) positions: root at past_len, node i at past_len + depth(i)."""
        pos = torch.tensor([[past_len] + [past_len + d for d in self.depths]])  # (1, n+1)
        return pos.to(device, non_blocking=True)


def additive_mask(block: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    """bool (T, W) visibility of the last W of `total` columns -> additive (1, 1, T, total) mask.

    Every column before the last W (the cached past) is visible; 0 where attention is allowed,
    min(dtype) elsewhere.
    """
    T, W = block.shape
    mask = torch.zeros(T, total, dtype=dtype, device=block.device)
    mask[:, total - W:].masked_fill_(~block, torch.finfo(dtype).min)
    return mask[None, None]
