"""Why a cost-aware drafter took a plain step, told to the run (a note on its Trace).

Cost-aware sizing may find that no draft pays on this machine and propose nothing:
model_free.DraftGate (speculative gamma=0, the copy drafters' cost_aware, lookahead's
copied chain), top_k_trees.TreeBudget (sizing=cost: tree_dynamic, eagle, medusa, hydra),
sequoia's plan and layer_skip's skip=auto. Each then tells the run's SizingLog
(DrafterEnv.sizing) why, with the numbers that drove it: "verifying 2 tokens measured
3.6x one token here, so drafting cannot pay" (no draft could pay even if every drafted
token were accepted: kind "cost"), or what the acceptance learned so far was worth
against that cost (kind "acceptance").

The engine ends every decode step with `step(drafted)`: a reason given during a step
that ended without a draft counts for that step (a reason followed by a draft anyway,
e.g. lookahead drafting its window without the copied chain, does not). When such steps
are at least NOTE_SHARE of a run's decode steps, `note` is the run's note (kind
"no_draft"), which the app's status line and cards and `workbench run` show: the run's
speed is then plain decoding's, not the method's.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

NOTE_SHARE = 0.5  # plain steps by a sizing decision, of all decode steps, from which a run says so


class SizingLog:
    """The reasons a run's cost-aware sizing gave for plain steps, counted per kind (the latest text kept)."""

    def __init__(self) -> None:
        self.pending: tuple[str, str] | None = None
        self.counts: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}

    def decline(self, kind: str, reason: str) -> None:
        """This step's sizing chose no draft: kind "cost" or "acceptance", reason one clause with its numbers."""
        self.pending = (kind, reason)

    def step(self, drafted: bool) -> None:
        """The engine, after each proposal: count a pending reason when the step has no draft."""
        if self.pending is not None and not drafted:
            kind, reason = self.pending
            self.counts[kind] += 1
            self.reasons[kind] = reason
        self.pending = None

    @property
    def plain_steps(self) -> int:
        return sum(self.counts.values())

    def note(self, decode_steps: int) -> dict[str, Any] | None:
        """The run's "no_draft" note when at least NOTE_SHARE of its `decode_steps` were plain by a sizing
        decision (None otherwise): {kind, steps, of, reason, text}, the most frequent kind's latest reason."""
        plain = self.plain_steps
        if not plain or plain < NOTE_SHARE * decode_steps:
            return None
        reason = self.reasons[self.counts.most_common(1)[0][0]]
        steps = "every step" if plain >= decode_steps else f"{plain} of {decode_steps} steps"
        return {"kind": "no_draft", "steps": plain, "of": decode_steps, "reason": reason,
                "text": f"cost-aware sizing chose not to draft in {steps}: {reason} (so this run's speed is "
                        "plain decoding's, not the method's)"}


def verify_cost(ratios: list[float], k: int = 1) -> str:
    """'verifying 2 tokens measured 3.6x one token here' (ratios[k] = t(k + 1) / t(1))."""
    return f"verifying {k + 1} tokens measured {ratios[k]:.1f}x one token here"


def chain_reason(ratios: list[float], totals: list[float], available: int, draft_cost: float,
                 margin: float) -> tuple[str, str]:
    """Why no chain of 1..available tokens was worth drafting: k tokens cost r(k) + k c one-token forwards for
    totals[k] expected tokens, against 1 + margin for a plain step (model_free.DraftGate)."""
    def cost(k: int) -> float:
        return ratios[k] + k * draft_cost

    head = verify_cost(ratios) + (f" and drafting one costs {draft_cost:.2f}x" if draft_cost else "")
    if all((k + 1) / cost(k) <= 1 + margin for k in range(1, available + 1)):
        return "cost", f"{head}, so drafting cannot pay"
    k = max(range(1, available + 1), key=lambda k: totals[k] / cost(k))
    return "acceptance", (f"{head}; at the acceptance learned so far a {k}-token draft was expected to commit "
                          f"{totals[k]:.2f} tokens for {cost(k):.1f}x the cost of one, which does not pay")


def tree_reason(ratios: list[float], expected: list[float], draft_x: float, margin: float) -> tuple[str, str]:
    """Why none of a drafted tree's nodes was worth verifying: n nodes cost r(n) + D one-token forwards (D the
    drafting just done) for expected[n] tokens, against (1 + margin) / (1 + D) (top_k_trees.TreeBudget)."""
    most = len(expected) - 1
    head = verify_cost(ratios) + (f" and drafting the tree took {draft_x:.1f}x" if draft_x >= 0.05 else "")
    bar = (1 + margin) / (1 + draft_x)
    if all((1 + n) / (ratios[n] + draft_x) <= bar for n in range(1, most + 1)):
        return "cost", f"{head}, so drafting cannot pay"
    n = max(range(1, most + 1), key=lambda n: expected[n] / (ratios[n] + draft_x))
    return "acceptance", (f"{head}; the tree's best {n} node{'s' * (n != 1)} were expected to commit "
                          f"{expected[n]:.2f} tokens for {ratios[n] + draft_x:.1f}x the cost of one, "
                          "which does not pay")
