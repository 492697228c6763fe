"""Jacobi decoding (Santilli et al. 2023; Song et al. 2021): fixed-point iteration over a window of guesses.

Greedy decoding is the fixed point of y_i = argmax p(y_i | prefix, y_<i) for
every position i of a window. Each step the current guess window (`window`
tokens after the context) is the draft, as a chain; the engine verifies it in
one target forward, which also is one Jacobi iteration: the target's argmax at
row r is its prediction for the position after row r given the guesses before
it. The accepted prefix plus the bonus token are committed (exactly the
positions that have converged), and the rest of the window becomes the
target's predictions at the remaining positions:

    next guess at offset o (from the new root) = argmax of row (committed + o - 1)

which needs the argmax of every row of the verification forward: the drafter
sets `wants_target_argmax` and the engine calls `observe_target(argmax_rows,
draft)`. Freed slots at the end of the window are filled with a prompt-lookup
guess (the continuation of the longest earlier suffix match, from a suffix
automaton of the context) or, without a match, the last guess repeated.

With `adaptive` only the first `cap` guesses are verified (and so refined)
each step: cap drops to accepted + 1 after a miss and doubles after a fully
accepted window, so where Jacobi iteration converges no faster than
plain decoding (most real text) a step costs about a plain step; the
unverified tail keeps its guesses. With `cost_aware` (the default) the
verified part is further cut to what the learned acceptance of guesses pays
for on this hardware (model_free.DraftGate); on a CPU, where a wider forward
costs more and real text rarely converges, that is usually a plain step, with
a one-token probe now and then.

No new Trace fields: each step's draft is the guess window of that iteration
and its accepted prefix is what converged, so the Trace (and the app's draft
view) already shows the iteration. Verification is the engine's, so the method
is lossless; under sampling the guesses are still greedy predictions, only
used as deterministic proposals.
"""
from __future__ import annotations

from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, cost_aware_param, register
from .model_free import DraftBudget, DraftGate, GrowingText
from .suffix_automaton import SuffixAutomaton


class GuessFiller:
    """Prompt-lookup guesses for the positions after the context (or the last token repeated)."""

    def __init__(self) -> None:
        self.text = GrowingText()
        self.sam = SuffixAutomaton()

    def sync(self, tokens: list[int]) -> None:
        new = self.text.sync(tokens)
        if new is None:
            self.sam, new = SuffixAutomaton(), self.text.tokens
        for tok in new:
            self.sam.extend(tok)

    def guesses(self, k: int) -> list[int]:
        """k guesses for the k positions after the synced context."""
        n, end = self.sam.earlier_match()
        out = self.sam.continuation(end, k) if n else []
        last = out[-1] if out else self.text.tokens[-1]
        return out + [last] * (k - len(out))


@register
class Jacobi(Drafter):
    name = "jacobi"
    label = "Jacobi decoding (fixed-point iteration)"
    family = "Without a draft model"
    pays_when = ("the target's own guesses converge in a few iterations, which is rare on real text; it shows "
                 "fixed-point iteration at work")
    description = ("Verifies a window of guessed tokens each step and refines the unconverged part with the "
                   "target's own predictions from the same forward (Jacobi iteration). No draft model. Lossless.")
    wants_target_argmax = True
    params = (
        Param("window", "int", 4, "guessed tokens per step (the Jacobi window)", 1, 64),
        Param("init", "choice", "lookup", "guesses for new window slots: prompt-lookup continuation (or the "
              "last token) / always the last token repeated", choices=("lookup", "repeat")),
        Param("adaptive", "bool", True, "verify only the first part of the window while little converges "
              "(shrinks after a miss, doubles after a full accept); the rest keeps iterating"),
        cost_aware_param("verify only as many guesses"),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.filler = GuessFiller()
        self.guess: list[int] = []  # guesses for the positions after `self.after` tokens
        self.after = -1
        self.rows: list[int] = []
        self.budget = DraftBudget(self.params["window"], self.params["adaptive"])
        self.gate = DraftGate.for_run(self.env, self.params["window"], self.params["cost_aware"])

    def _fill(self, tokens: list[int], have: list[int]) -> list[int]:
        k = self.params["window"] - len(have)
        if k <= 0:
            return have[: self.params["window"]]
        if self.params["init"] == "repeat":
            last = have[-1] if have else tokens[-1]
            return have + [last] * k
        self.filler.sync(tokens)
        return have + self.filler.guesses(len(have) + k)[len(have):]

    def propose(self, ctx: DraftContext) -> Draft | None:
        k = min(self.budget.cap, ctx.max_tokens)
        if k <= 0:
            return None
        if self.after != len(ctx.tokens):  # first step, or a context we did not follow: start over
            self.guess = []
        self.guess = self._fill(ctx.tokens, self.guess)
        self.after = len(ctx.tokens)
        k = self.gate.length("guess", k)
        return Draft.chain(self.guess[:k]) if k else None

    def observe_target(self, argmax_rows: list[int], draft: Draft | None) -> None:
        self.rows = argmax_rows

    def observe(self, fb: StepFeedback) -> None:
        # row r predicts the token at offset r + 1 from the old root; the new root is at offset c.
        # Positions past the verified part of the window keep their guesses (shifted).
        n = len(fb.draft) if fb.draft is not None else 0
        c = len(fb.committed)
        self.guess = self.rows[c:] + self.guess[n + 1:]
        self.after = len(fb.tokens)
        self.budget.update(n, len(fb.accepted))
        self.gate.update("guess", n, len(fb.accepted))
