"""The advice's time budget: how long each phase will take, estimated before it runs, and what fits.

Acceptance drifts with the length of the output (copying methods find more to copy as their output
grows), so a prediction holds best at the length it was measured at: the probe and the verification
decode the same number of new tokens T, chosen together, and the verification grows its runs to at most
LONGER_THAN_PROBE × T only when it has time left after its repeats.

Before the probe nothing about the configurations is measured yet, so a run's time is estimated from
the cost profiles (workbench.backend.profile): the prefill of a P-token prompt costs t(P), and a new
token t(1) × SLACK for a method that drafts without a model or with a head (they size their drafts to
pay here, so they run near plain decoding's pace or faster), or, with a draft model drafting γ tokens a
step, (γ t_draft(1) + t(γ + 1)) / E(γ) × SLACK with every draft position accepted at GUESS_ALPHA. Each
arm of a benchmark also has a warm-up generation and a set-up (SETUP_S).

The probe's T is the longest of PROBE_TOKENS (at most --max-new-tokens) at which the probe and one
repeat of the verification (its top arms and the baseline on every verification prompt) fit what is
left after loading and profiling: with every setting if they fit, else with only the methods'
defaults. If even the defaults at the fewest tokens do not fit, the budget is too small and the error
says the minimum.

The verification gets the rest and is sized from what the probe measured (each configuration's seconds
per prompt at a given length): the most repeats (up to 3) at T tokens that fit, then runs as long as
still fit up to LONGER_THAN_PROBE × T (and --max-new-tokens); with less time than one repeat at T, one
repeat as long as fits.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .. import metrics as M
from .configs import AdviceError, Config
from .predict import Measured, profile_ratios

DEFAULT_BUDGET_S = 300.0
PROBE_TOKENS = (64, 48, 32, 24, 16)  # new tokens per probe run (a few dozen), longest first
LONGER_THAN_PROBE = 2  # the verification's runs grow to at most this many times the probe's
MAX_VERIFY_TOKENS, MIN_VERIFY_TOKENS = 128, 16  # new tokens per verification run
MAX_REPEATS = 3
WARMUP_TOKENS = 4  # the benchmark's warm-up generation per arm (BenchConfig.warmup_tokens)
GUESS_ALPHA = 0.6
SLACK = 1.1  # Python, sampling and bookkeeping on top of the forwards, before anything is measured
SAFETY = 1.1  # on estimates made from measured speeds
SETUP_S = 0.5  # per arm: opening sessions, a drafter's begin
RUN_OVERHEAD_S = 0.05  # per run: recording it


def parse_budget(text: str | float | int) -> float:
    """'300', '300s', '5m', '1m30s', '1h' -> seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text or "").strip().lower()
        m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", s)
        if not s or m is None or not any(m.groups()):
            raise AdviceError(f"a budget is a duration such as 90s, 5m or 1m30s, got {text!r}")
        h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise AdviceError(f"the budget must be a positive duration, got {text!r}")
    return seconds


def fmt_duration(seconds: float) -> str:
    """90 -> '1m30s', 45 -> '45s', 3700 -> '1h01m40s' (forms --budget takes)."""
    total = max(0, int(round(seconds)))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class Costs:
    """This machine's cost profiles ({n: seconds}), for the estimates."""

    target: dict[int, float]
    drafts: dict[str, dict[int, float]]

    def seconds(self, n: int, draft: str | None = None) -> float:
        profile = self.drafts[draft] if draft else self.target
        return profile_ratios(profile)(n) * profile[min(profile)]


def token_s(cfg: Config | None, costs: Costs) -> float:
    """Guessed seconds per new token of a configuration (None: plain decoding), before it is measured."""
    one = costs.seconds(1)
    if cfg is None or not cfg.draft:
        return one * SLACK
    params = cfg.arm().params
    gamma = params.get("gamma") or params.get("depth") or params.get("max_depth") or 4
    step = gamma * costs.seconds(1, cfg.draft) + costs.seconds(gamma + 1)
    return step / M.expected_tokens_per_step([GUESS_ALPHA] * gamma, gamma) * SLACK


def run_s(per_token: float, prompt_tokens: int, tokens: int, costs: Costs) -> float:
    """One generation: the prefill and `tokens` new tokens at `per_token` seconds each."""
    return costs.seconds(prompt_tokens) + tokens * per_token + RUN_OVERHEAD_S


