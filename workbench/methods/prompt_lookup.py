"""Prompt lookup decoding (Saxena 2023): draft by copying what followed the last n-gram before.

The suffix n-gram of the context (n from max_ngram down to min_ngram) is looked
up among earlier positions of prompt + generated text; the tokens that followed
its most recent earlier occurrence become a chain draft. No draft model, so it
shines when the output quotes the input (summarisation, editing, RAG).

The n-gram index is built incrementally: O(max_ngram) work per new token.
"""
from __future__ import annotations

from ..tree import Draft
from .base import DraftContext, Drafter, Param, register


@register
class PromptLookup(Drafter):
    name = "prompt_lookup"
    label = "Prompt lookup (n-gram)"
    description = "Copies the continuation of the latest earlier match of the last n tokens. No draft model. Lossless."
    params = (
        Param("max_ngram", "int", 3, "longest suffix n-gram to look up", 1, 16),
        Param("min_ngram", "int", 1, "shortest suffix n-gram to look up", 1, 16),
        Param("num_draft", "int", 10, "at most this many tokens copied per step", 1, 64),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        # index[n][ngram] = position right after the ngram's most recent occurrence
        self.index: list[dict[tuple[int, ...], int]] = [dict() for _ in range(self.p["max_ngram"] + 1)]
        self.indexed = 0  # n-grams ending before this position are indexed
        self.seen: list[int] = []  # the tokens the index was built from

    def _extend_index(self, tokens: list[int]) -> None:
        if tokens[: len(self.seen)] != self.seen:  # the context was rewound (e.g. staged drafts): rebuild
            self.begin([])
        # index n-grams tokens[end-n:end] for end < len(tokens): each has a continuation tokens[end]
        for end in range(max(self.indexed, 1), len(tokens)):
            for n in range(self.p["min_ngram"], self.p["max_ngram"] + 1):
                if end - n >= 0:
                    self.index[n][tuple(tokens[end - n:end])] = end
        self.indexed = len(tokens)
        self.seen = list(tokens)

    def propose(self, ctx: DraftContext) -> Draft | None:
        budget = min(self.p["num_draft"], ctx.max_tokens)
        if budget <= 0:
            return None
        tokens = ctx.tokens
        # n-grams ending at len(tokens) - 1 or earlier: every occurrence except the suffix itself
        self._extend_index(tokens)
        for n in range(min(self.p["max_ngram"], len(tokens) - 1), self.p["min_ngram"] - 1, -1):
            start = self.index[n].get(tuple(tokens[-n:]))
            if start is not None:
                cont = tokens[start:start + budget]
                if cont:
                    return Draft.chain(cont)
        return None
