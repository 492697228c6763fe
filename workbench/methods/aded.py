"""ADED-style adaptive n-gram drafting (Liu et al. 2024, "Adaptive Draft-Verification"), without a draft model.

A tri-gram table (bi-gram context (a, b) -> counts of the next token c) is
learned online from the prompt and from every token the target commits, so it
adapts to the text being written. A draft is a greedy walk: from the last two
tokens take the most frequent next token, while the chain's estimated
probability stays above `threshold`. Each step's estimate is the smoothed
relative frequency count / (total + 1), so a context seen once (1/2) is trusted
less than one seen four times with the same answer (4/5); an unseen tri-gram
context backs off to the bi-gram b -> c table, discounted by `backoff`. With
`branches` = 2 the second most frequent first token becomes a second branch
(a small tree; ADED explores alternatives with MCTS, which is left out here).
With `cost_aware` (the default) the chain is cut to the length whose learned
acceptance pays for verifying it on this hardware (model_free.DraftGate, keyed
by the first token's estimated probability in fifths).

Deterministic proposals, verified by the engine: lossless.
"""
from __future__ import annotations

from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, adaptive_length_param, cost_aware_param, register
from .model_free import DraftBudget, DraftGate, GrowingText, TrieDraft


class NGramTable:
    """Counts of next tokens after bi-gram (and, for back-off, uni-gram) contexts."""

    def __init__(self) -> None:
        self.tri: dict[tuple[int, int], dict[int, int]] = {}
        self.bi: dict[int, dict[int, int]] = {}
        self.tri_total: dict[tuple[int, int], int] = {}
        self.bi_total: dict[int, int] = {}

    def add(self, a: int | None, b: int, c: int) -> None:
        """Count c after b (and after (a, b) when a is known)."""
        row = self.bi.setdefault(b, {})
        row[c] = row.get(c, 0) + 1
        self.bi_total[b] = self.bi_total.get(b, 0) + 1
        if a is not None:
            row = self.tri.setdefault((a, b), {})
            row[c] = row.get(c, 0) + 1
            self.tri_total[(a, b)] = self.tri_total.get((a, b), 0) + 1

    def update(self, tokens: list[int], start: int) -> None:
        """Count every transition into tokens[i] for i >= start (tokens[:start] already counted)."""
        for i in range(max(start, 1), len(tokens)):
            self.add(tokens[i - 2] if i >= 2 else None, tokens[i - 1], tokens[i])

    def ranked(self, a: int, b: int, k: int, backoff: float) -> list[tuple[int, float]]:
        """Up to k (token, confidence) after (a, b), most frequent first; confidence = count / (total + 1)."""
        row, total, scale = self.tri.get((a, b)), self.tri_total.get((a, b), 0), 1.0
        if not row:
            row, total, scale = self.bi.get(b), self.bi_total.get(b, 0), backoff
            if not row or scale <= 0:
                return []
        best = sorted(row.items(), key=lambda kv: -kv[1])[:k]
        return [(tok, scale * n / (total + 1)) for tok, n in best]


@register
class ADED(Drafter):
    name = "aded"
    label = "ADED (adaptive tri-gram)"
    family = "Without a draft model"
    pays_when = ("the text has recurring phrases it can learn as it goes, with no draft model or corpus at "
                 "hand")
    description = ("Learns a tri-gram table online from the prompt and the committed output and drafts the most "
                   "frequent continuation while its estimated probability stays above a threshold. "
                   "No draft model. Lossless.")
    params = (
        Param("num_draft", "int", 10, "at most this many tokens drafted per step", 1, 64),
        Param("threshold", "float", 0.1, "stop drafting when the chain's estimated probability drops below this",
              0.0, 1.0),
        Param("backoff", "float", 0.5, "weight of the bi-gram estimate when the tri-gram context is unseen "
              "(0: tri-grams only)", 0.0, 1.0),
        Param("branches", "int", 1, "1: a chain; 2: a small tree, also the second most frequent first token",
              1, 2),
        adaptive_length_param(),
        cost_aware_param("draft only as many tokens", per="estimated probability of the first token"),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.table = NGramTable()
        self.text = GrowingText()
        self.budget = DraftBudget(self.params["num_draft"], self.params["adaptive"])
        self.gate = DraftGate.for_run(self.env, self.params["num_draft"], self.params["cost_aware"],
                                      prior=lambda fifth: (fifth + 0.5) / 5)  # its own probability estimate
        self.kind = 0  # the gate's key of the pending draft: the first token's estimated probability, in fifths
        self._sync(list(prompt_ids))

    def _sync(self, tokens: list[int]) -> None:
        n = len(self.text.tokens)
        if self.text.sync(tokens) is None:  # rewound: relearn from the new context
            self.table, n = NGramTable(), 0
        self.table.update(self.text.tokens, n)

    def _walk(self, a: int, b: int, first: int | None, conf: float, k: int) -> list[int]:
        """Greedy chain after (a, b): `first` (given with confidence conf) or the best token, then the best."""
        out: list[int] = []
        if first is not None:
            out.append(first)
            a, b = b, first
        while len(out) < k:
            ranked = self.table.ranked(a, b, 1, self.params["backoff"])
            if not ranked or conf * ranked[0][1] < self.params["threshold"]:
                break
            tok, p = ranked[0]
            conf *= p
            out.append(tok)
            a, b = b, tok
        return out

    def propose(self, ctx: DraftContext) -> Draft | None:
        k = min(self.budget.cap, ctx.max_tokens)
        if k <= 0 or len(ctx.tokens) < 2:
            return None
        self._sync(ctx.tokens)
        a, b = ctx.tokens[-2], ctx.tokens[-1]
        firsts = [(t, p) for t, p in self.table.ranked(a, b, self.params["branches"], self.params["backoff"])
                  if p >= self.params["threshold"]]
        if not firsts:
            return None
        self.kind = min(4, int(firsts[0][1] * 5))
        chain = self._walk(a, b, firsts[0][0], firsts[0][1], k)
        k = self.gate.length(self.kind, len(chain))
        if k <= 0:
            return None
        trie = TrieDraft()
        trie.add_path(chain[:k])
        for tok, p in firsts[1:]:
            trie.add_path(self._walk(a, b, tok, p, max(1, k // 2)))
        return trie.draft()

    def observe(self, fb: StepFeedback) -> None:
        if fb.draft is not None:
            self.budget.update(max(fb.draft.depths), len(fb.accepted))
            self.gate.update(self.kind, max(fb.draft.depths), len(fb.accepted))
