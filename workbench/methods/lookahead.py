"""Lookahead decoding (Fu et al. 2024): Jacobi trajectories fill an n-gram pool that is verified in the same forward.

Parameters as in the paper: window W, n-gram size N, guess set size G.

Lookahead branch: a 2D window of N-1 levels x W positions, level 0 the oldest
Jacobi iteration. The token of level l at window position j attends to the
diagonal below it (level l-1 at j-1, ..., level 0 at j-l) and to level 0 before
that: that attention pattern is a tree, so the window goes into the ordinary
Draft as nodes with parent(l, j) = (l-1, j-1), parent(0, j) = (0, j-1) and the
root for j = 0 (positions = depths line up with window positions). After the
forward, the target's argmax at the last level gives the new level, and every
diagonal (level 0 at j-N+2, ..., level N-2 at j, its prediction) is an n-gram
for the pool, keyed by its first token.

Verification branch: up to G pool n-grams whose first token is the last
committed token, as chains (their N-1 continuation tokens) from the root.

Both branches are one draft tree, one target forward; the draft is a trie, so
equal prefixes share nodes. The engine verifies every root-to-node path, so
a lookahead chain can be accepted too, and the step's draft tree (the
candidates and the window) is what the app's Draft tree tab shows. With
`context_ngrams` the pool also holds the n-grams of the prompt and the
committed text (prompt lookup through the same pool), and the continuation of
the longest earlier match of the text's suffix (MATCH_MIN tokens or more, from
the suffix automaton that also fills new window slots) is the first candidate:
where the output quotes the input, a pool n-gram keyed by one token is a weak
guess and the long match a strong one. That chain is as deep as its learned
acceptance pays for on this hardware (model_free.DraftGate, per match length),
on top of the node budget below, which the pool candidates and the window
share. Needs the target's argmax at every node (`wants_target_argmax`).
Lossless by verification.

Lookahead spends spare parallel compute: on a GPU a forward over dozens of
tokens costs what one does, on a CPU a few tokens already cost more. So the
tree has a node budget, filled with candidates first, then as many window
positions as fit (at least N-1, else the window sits out that step and keeps
its guesses). The budget lies between the nodes that are free (a forward
within FREE_COST of a one-token forward) and those within `max_cost` (at
least one node either way, so the budget can grow again), both read from
the target's measured cost profile (env.costs, cached per model, device and
threads); it halves after a step that accepted nothing and doubles
after one that accepted a token. On a GPU both bounds are large and the full
W x (N-1) window runs every step; on a CPU the tree stays small unless it
pays. With max_cost = 0 there is no budget at all.
"""
from __future__ import annotations

from collections import OrderedDict

from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, register
from .jacobi import GuessFiller
from .model_free import DraftGate, TrieDraft, affordable_nodes, match_bucket

POOL_PER_KEY = 16  # n-grams kept per first token (most recent)
FREE_COST = 1.05  # a forward this close to a one-token forward's cost counts as free
MATCH_MIN = 2  # a suffix match this long is copied first (a one-token match is what the pool holds anyway)
MATCH_MAX = 16  # deepest copied chain


class NGramPool:
    """First token -> its most recent distinct continuations (tuples of N-1 tokens)."""

    def __init__(self, per_key: int = POOL_PER_KEY) -> None:
        self.per_key = per_key
        self.grams: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, gram: tuple[int, ...]) -> None:
        row = self.grams.setdefault(gram[0], OrderedDict())
        rest = gram[1:]
        row[rest] = None
        row.move_to_end(rest)
        if len(row) > self.per_key:
            row.popitem(last=False)

    def candidates(self, first: int, k: int) -> list[tuple[int, ...]]:
        row = self.grams.get(first)
        return list(reversed(row))[:k] if row else []


