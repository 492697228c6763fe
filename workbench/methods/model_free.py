"""Small pieces shared by the drafters that need no draft model (sam, aded, jacobi, lookahead).

- `GrowingText`: a drafter's own copy of the context, extended incrementally. The
  engine's context only grows, but a drafter reused on another context (staged
  drafting, a caller's own loop) would see it rewind; a prefix comparison catches
  that and the drafter rebuilds.
- `TrieDraft`: builds a Draft as a trie, so two proposals that share a prefix
  share nodes (one forward row each, and greedy verification, which follows the
  first matching child, never misses the longer of two equal-prefix branches).
- `DraftBudget`: an additive-increase / multiplicative-decrease cap on the draft
  length, so a drafter that keeps being wrong drafts one token (nearly free in
  a memory-bound forward) instead of a long, costly miss.
"""
from __future__ import annotations

from ..tree import Draft


class GrowingText:
    def __init__(self) -> None:
        self.tokens: list[int] = []

    def sync(self, tokens: list[int]) -> list[int] | None:
        """The tokens appended since the last call, or None when `tokens` does not extend the copy."""
        n = len(self.tokens)
        if len(tokens) < n or tokens[:n] != self.tokens:
            self.tokens = list(tokens)
            return None
        new = tokens[n:]
        self.tokens.extend(new)
        return new


class TrieDraft:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self._index: dict[tuple[int, int], int] = {}
        self.depth: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> int:
        """The node for `token` under `parent` (-1 = root), created when new."""
        key = (parent, token)
        node = self._index.get(key)
        if node is None:
            node = len(self.tokens)
            self._index[key] = node
            self.tokens.append(token)
            self.parents.append(parent)
            self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
        return node

    def add_path(self, tokens: list[int], parent: int = -1, limit: int | None = None) -> list[int]:
        """Add a chain under `parent`; with `limit`, stop before the tree would exceed that many nodes."""
        nodes = []
        for tok in tokens:
            if limit is not None and len(self.tokens) >= limit and (parent, tok) not in self._index:
                break
            parent = self.add(parent, tok)
            nodes.append(parent)
        return nodes

    def draft(self) -> Draft | None:
        return Draft(list(self.tokens), list(self.parents)) if self.tokens else None


class DraftBudget:
    """Cap on the draft length: doubles after a fully accepted draft, drops to accepted + 1 after a miss."""

    def __init__(self, max_len: int, adaptive: bool = True) -> None:
        self.max_len = max_len
        self.adaptive = adaptive
        self.cap = max_len

    def update(self, drafted: int, accepted: int) -> None:
        if not self.adaptive or drafted <= 0:
            return
        if accepted >= drafted:
            self.cap = min(self.max_len, max(self.cap, drafted) * 2)
        else:
            self.cap = max(1, accepted + 1)


def affordable_nodes(target, max_cost: float, most: int = 64, backend: str = "eager") -> int:
    """Draft nodes that fit a verification forward costing at most max_cost x a one-token forward.

    Read from the target's measured cost profile on `backend` (workbench.backend.profile, cached
    per machine): on a GPU a forward over dozens of tokens costs what one does, on a
    CPU a few tokens already cost more. At least 1; max_cost <= 0 means no limit.
    """
    if max_cost <= 0:
        return most
    from . import sequoia

    profile = sequoia.cost_profile(target, backend)
    one = sequoia.interpolate(profile, 1)
    fits = [n for n in range(1, most + 2) if sequoia.interpolate(profile, n) <= max_cost * one]
    return max(2, max(fits, default=2)) - 1  # tokens = root + nodes; one node always (the budget can grow)
