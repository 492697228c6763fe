"""Every decoding metric, defined once: τ, α, α_k, γ, c, verify cost ratio, theoretical speedup.

The trace summary, the benchmark report, the app, the CLI and the notebooks all call these.
Steps are ``workbench.trace.Step`` objects (or anything with the same fields);
no torch import.

- τ (mean accepted tokens per target forward) counts the bonus/corrected token,
  so plain decoding scores 1.0 (Spec-Bench, vLLM); τ − 1 is gpt-fast's convention.
- α, *path acceptance* = accepted draft tokens / drafted positions on the verified
  path. Per step, the verifier walks one path from the root: every accepted node,
  then (when the last accepted node, or the root, has children) the position whose
  rejection ended the walk; summed over steps. A chain accepted whole, or a tree
  path that ends at a leaf, has no rejected position. α_k is the same per draft
  position k, conditional on reaching k.
- *node acceptance* = accepted draft tokens / all drafted nodes (every node of every
  tree, siblings that lost and nodes below a rejection included). It says how much
  drafting was spent on tokens that were kept; never above α.
- γ = mean draft length (deepest path) over decode steps, empty drafts included.
- c = draft time per drafted token / target time of one plain-decoding forward.
- verify × = target time per verification step / one plain forward: what a
  (γ+1)-token verification really costs (Leviathan's formula assumes 1.0).
- theoretical speedup (Leviathan et al. 2023) = (1 − α^(γ+1)) / ((1 − α)(γc + 1)).
- predicted speedup (workbench.advisor, docs/advisor.md): tokens per step from α_k by draft depth
  (`acceptance_by_depth`, `expected_tokens_per_step`), a step's cost from the measured draft cost and
  the machine's cost profile (`predicted_speedup`); the ceiling a perfect drafter reaches on a profile
  (`verification_ceiling`).
- decode rate (`decode_tokens_per_s`): the tokens committed after the first step (the prompt's forward)
  over the time after it; what a decode loop sustains once the prompt is read (llama.cpp's "eval"
  rate), the figure the memory-bandwidth roofline bounds. tokens/s counts the prompt's forward in.
- speedup over repeats (`speedup_spread`): median tokens/s of the runs / median of the baseline's
  runs, with the widest range these runs allow; run-to-run variation (`run_to_run_variation`): how far
  a single run's tokens/s lies from the median of its repeats, typically and at most.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Step(Protocol):
    """The fields of a step these metrics read (workbench.trace.Step has them; this module needs no more)."""

    kind: str  # "prefill" | "decode"
    tokens: list[int]  # the draft's nodes
    parents: list[int]  # each node's parent (-1: the root)
    accepted: list[int]  # node indices of the accepted path, root first
    draft_s: float
    verify_s: float
    committed: list[int]  # the tokens the step appended
    t_end: float  # seconds since the run started, when the step was committed

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


def rejected_on_path(step: Step) -> bool:
    """Whether the verifier rejected a drafted position on the step's path: the last accepted node (the
    root when none was accepted) has children in the draft, and none of them was accepted."""
    last = step.accepted[-1] if step.accepted else -1
    return bool(step.tokens) and any(p == last for p in step.parents)


def path_positions(step: Step) -> int:
    """Drafted positions on the verified path: the accepted ones and the rejection that ended the walk."""
    return step.n_accepted + (1 if rejected_on_path(step) else 0)


attempts = path_positions  # the older name


@dataclass(frozen=True)
class Acceptance:
    """The two acceptance figures of some steps, with the counts they are made of.

    accepted: accepted draft tokens; path_positions: drafted positions on the verified path
    (`path_positions` per step, summed); drafted_nodes: every drafted node. Only decode steps count.
    """

    accepted: int
    path_positions: int
    drafted_nodes: int

    @property
    def path_rate(self) -> float:
        """α, path acceptance: accepted / drafted positions on the verified path (NaN when nothing was drafted)."""
        return _ratio(self.accepted, self.path_positions)

    @property
    def node_rate(self) -> float:
        """Node acceptance: accepted / all drafted nodes (NaN when nothing was drafted)."""
        return _ratio(self.accepted, self.drafted_nodes)

    def path_caption(self) -> str:
        """What α is made of, in the words the app, the CLI and the reports use."""
        return f"{self.accepted} / {self.path_positions} drafted positions on the verified path accepted"

    def node_caption(self) -> str:
        """What node acceptance is made of, in the same words everywhere."""
        return f"{self.accepted} / {self.drafted_nodes} drafted tree nodes accepted"


# The names the two acceptance figures go by wherever they are shown (app, CLI, reports, docs/metrics.md).
PATH_ACCEPTANCE = "path acceptance α"
NODE_ACCEPTANCE = "node acceptance"


def acceptance(steps: Iterable[Step]) -> Acceptance:
    """Accepted tokens, path positions and drafted nodes over the decode steps (what α and node acceptance
    are computed from; the app's acceptance card, `workbench runs show` and the reports show these counts)."""
    decode = decode_steps(steps)
    return Acceptance(accepted=sum(s.n_accepted for s in decode),
                      path_positions=sum(path_positions(s) for s in decode),
                      drafted_nodes=sum(s.n_draft for s in decode))


def acceptance_rate(steps: Iterable[Step]) -> float:
    """α, path acceptance, over the decode steps (NaN when nothing was drafted)."""
    return acceptance(steps).path_rate


def node_acceptance_rate(steps: Iterable[Step]) -> float:
    """Node acceptance over the decode steps: accepted / all drafted nodes (NaN when nothing was drafted)."""
    return acceptance(steps).node_rate


def acceptance_by_position(steps: Iterable[Step]) -> list[float]:
    """α_k = P(draft position k accepted | positions < k accepted and a drafted node under them at depth k)."""
    reached: list[int] = []
    accepted: list[int] = []
    for s in decode_steps(steps):
        for k in range(path_positions(s)):
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


def decode_tokens_per_s(steps: Sequence[Step], wall_s: float) -> float:
    """Tokens committed after the first step / seconds after it (NaN for a run of one step)."""
    if len(steps) < 2:
        return NAN
    return _ratio(sum(len(s.committed) for s in steps[1:]), wall_s - steps[0].t_end)


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


@dataclass(frozen=True)
class SpeedupSpread:
    """A speedup measured over repeats: `median` = median tokens/s of the method's runs / median tokens/s of
    the baseline's runs; `low`..`high` the widest it could be from these runs (slowest run / fastest baseline
    .. fastest run / slowest baseline)."""

    median: float
    low: float
    high: float
    n_runs: int
    n_baselines: int


def speedup_spread(run_tps: Sequence[float], baseline_tps: Sequence[float]) -> SpeedupSpread | None:
    """The speedup over repeats of a run and of its baseline (None without a measured tokens/s on each side)."""
    runs = [x for x in run_tps if x == x and x > 0]
    bases = [x for x in baseline_tps if x == x and x > 0]
    if not runs or not bases:
        return None
    return SpeedupSpread(median=statistics.median(runs) / statistics.median(bases), low=min(runs) / max(bases),
                         high=max(runs) / min(bases), n_runs=len(runs), n_baselines=len(bases))


@dataclass(frozen=True)
class Variation:
    """How much a single run's tokens/s varies on a machine, from repeats of the same measurement.

    Each run's deviation is |its tokens/s − its group's median| / that median; `typical` is the median
    deviation over every run of every group, `largest` the largest; `groups` and `runs` say how much was seen.
    """

    typical: float
    largest: float
    groups: int
    runs: int


def run_to_run_variation(groups: Iterable[Sequence[float]]) -> Variation | None:
    """Variation of single runs from groups of repeated runs' tokens/s (None without a group of two or more)."""
    devs: list[float] = []
    n_groups = 0
    for group in groups:
        tps = [x for x in group if x == x and x > 0]
        if len(tps) < 2:
            continue
        mid = statistics.median(tps)
        devs += [abs(x - mid) / mid for x in tps]
        n_groups += 1
    if not devs:
        return None
    return Variation(typical=statistics.median(devs), largest=max(devs), groups=n_groups, runs=len(devs))


# ---------------------------------------------------------------- predicted speedups (workbench.advisor)


def expected_tokens_per_step(alphas: Sequence[float], depth: int) -> float:
    """E[tokens one step commits] when it drafts `depth` positions deep and draft position k is accepted with
    probability α_k once the positions before it were (α_k conditional, as `acceptance_by_position`):

        E = 1 + Σ_{k=1..depth} Π_{i≤k} α_i

    (the 1 is the bonus/correction token). A position no step reached (no α measured) counts as rejected."""
    total, reach = 1.0, 1.0
    for k in range(depth):
        a = alphas[k] if k < len(alphas) else 0.0
        reach *= a if a == a else 0.0  # NaN: never reached
        if reach <= 0.0:
            break
        total += reach
    return total


def acceptance_by_depth(steps: Iterable[Step]) -> list[float]:
    """α_k as a chain as deep as the step's draft sees it: P(draft position k accepted | positions < k
    accepted and the step drafted k or more deep), whether or not the accepted path had a node at depth k
    (a tree path that ends at a leaf above the tree's depth counts as rejected there). For chains it is
    `acceptance_by_position`; for any draft, 1 + Σ_{k≤d} Π_{j≤k} α_j over steps of depth d is their mean
    tokens per step (`expected_tokens_per_step`)."""
    reached: list[int] = []
    accepted: list[int] = []
    for s in decode_steps(steps):
        for k in range(min(s.draft_depth, s.n_accepted + 1)):
            while len(reached) <= k:
                reached.append(0)
                accepted.append(0)
            reached[k] += 1
            accepted[k] += k < s.n_accepted
    return [a / r if r else NAN for a, r in zip(accepted, reached)]


def verification_ceiling(profile: dict[int, float]) -> tuple[int, float]:
    """The speedup a perfect drafter (free and always right) gives on a machine of this cost profile
    ({n: seconds of one forward over n new tokens}): a step drafting k tokens commits k + 1 for one forward
    over k + 1, so the ceiling is max over k of (k + 1) t(1) / t(k + 1) -> (that k, the speedup).

    Over the profile's measured sizes: between two of them t(n) is a straight line, on which n / t(n) only
    rises or only falls, so no size in between does better."""
    one = profile[min(profile)]
    best_k, best = 0, 1.0
    for n in sorted(profile):
        value = n * one / profile[n]
        if value > best:
            best_k, best = n - 1, value
    return best_k, best


def predicted_speedup(new_tokens: int, tokens_per_step: float, step_cost: float, fixed_cost: float,
                      plain_step_cost: float, plain_fixed_cost: float) -> float:
    """Plain decoding's time for `new_tokens` over a method's, each a fixed cost (the prefill, which also
    yields the first token, and whatever a method pays once per prompt) plus its decode steps:

        speedup = (F0 + (N − 1) C0) / (F + (N − 1) C / E)

    C0 / C: one plain step / one step of the method (draft + verification + the engine's own work),
    E: tokens per step of the method (`expected_tokens_per_step`), any unit of time for the costs."""
    steps = max(new_tokens - 1, 0)
    method = fixed_cost + steps * step_cost / tokens_per_step
    return (plain_fixed_cost + steps * plain_step_cost) / method if method > 0 else NAN