def benchmark_s(per_token: list[float], prompt_tokens: list[int], tokens: int, repeats: int, costs: Costs) -> float:
    """A benchmark of these arms (seconds per token each) over these prompts: set-up, warm-up, runs."""
    warm = sum(SETUP_S + run_s(t, prompt_tokens[0], WARMUP_TOKENS, costs) for t in per_token)
    return warm + repeats * sum(run_s(t, p, tokens, costs) for t in per_token for p in prompt_tokens)


@dataclass
class ProbePlan:
    configs: list[Config]
    tokens: int
    estimate_s: float
    left_out: list[Config]


def probe_s(configs: list[Config], prompt_tokens: list[int], tokens: int, costs: Costs) -> float:
    return benchmark_s([token_s(None, costs)] + [token_s(c, costs) for c in configs], prompt_tokens, tokens, 1,
                       costs)


def verify_guess_s(top: int, prompt_tokens: list[int], tokens: int, costs: Costs) -> float:
    """One repeat of a verification of `top` arms and the baseline, at plain decoding's pace (before the probe)."""
    return benchmark_s([token_s(None, costs)] * (top + 1), prompt_tokens, tokens, 1, costs)


def plan_probe(configs: list[Config], probe_tokens: list[int], verify_tokens: list[int], top: int, costs: Costs,
               available_s: float, spent_s: float, max_tokens: int = MAX_VERIFY_TOKENS) -> ProbePlan:
    """The probe's configurations and tokens (see the module docstring) that fit `available_s` with one repeat
    of the verification at the same length; AdviceError with the minimum budget when nothing does."""
    defaults = [c for c in configs if c.tier == 0]
    lengths = [t for t in PROBE_TOKENS if t <= max_tokens] or [min(PROBE_TOKENS)]
    for tokens in lengths:
        room = available_s - verify_guess_s(top, verify_tokens, tokens, costs)
        for chosen in (configs, defaults):
            est = probe_s(chosen, probe_tokens, tokens, costs)
            if est <= room:
                return ProbePlan(chosen, tokens, est, [c for c in configs if c not in chosen])
    least = spent_s + probe_s(defaults, probe_tokens, lengths[-1], costs) + verify_guess_s(top, verify_tokens,
                                                                                          lengths[-1], costs)
    raise AdviceError(f"the budget ({fmt_duration(spent_s + available_s)}) is too small to probe "
                      f"{len(defaults)} method{'s' * (len(defaults) != 1)} on {len(probe_tokens)} prompt"
                      f"{'s' * (len(probe_tokens) != 1)} and verify the top {top} here: give at least --budget "
                      f"{fmt_duration(math.ceil(least * 1.1))} (or fewer --methods, or fewer prompts)")


def measured_run_s(m: Measured, tokens: int) -> float:
    """Seconds of one generation of `tokens` tokens at the pace the probe measured."""
    step = m.draft_s + m.verify_s + m.other_s
    tau = m.tau if m.tau == m.tau and m.tau > 0 else 1.0
    return m.fixed_s + max(tokens - 1, 0) / tau * step + RUN_OVERHEAD_S


@dataclass
class VerifyPlan:
    repeats: int
    tokens: int
    estimate_s: float
    fits: bool


def plan_verification(arms: list[Measured], n_prompts: int, available_s: float, probe_tokens: int,
                      max_tokens: int) -> VerifyPlan:
    """Repeats and tokens of the verification (see the module docstring), estimated from the probe's
    measurements of `arms`; the shortest single repeat, marked as not fitting, when nothing fits."""
    def estimate(repeats: int, tokens: int) -> float:
        warm = sum(SETUP_S + measured_run_s(m, WARMUP_TOKENS) for m in arms)
        return SAFETY * (warm + repeats * n_prompts * sum(measured_run_s(m, tokens) for m in arms))

    def longest(repeats: int, lo: int, hi: int) -> int | None:
        """The most tokens in [lo, hi] (a multiple of 8, or hi) that fit with `repeats`."""
        return next((t for t in range(hi, lo - 1, -1) if (t == hi or t % 8 == 0) and estimate(repeats, t)
                     <= available_s), None)

    base = min(probe_tokens, max_tokens)
    for repeats in range(MAX_REPEATS, 0, -1):
        if estimate(repeats, base) <= available_s:
            tokens = longest(repeats, base, min(max_tokens, LONGER_THAN_PROBE * base)) or base
            return VerifyPlan(repeats, tokens, estimate(repeats, tokens), True)
    least = min(MIN_VERIFY_TOKENS, base)
    tokens = longest(1, least, base)
    if tokens is None:
        return VerifyPlan(1, least, estimate(1, least), False)
    return VerifyPlan(1, tokens, estimate(1, tokens), True)
