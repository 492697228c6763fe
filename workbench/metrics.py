"""Every decoding metric, defined once: τ, α, α_k, γ, c, verify cost ratio, theoretical speedup.

The trace summary, the benchmark report, the app and the notebooks all call these.
Steps are ``workbench.trace.Step`` objects (or anything with the same fields);
no torch import.

- τ (mean accepted tokens per target forward) counts the bonus/corrected token,
  so plain decoding scores 1.0 (Spec-Bench, vLLM); τ − 1 is gpt-fast's convention.
- α = accepted draft positions / attempted ones. A step attempts each accepted
  position plus the one whose rejection ended it (none when its deepest path was
  accepted whole). α_k is the same per draft position k, conditional on reaching k.
- γ = mean draft length (deepest path) over decode steps, empty drafts included.
- c = draft time per drafted token / target time of one plain-decoding forward.
- verify × = target time per verification step / one plain forward: what a
  (γ+1)-token verification really costs (Leviathan's formula assumes 1.0).
- theoretical speedup (Leviathan et al. 2023) = (1 − α^(γ+1)) / ((1 − α)(γc + 1)).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol


class Step(Protocol):
    """The fields of a step these metrics read (workbench.trace.Step has them; this module needs no more)."""

    kind: str  # "prefill" | "decode"
    tokens: list[int]  # the draft's nodes
    draft_s: float
    verify_s: float

    @property
    def n_draft(self) -> int: ...

    @property
    def n_accepted(self) -> int: ...

    @property
    def draft_depth(self) -> int: ...

NAN = float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b else NAN


def tau(new_tokens: int, forwards: int) -> float:
    """Mean tokens committed per target forward, bonus token included."""
    return _ratio(new_tokens, forwards)


def tau_without_bonus(new_tokens: int, forwards: int) -> float:
    """τ − 1: accepted draft tokens per target forward."""
    return _ratio(new_tokens - forwards, forwards)


def decode_steps(steps: Iterable[Step]) -> list[Step]:
    return [s for s in steps if s.kind == "decode"]


def attempts(step: Step) -> int:
    """Draft positions the step attempted: the accepted ones and the rejection that ended it."""
    return step.n_accepted + (1 if step.n_accepted < step.draft_depth else 0)


def acceptance_rate(steps: Iterable[Step]) -> float:
    """α over decode steps that drafted (NaN when nothing was drafted)."""
    drafted = [s for s in decode_steps(steps) if s.tokens]
    return _ratio(sum(s.n_accepted for s in drafted), sum(attempts(s) for s in drafted))


def acceptance_by_position(steps: Iterable[Step]) -> list[float]:
    """α_k = P(draft position k accepted | positions < k accepted and a draft node exists at depth k)."""
    reached: list[int] = []
    accepted: list[int] = []
    for s in decode_steps(steps):
        if not s.tokens:
            continue
        for k in range(min(s.draft_depth, s.n_accepted + 1)):
            while len(reached) <= k:
                reached.append(0)
                accepted.append(0)
            reached[k] += 1
            if k < s.n_accepted:
                accepted[k] += 1
    return [a / r if r else NAN for a, r in zip(accepted, reached)]


def mean_draft_length(steps: Iterable[Step]) -> float:
    """γ: mean deepest-path length over decode steps, empty drafts included (0 with no decode step)."""
    decode = decode_steps(steps)
    return sum(s.draft_depth for s in decode) / len(decode) if decode else 0.0


def plain_forward_s(plain_steps: Iterable[Step]) -> float:
    """Mean target time of one plain-decoding decode step (the prefill excluded)."""
    decode = decode_steps(plain_steps)
    return _ratio(sum(s.verify_s for s in decode), len(decode))


def cost_ratio(steps: Sequence[Step], t_plain: float) -> float:
    """c: draft time per drafted token / one plain target forward."""
    decode = decode_steps(steps)
    drafted = sum(s.n_draft for s in decode)
    if not drafted or not (t_plain == t_plain and t_plain > 0):
        return NAN
    return sum(s.draft_s for s in decode) / drafted / t_plain


def verify_cost_ratio(steps: Sequence[Step], t_plain: float) -> float:
    """verify ×: the mean target time of a verification step / one plain target forward."""
    decode = decode_steps(steps)
    if not decode or not (t_plain == t_plain and t_plain > 0):
        return NAN
    return sum(s.verify_s for s in decode) / len(decode) / t_plain


def theoretical_speedup(alpha: float, gamma: float, c: float) -> float:
    """Leviathan et al. (2023), expected walltime improvement of a chain draft:
    (1 - α^(γ+1)) / ((1 - α)(γc + 1)), with c = draft cost / target cost per token."""
    if gamma <= 0:
        return 1.0
    if alpha >= 1.0:
        return (gamma + 1) / (gamma * c + 1)
    return (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))