@register
class Lookahead(Drafter):
    name = "lookahead"
    label = "Lookahead decoding (Jacobi n-gram pool)"
    family = "Without a draft model"
    pays_when = ("verifying extra tokens is cheap (a GPU, or a bf16 target on a CPU with AMX) and the text "
                 "repeats n-grams")
    description = ("A lookahead branch of Jacobi iterations collects n-grams; a verification branch checks pool "
                   "n-grams that start with the last token, both in one target forward. No draft model. Lossless.")
    tree = True
    wants_target_argmax = True
    params = (
        Param("window", "int", 3, "W: window positions of the lookahead branch", 1, 32),
        Param("ngram", "int", 3, "N: n-gram size (the window keeps N-1 levels)", 2, 8),
        Param("guesses", "int", 3, "G: pool n-grams verified per step", 0, 32),
        Param("context_ngrams", "bool", True, "also pool the n-grams of the prompt and the committed text, and "
              "verify the continuation of the longest earlier suffix match first"),
        Param("max_cost", "float", 1.25, "keep the tree small enough that verifying it costs at most this "
              "many one-token forwards on this hardware (measured profile; 0 = no limit)", 0.0, 100.0),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.pool = NGramPool()
        self.filler = GuessFiller()
        self.levels: list[list[int]] = []  # up to N-1 levels of W tokens, oldest first
        self.nodes: list[list[int]] = []  # the draft node of each window slot in the last proposal
        self.after = -1  # context length the window belongs to
        self.pooled = 0  # context n-grams ending before this position are pooled
        self.rows: list[int] = []
        # node budget: between what is free on this hardware and what max_cost allows (module docstring)
        self.max_nodes = affordable_nodes(self.env, self.params["max_cost"])
        self.free_nodes = min(self.max_nodes, affordable_nodes(self.env, FREE_COST)) \
            if self.params["max_cost"] > 0 else self.max_nodes
        self.room = self.max_nodes
        # the suffix match's chain is sized by its own learned acceptance, apart from the node budget
        self.gate = DraftGate.for_run(self.env, MATCH_MAX, self.params["max_cost"] > 0,
                                      prior=lambda bucket: bucket / (bucket + 1))
        self.match: tuple[int, int] = (0, 0)  # (gate key, chain length) of the pending draft's match chain
        self._pool_context(list(prompt_ids))

    def _pool_context(self, tokens: list[int]) -> None:
        if not self.params["context_ngrams"]:
            return
        n = self.params["ngram"]
        for end in range(max(self.pooled, n), len(tokens) + 1):
            self.pool.add(tuple(tokens[end - n:end]))
        self.pooled = max(self.pooled, len(tokens) + 1)

    def _pad(self, tokens: list[int], level: list[int]) -> list[int]:
        w = self.params["window"]
        if len(level) >= w:
            return level[:w]
        self.filler.sync(tokens)
        return level + self.filler.guesses(w)[len(level):]

    def propose(self, ctx: DraftContext) -> Draft | None:
        self.nodes = []  # the window slots in this step's draft (none unless added below)
        self.match = (0, 0)  # (gate key, length) of this step's match chain (none unless added below)
        if ctx.max_tokens <= 0:
            return None
        if self.after != len(ctx.tokens):  # first step, or a context we did not follow: start over
            self.levels = []
            self.pooled = 0
        self._pool_context(ctx.tokens)
        if not self.levels:
            self.levels = [self._pad(ctx.tokens, [])]
        self.after = len(ctx.tokens)
        trie = TrieDraft()
        limit = self.room  # tree size: the node budget, plus the match chain on top
        if self.params["context_ngrams"]:  # the longest earlier match of the text's suffix, copied on
            self.filler.sync(ctx.tokens)
            n, end = self.filler.sam.earlier_match()
            if n >= MATCH_MIN:
                chain = self.filler.sam.continuation(end, min(MATCH_MAX, ctx.max_tokens))
                k = self.gate.length(match_bucket(n), len(chain))
                trie.add_path(chain[:k])  # nodes 0..k-1
                self.match = (match_bucket(n), k)
                limit += k
        # verification branch: pool n-grams that continue the last token, most recent first
        for gram in self.pool.candidates(ctx.tokens[-1], self.params["guesses"]):
            trie.add_path(list(gram[: ctx.max_tokens]), limit=limit)  # only what fits
        # lookahead branch: level 0 is a chain from the root, level l hangs off the diagonal below it;
        # as many window positions as fit, at least enough for one n-gram, else none this step
        levels = len(self.levels)
        width = min(self.params["window"], (limit - len(trie)) // levels)
        if width < max(1, self.params["ngram"] - 1):
            return trie.draft()
        for lvl, level in enumerate(self.levels):
            row = []
            for j, tok in enumerate(level[:width]):
                if j == 0:
                    parent = -1
                else:
                    parent = self.nodes[lvl - 1][j - 1] if lvl else row[j - 1]
                row.append(trie.add(parent, tok))
            self.nodes.append(row)
        return trie.draft()

    def observe_target(self, argmax_rows: list[int], draft: Draft | None) -> None:
        self.rows = argmax_rows

    def observe(self, fb: StepFeedback) -> None:
        rows, nodes, levels = self.rows, self.nodes, self.levels
        if nodes:  # the window was in this forward: one Jacobi iteration of its first `width` positions
            top, width = len(levels) - 1, len(nodes[0])
            out = [rows[node + 1] for node in nodes[top]]  # predictions after the last level's slots
            if top == self.params["ngram"] - 2:  # full window: every complete diagonal is an n-gram
                for j in range(top, width):
                    self.pool.add(tuple(levels[lvl][j - top + lvl] for lvl in range(top + 1)) + (out[j],))
            # the prediction for each window position; positions past `width` keep the older guesses
            new = ([rows[0]] + out + levels[top][width + 1:])[: self.params["window"]]
            levels = levels + [new]
            if len(levels) > self.params["ngram"] - 1:
                levels = levels[1:]
        key, k = self.match
        if k:  # the match chain is nodes 0..k-1: how deep along it the accepted path went
            self.gate.update(key, k, sum(1 for node in fb.accepted if node < k))
        if fb.draft is not None:  # halve the budget after a step with nothing accepted, double it after a hit
            self.room = max(self.free_nodes, self.room // 2) if not fb.accepted else \
                min(self.max_nodes, 2 * self.room)
        # the window moves with the context: drop the committed positions, guess the freed ones
        c = len(fb.committed)
        self.levels = [self._pad(fb.tokens, level[c:]) for level in levels]
        self.after = len(fb.tokens)
