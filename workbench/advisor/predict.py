"""A configuration's predicted speedup from its probe runs and a machine's cost curve, with an interval.

What the probe measures for one configuration, on this machine (per prompt, so it can be resampled):
- each decode step's draft depth d_i and node count n_i (how deep and how big it verified);
- α_k, the acceptance of draft position k given the positions before it were accepted
  (workbench.metrics.acceptance_by_depth), for each draft depth d the configuration used: α_k^(d).
  Pooled over depths it is the α_k shown; kept apart, because a drafter that sizes its drafts drafts
  deep exactly where it is confident, so one pooled α_k would mix confident and unsure steps;
- seconds per decode step spent drafting (draft_s) and in the engine's own work (other_s: observe,
  bookkeeping), and once per prompt the fixed cost: the prefill (which also yields the first token)
  and a draft model's prompt pass (the excess of the first step's drafting over a typical step's);
- for the plain baseline on the same prompts: u, the verification time of one plain step (one forward
  over one token, here, at these contexts), its other_s and its prefill.

The machine's cost profile t(n) (workbench.backend.profile: one forward over n tokens) comes in as
ratios r(n) = t(n) / t(1). Everything is counted in units of u, one plain forward here:

    E  = mean_i [1 + Σ_{k≤d_i} Π_{j≤k} α_j^(d_i)]    tokens a step commits (metrics.expected_tokens_per_step;
                                                     for a chain of fixed γ: 1 + Σ_{k≤γ} Π_{j≤k} α_j)
    C  = c + mean_i r(n_i + 1) + o                   a step's cost: drafting c = draft_s / u, verifying
                                                     root + n_i nodes, the engine's work o = other_s / u
    C0 = 1 + o0                                      a plain step (r(1) = 1)
    speedup = (F0 + (N − 1) C0) / (F + (N − 1) C / E)   for N new tokens (metrics.predicted_speedup)

with F0 the plain prefill / u and F = F0 + the configuration's extra fixed cost / u.

On another machine (a what-if profile, or "flat": t(n) = t(1), a GPU's shape) only r changes, and the
prefill with it (F0 scaled by r'(P) / r(P) for a P-token prompt): α_k, d_i and n_i describe the
drafter and the text, not the hardware (a draft token is accepted when it equals the target's token,
whatever computed them), and drafting and the engine's work are assumed to keep their ratio to the
target's forward. Configurations that size their drafts by cost (cost_aware, sizing=cost, gamma=0) keep
the sizes they chose here, so their what-if figures are conservative.

The interval: the prediction is recomputed on B bootstrap resamples of the probe prompts (pairing each
configuration's run with the baseline's run on the same prompt), or of the decode steps when fewer than
MIN_PROMPTS prompts were probed; the interval is the middle LEVEL of those predictions.
No torch import.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from .. import metrics as M
from ..trace import Step

Ratios = Callable[[int], float]  # n -> t(n) / t(1)
BOOTSTRAP = 200
LEVEL = 0.9
MIN_PROMPTS = 3
SEED = 0


@dataclass
class Sample:
    """One probe run: a configuration (or the baseline) on one prompt."""

    prompt: str  # the prompt's key (question.turn)
    category: str
    steps: list[Step]  # its decode steps
    prefill_s: float  # the prefill step's seconds (first token, a head's prompt pass)
    prompt_tokens: int
    run_id: str = ""


@dataclass
class Measured:
    """What prediction needs from some probe runs of one configuration, pooled."""

    alphas: list[float]  # α_k, k = 1, 2, ..., pooled over draft depths
    alphas_by_depth: dict[int, list[float]]  # α_k^(d): over the steps that drafted d deep
    shapes: list[tuple[int, int]]  # (draft depth, drafted nodes) of each decode step
    draft_s: float  # mean seconds drafting per decode step (a draft model's prompt pass excluded)
    verify_s: float  # mean seconds verifying per decode step (measured; prediction uses the profile)
    other_s: float  # mean seconds of the engine's own work per decode step
    fixed_s: float  # mean seconds per prompt paid once: the prefill and a draft model's prompt pass
    prompt_tokens: float  # mean prompt length
    tau: float  # measured tokens per decode step
    steps: int

    @property
    def tokens_per_step(self) -> float:
        """E from α_k^(d) and the depths (what prediction uses; τ is what the probe saw)."""
        if not self.shapes:
            return 1.0
        return statistics.fmean(M.expected_tokens_per_step(self.alphas_by_depth.get(d, []), d)
                                for d, _ in self.shapes)

    @property
    def mean_depth(self) -> float:
        return statistics.fmean(d for d, _ in self.shapes) if self.shapes else 0.0

    @property
    def mean_nodes(self) -> float:
        return statistics.fmean(n for _, n in self.shapes) if self.shapes else 0.0


def measure(samples: Sequence[Sample]) -> Measured:
    """Pool some probe runs (see the module docstring for what is measured)."""
    steps = [s for x in samples for s in x.steps]
    n = max(len(steps), 1)
    extra = 0.0  # per prompt: the first step's drafting beyond a typical step's (a draft model's prompt pass)
    for x in samples:
        if len(x.steps) > 1:
            extra += max(0.0, x.steps[0].draft_s - statistics.median(s.draft_s for s in x.steps[1:]))
    committed = sum(len(s.committed) for s in steps)
    by_depth: dict[int, list[Step]] = {}
    for s in steps:
        by_depth.setdefault(s.draft_depth, []).append(s)
    return Measured(
        alphas=M.acceptance_by_depth(steps),
        alphas_by_depth={d: M.acceptance_by_depth(group) for d, group in by_depth.items() if d},
        shapes=[(s.draft_depth, s.n_draft) for s in steps],
        draft_s=(sum(s.draft_s for s in steps) - extra) / n,
        verify_s=sum(s.verify_s for s in steps) / n,
        other_s=sum(s.other_s for s in steps) / n,
        fixed_s=(sum(x.prefill_s for x in samples) + extra) / max(len(samples), 1),
        prompt_tokens=statistics.fmean(x.prompt_tokens for x in samples) if samples else 0.0,
        tau=committed / len(steps) if steps else float("nan"),
        steps=len(steps),
    )


@dataclass(frozen=True)
class Breakdown:
    """One prediction and its parts, in units of one plain forward here (u)."""

    speedup: float
    tokens_per_step: float  # E
    step_cost: float  # C = draft + verify + overhead
    draft: float
    verify: float
    overhead: float
    plain_step_cost: float  # C0
    fixed: float  # F
    plain_fixed: float  # F0

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def profile_ratios(profile: dict[int, float]) -> Ratios:
    """r(n) = t(n) / t(1) from a profile {n: seconds}, linear between its sizes (and beyond the largest)."""
    sizes = sorted(profile)
    one = profile[sizes[0]]

    def r(n: int) -> float:
        if n <= sizes[0] or len(sizes) == 1:
            return profile[sizes[0]] / one
        for a, b in zip(sizes, sizes[1:]):
            if n <= b:
                return (profile[a] + (profile[b] - profile[a]) * (n - a) / (b - a)) / one
        a, b = sizes[-2], sizes[-1]
        return (profile[b] + (profile[b] - profile[a]) * (n - b) / (b - a)) / one

    return r


def flat(_n: int) -> float:
    """A machine whose forward over n tokens costs what one over a single token does (a GPU's shape)."""
    return 1.0


def predict(cfg: Measured, base: Measured, ratios: Ratios, here: Ratios, new_tokens: int, *,
            perfect: bool = False, free_draft: bool = False, flat_verify: bool = False) -> Breakdown:
    """The speedup of `cfg` over plain decoding for `new_tokens` tokens on a machine of `ratios`
    (`here`: this machine's, where the probe ran). perfect: every drafted position accepted (E = 1 + d);
    free_draft: drafting costs nothing; flat_verify: verifying any number of nodes costs one plain forward
    (the prefill as it is)."""
    u = base.verify_s
    if not u > 0:
        return Breakdown(*([float("nan")] * 9))
    e = (statistics.fmean(1 + d for d, _ in cfg.shapes) if cfg.shapes else 1.0) if perfect else cfg.tokens_per_step
    draft = 0.0 if free_draft else cfg.draft_s / u
    verify = statistics.fmean(ratios(n + 1) for _, n in cfg.shapes) if cfg.shapes and not flat_verify else 1.0
    overhead = cfg.other_s / u
    plain_step = 1.0 + base.other_s / u
    p = max(1, round(base.prompt_tokens))
    plain_fixed = base.fixed_s / u * ratios(p) / here(p)
    fixed = plain_fixed + (cfg.fixed_s - base.fixed_s) / u
    step = draft + verify + overhead
    speedup = M.predicted_speedup(new_tokens, e, step, fixed, plain_step, plain_fixed)
    return Breakdown(speedup, e, step, draft, verify, overhead, plain_step, fixed, plain_fixed)


@dataclass
class Probed:
    """A configuration's probe runs and the baseline's, paired by prompt."""

    samples: list[Sample]
    base: list[Sample]
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        mine = {s.prompt for s in self.samples}
        self.keys = [b.prompt for b in self.base if b.prompt in mine]

    def select(self, category: str | None = None) -> "Probed":
        """The runs on one category's prompts (None: all)."""
        if category is None:
            return self
        return Probed([s for s in self.samples if s.category == category],
                      [b for b in self.base if b.category == category])

    def measured(self) -> tuple[Measured, Measured]:
        return measure(self.samples), measure(self.base)


def interval(probed: Probed, ratios: Ratios, here: Ratios, new_tokens: int, *, rounds: int = BOOTSTRAP,
             level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """The middle `level` of the predictions over bootstrap resamples (see the module docstring)."""
    rng = random.Random(seed)
    by_key = {s.prompt: s for s in probed.samples}
    base_by_key = {b.prompt: b for b in probed.base}
    keys = probed.keys
    if not keys:
        return float("nan"), float("nan")
    values = []
    for _ in range(rounds):
        if len(keys) >= MIN_PROMPTS:
            pick = [rng.choice(keys) for _ in keys]
            cfg = measure([by_key[k] for k in pick])
            base = measure([base_by_key[k] for k in pick])
        else:  # too few prompts to resample: resample the decode steps within them
            cfg = measure([_resampled(by_key[k], rng) for k in keys])
            base = measure([_resampled(base_by_key[k], rng) for k in keys])
        s = predict(cfg, base, ratios, here, new_tokens).speedup
        if s == s:
            values.append(s)
    if not values:
        return float("nan"), float("nan")
    values.sort()
    lo = values[int((1 - level) / 2 * (len(values) - 1))]
    hi = values[int((1 + level) / 2 * (len(values) - 1) + 0.5)]
    return lo, hi


def _resampled(sample: Sample, rng: random.Random) -> Sample:
    """The run with its decode steps drawn with replacement (the first kept first: it holds the draft's prompt
    pass, which `measure` counts once)."""
    if len(sample.steps) < 2:
        return sample
    rest = [rng.choice(sample.steps[1:]) for _ in sample.steps[1:]]
    return replace(sample, steps=[sample.steps[0]] + rest)
