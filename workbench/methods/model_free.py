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
- `DraftGate`: how many tokens of a proposal are worth verifying on this
  hardware, from the acceptance learned online per kind of proposal and the
  target's measured cost profile; none when drafting cannot beat a plain step.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable

from ..draft import Draft
from .sizing import SizingLog, chain_reason


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


class DraftGate:
    """Cuts a proposed chain to the length that pays for its verification, learned online.

    Per kind of proposal (`key`: e.g. how long a suffix match it copies), a_i is the
    chance that draft position i is accepted given that the positions before it
    were: hits_i / visits_i over the verified steps so far, after a weak prior
    of PRIOR_WEIGHT visits at the rate of position i - 1 (for the first, the
    drafter's `prior(key)`, e.g. n / (n + 1) for a match of n tokens, else
    PRIOR_RATE), so a position never tried yet counts as good as the one before it
    and a long draft that keeps being accepted can grow. Drafting k tokens then
    yields in expectation

        E(k) = 1 + sum_{i<=k} prod_{j<=i} a_j      (the bonus token included; E(0) = 1)

    tokens for one forward over k + 1 tokens, which costs r(k) = t(k+1) / t(1)
    one-token forwards on this hardware (the target's measured cost profile,
    workbench.backend.profile), plus k * c where drafting a token costs c of them
    (a draft model; copying is free). `length` returns the k that maximises
    E(k) / (r(k) + k c), and 0 (a plain step) unless that beats 1 by MARGIN. A key refused EXPLORE
    times in a row gets one 1-token probe, so a kind of proposal that starts to
    work again (the text turns to quoting) is noticed. Copy drafters' chains are
    accepted in runs (after the first token, the rest usually follows), which is
    why a_i is kept per position rather than as one rate. A refusal tells the run's
    SizingLog why (workbench.methods.sizing), with the costs and expectations behind it.
    """

    POSITIONS = 16  # a_i kept for i = 1..POSITIONS; deeper positions share the last
    PRIOR_RATE, PRIOR_WEIGHT = 0.5, 2.0
    MARGIN = 0.02
    EXPLORE = 16

    def __init__(self, ratios: list[float] | None, max_len: int,
                 prior: Callable[[Hashable], float] | None = None, draft_cost: float = 0.0,
                 log: SizingLog | None = None) -> None:
        """ratios[k] = r(k) for k = 0..max_len; None: verifying costs nothing extra (no gating).

        prior(key): the first position's acceptance before any data, e.g. higher for a longer match
        (default PRIOR_RATE). draft_cost: what drafting one token costs, in one-token target forwards
        (0 for copying; a draft model's c), so k tokens cost r(k) + k * draft_cost. log: where a refusal
        says why (the run's DrafterEnv.sizing).
        """
        self.max_len = max_len
        self.ratios = ratios
        self.prior = prior
        self.draft_cost = draft_cost
        self.log = log
        self.hits: dict[Hashable, list[int]] = defaultdict(lambda: [0] * self.POSITIONS)
        self.visits: dict[Hashable, list[int]] = defaultdict(lambda: [0] * self.POSITIONS)
        self.refused: dict[Hashable, int] = defaultdict(int)

    @classmethod
    def for_run(cls, env, max_len: int, enabled: bool = True,
                prior: Callable[[Hashable], float] | None = None) -> "DraftGate":
        """A gate reading the run's target's cost profile on its backend (measured once per machine, cached)."""
        if not enabled:
            return cls(None, max_len, prior)
        return cls(env.costs.forward_ratios(env.target, env.backend, max_len)[0], max_len, prior, log=env.sizing)

    def expected(self, key: Hashable, n: int) -> list[float]:
        """E(k) for k = 0..n: expected tokens committed by a forward over k drafted tokens of this kind."""
        hits, visits = self.hits[key], self.visits[key]
        totals, reach, rate = [1.0], 1.0, self.prior(key) if self.prior else self.PRIOR_RATE
        for i in range(n):
            j = min(i, self.POSITIONS - 1)
            if i < self.POSITIONS:
                rate = (hits[j] + self.PRIOR_WEIGHT * rate) / (visits[j] + self.PRIOR_WEIGHT)
            reach *= rate
            totals.append(totals[-1] + reach)
        return totals

    def best(self, key: Hashable, available: int) -> tuple[int, float]:
        """(k, E(k) / cost(k)) for the best k <= available, cost(k) = r(k) + k * draft_cost; k = 0 (value 1)
        when no draft beats a plain step.

        Without a cost profile every token is free: k = available, valued at E(available).
        """
        available = max(0, min(available, self.max_len))
        totals = self.expected(key, available)
        if self.ratios is None:
            return available, totals[available]
        best, best_k = 1.0 + self.MARGIN, 0
        for k in range(1, available + 1):
            value = totals[k] / (self.ratios[k] + k * self.draft_cost)
            if value > best:
                best, best_k = value, k
        return best_k, (best if best_k else 1.0)

    def length(self, key: Hashable, available: int) -> int:
        """How many of `available` proposed tokens to draft (0: take a plain step)."""
        k, _ = self.best(key, available)
        if k == 0 and available > 0:
            self.refused[key] += 1
            if self.refused[key] >= self.EXPLORE:  # probe: one token, nearly free in a memory-bound forward
                self.refused[key] = 0
                return 1
            if self.log is not None and self.ratios is not None:
                n = min(available, self.max_len)
                self.log.decline(*chain_reason(self.ratios, self.expected(key, n), n, self.draft_cost, self.MARGIN))
        else:
            self.refused[key] = 0
        return k

    def update(self, key: Hashable, drafted: int, accepted: int) -> None:
        """A verified draft of this kind: `drafted` tokens deep, `accepted` of them accepted."""
        if drafted <= 0:
            return
        hits, visits = self.hits[key], self.visits[key]
        for i in range(min(drafted, accepted + 1)):  # position i + 1 was tested iff all before it were accepted
            j = min(i, self.POSITIONS - 1)
            visits[j] += 1
            hits[j] += accepted > i


def match_bucket(n: int) -> int:
    """Suffix-match lengths grouped as a gate's key: 1, 2, 3, 4, then 5-7, 8-15, 16+ (as 5, 8, 16)."""
    return n if n <= 4 else 5 if n < 8 else 8 if n < 16 else 16


def affordable_nodes(env, max_cost: float, most: int = 64) -> int:
    """Draft nodes that fit a verification forward costing at most max_cost x a one-token forward.

    Read from the run's target's measured cost profile on its backend (env.costs, cached per
    machine): on a GPU a forward over dozens of tokens costs what one does, on a CPU a few
    tokens already cost more. At least 1; max_cost <= 0 means no limit.
    """
    if max_cost <= 0:
        return most
    ratios = env.costs.forward_ratios(env.target, env.backend, most)[0]  # ratios[k]: the root and k nodes
    return max([k for k in range(1, most + 1) if ratios[k] <= max_cost], default=1)  # one node always
