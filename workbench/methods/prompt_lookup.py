"""Prompt lookup decoding (Saxena 2023): draft by copying what followed the last n-gram before.

The suffix n-gram of the context (n from max_ngram down to min_ngram) is looked
up among earlier positions of prompt + generated text; the tokens that followed
its most recent earlier occurrence become a chain draft. No draft model, so it
shines when the output quotes the input (summarisation, editing, RAG).

With `cost_aware` (the default) a match is drafted only as deep as it pays on
this hardware: the acceptance of the positions of a copied chain is learned
per matched n-gram length, and weighed against the target's measured cost of
verifying that many tokens (model_free.DraftGate). Where copying rarely works
(open-ended answers) that is a plain step, not a costly 10-token miss.

The n-gram index is built incrementally: each step indexes only the tokens
committed since the last one, O(max_ngram) work per new token; the lookup is
O(max_ngram) too. The context only grows, so there is nothing to rescan.
"""
from __future__ import annotations

from typing import Any

from ..config import ConfigError
from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, cost_aware_param, register
from .model_free import DraftGate


@register
class PromptLookup(Drafter):
    name = "prompt_lookup"
    label = "Prompt lookup (n-gram)"
    family = "Without a draft model"
    pays_when = ("the output copies the prompt (summaries, RAG answers, edits, code): drafting costs next to "
                 "nothing")
    description = "Copies the continuation of the latest earlier match of the last n tokens. No draft model. Lossless."
    params = (
        Param("max_ngram", "int", 3, "longest suffix n-gram to look up", 1, 16),
        Param("min_ngram", "int", 1, "shortest suffix n-gram to look up", 1, 16),
        Param("num_draft", "int", 10, "at most this many tokens copied per step", 1, 64),
        cost_aware_param("copy only as many tokens", extra="; false: always num_draft"),
    )

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        if params["min_ngram"] > params["max_ngram"]:
            raise ConfigError(f"prompt_lookup: min_ngram ({params['min_ngram']}) must not exceed max_ngram "
                              f"({params['max_ngram']}); it would never draft")

    def begin(self, prompt_ids: list[int]) -> None:
        self._reset_index()
        self.gate = DraftGate.for_run(self.env, self.params["num_draft"], self.params["cost_aware"],
                                      prior=lambda n: n / (n + 1))  # a longer n-gram, a safer copy
        self.drafted_n = 0  # n-gram length of the pending draft's match

    def _reset_index(self) -> None:
        # index[n][ngram] = position right after the ngram's most recent occurrence
        self.index: list[dict[tuple[int, ...], int]] = [dict() for _ in range(self.params["max_ngram"] + 1)]
        self.indexed = 0  # n-grams ending before this position are indexed
        self.last: int | None = None  # tokens[indexed - 1] when last indexed, to notice a rewound context

    def index_context(self, tokens: list[int]) -> None:
        """Index the committed context (call once per step, before `match`)."""
        self._extend_index(tokens)

    def _extend_index(self, tokens: list[int]) -> None:
        if len(tokens) < self.indexed or (self.indexed and tokens[self.indexed - 1] != self.last):
            self._reset_index()  # another context than the one indexed (e.g. staged's draft branches): rebuild
        # index n-grams tokens[end-n:end] for end < len(tokens): each has a continuation tokens[end]
        for end in range(max(self.indexed, 1), len(tokens)):
            for n in range(self.params["min_ngram"], self.params["max_ngram"] + 1):
                if end - n >= 0:
                    self.index[n][tuple(tokens[end - n:end])] = end
        self.indexed = len(tokens)
        self.last = tokens[-1] if tokens else None

    def propose(self, ctx: DraftContext) -> Draft | None:
        budget = min(self.params["num_draft"], ctx.max_tokens)
        if budget <= 0:
            return None
        self._extend_index(ctx.tokens)
        n, cont = self.lookup(ctx.tokens, budget)
        cont = cont[: self.gate.length(n, len(cont))] if cont else cont
        self.drafted_n = n
        return Draft.chain(cont) if cont else None

    def observe(self, fb: StepFeedback) -> None:
        if fb.draft is not None:
            self.gate.update(self.drafted_n, len(fb.draft), len(fb.accepted))

    def match(self, tokens: list[int], budget: int) -> list[int]:
        """The continuation `lookup` finds (no gating: for callers that check it themselves)."""
        return self.lookup(tokens, budget)[1]

    def lookup(self, tokens: list[int], budget: int) -> tuple[int, list[int]]:
        """(n, continuation): what followed the latest indexed occurrence of the longest matching suffix
        n-gram of `tokens` (its length n; (0, []) without a match).

        `tokens` may run past the indexed context (a drafter's own provisional tokens): its suffix is
        looked up, and the continuation read from `tokens`, but nothing past the index is indexed.
        """
        for n in range(min(self.params["max_ngram"], len(tokens) - 1), self.params["min_ngram"] - 1, -1):
            start = self.index[n].get(tuple(tokens[-n:]))
            if start is not None and start < len(tokens):
                return n, list(tokens[start:start + budget])
        return 0, []
