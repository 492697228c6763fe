"""The advice explained, in numbers: the ceiling here, what holds each method back, what would change the answer.

- The ceiling: a perfect drafter (free, and always right) drafting k tokens commits k + 1 per forward
  over k + 1 tokens, so on this machine no method beats max_k (k + 1) t(1) / t(k + 1)
  (workbench.metrics.verification_ceiling): on a GPU, where t(k + 1) ≈ t(1), that is large; on a
  small CPU it can be close to 1.
- What holds a configuration back: its prediction again with one cost removed at a time
  (workbench.advisor.predict): every drafted position accepted (acceptance), drafting free (draft
  cost), verification as cheap as a one-token forward (verification cost). The one whose removal
  gains most holds it back most; all three are shown.
- What would change the answer: the ranking with verification as flat as a GPU's (t(n) = t(1)), and on
  each what-if machine (another machine's cost profile with the acceptance measured here).
No torch import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import metrics as M
from .predict import Breakdown, Measured

FACTORS = {"perfect_acceptance": "acceptance", "free_drafting": "draft cost", "flat_verification": "verification cost"}
NOTHING_DRAFTED = "nothing drafted"
PROFILE_GAP = 0.2


@dataclass
class Limits:
    """A configuration's prediction and the same with one cost removed at a time."""

    predicted: Breakdown
    perfect_acceptance: float
    free_drafting: float
    flat_verification: float
    drafted: bool = True  # False: the configuration drafted nothing in the probe (it chose plain steps)

    @property
    def holds_back(self) -> str:
        """The factor whose removal gains most: "acceptance", "draft cost" or "verification cost" (or
        "nothing drafted")."""
        if not self.drafted:
            return NOTHING_DRAFTED
        gains = {k: getattr(self, k) for k in FACTORS}
        return FACTORS[max(gains, key=lambda k: gains[k] if gains[k] == gains[k] else float("-inf"))]

    def to_dict(self) -> dict[str, Any]:
        return {"perfect_acceptance": self.perfect_acceptance, "free_drafting": self.free_drafting,
                "flat_verification": self.flat_verification, "holds_back": self.holds_back}


def ceiling(profile: dict[int, float]) -> dict[str, Any]:
    """The perfect drafter's speedup on a machine of this profile, the k it drafts, and what that forward costs."""
    k, speedup = M.verification_ceiling(profile)
    one = profile[min(profile)]
    return {"k": k, "speedup": speedup, "forward_x": profile.get(k + 1, one) / one}


def ceiling_line(c: dict[str, Any], backend: str) -> str:
    if c["k"] == 0:
        return (f"Ceiling here: none. On this {backend} profile a forward over n tokens costs n times one over a "
                f"single token or more, so even a perfect drafter (free, always right) cannot beat plain decoding.")
    return (f"Ceiling here: a perfect drafter (free, always right) would give at most {c['speedup']:.2f}x, drafting "
            f"{c['k']} token{'s' * (c['k'] != 1)} a step (a forward over {c['k'] + 1} tokens costs {c['forward_x']:.2f}x "
            f"one over a single token on this {backend} profile).")


def limit_line(label: str, lim: Limits, m: Measured, plain_verify_s: float) -> str:
    """One configuration: its prediction, the three what-ifs, and what holds it back, in numbers; and when
    its verification measured in the probe differs from the profile's by more than PROFILE_GAP, by how much
    (the prediction uses the profile, so that it holds on other machines too)."""
    p = lim.predicted
    if not lim.drafted:
        return (f"{label}: drafted nothing on the probe prompts (every step a plain one: its own check found "
                f"that drafting does not pay here); predicted {p.speedup:.2f}x.")
    why = {
        "acceptance": (f"it commits {p.tokens_per_step:.2f} tokens a step of the {1 + m.mean_depth:.2f} it could "
                       f"(α_k {' '.join(f'{a:.2f}' for a in m.alphas[:6]) or '-'})"),
        "draft cost": (f"drafting costs {p.draft:.2f} plain forwards a step"
                       + (f" ({p.draft / m.mean_nodes:.2f} per drafted token)" if m.mean_nodes else "")),
        "verification cost": (f"verifying the root and {m.mean_nodes:.1f} drafted nodes costs {p.verify:.2f} plain "
                              f"forwards a step"),
    }[lim.holds_back]
    line = (f"{label}: predicted {p.speedup:.2f}x; with every drafted token accepted {lim.perfect_acceptance:.2f}x, "
            f"with free drafting {lim.free_drafting:.2f}x, with verification as cheap as one token "
            f"{lim.flat_verification:.2f}x. {lim.holds_back[0].upper() + lim.holds_back[1:]} holds it back most: "
            f"{why}.")
    measured = m.verify_s / plain_verify_s if plain_verify_s > 0 else float("nan")
    if measured == measured and abs(measured / p.verify - 1) > PROFILE_GAP:
        line += (f" (Its verification measured {measured:.2f} plain forwards a step in the probe where the profile "
                 f"says {p.verify:.2f}: " + ("tree attention, longer contexts and keeping the accepted nodes cost "
                                             "what a profile of chains does not show)." if measured > p.verify else
                                             "the profile, at 128 cached positions, overstates it here)."))
    return line


def ranked(values: dict[str, float]) -> list[str]:
    """Labels by value, best first (NaN last)."""
    return sorted(values, key=lambda k: -values[k] if values[k] == values[k] else float("inf"))


def change_lines(here: dict[str, float], flat: dict[str, float], what_ifs: dict[str, dict[str, float]]) -> list[str]:
    """What would change the answer: the best under flat verification and on each what-if machine."""
    if not here:
        return []
    best = ranked(here)[0]
    out = []
    best_flat = ranked(flat)[0]
    if best_flat != best:
        out.append(f"With verification as flat as on a GPU (t(n) = t(1)), {best_flat} is predicted "
                   f"{flat[best_flat]:.2f}x and would be the best ({best} {flat[best]:.2f}x).")
    else:
        out.append(f"With verification as flat as on a GPU (t(n) = t(1)), {best} stays the best, predicted "
                   f"{flat[best]:.2f}x.")
    for name, values in what_ifs.items():
        order = ranked(values)[:3]
        shown = ", ".join(f"{k} {values[k]:.2f}x" for k in order)
        out.append(f"On the machine of profile {name!r} (acceptance as measured here: it depends on the drafter "
                   f"and the text, not on the hardware): {shown}" + ("" if order[:1] == [best] else
                                                                      f"; {best} there: {values[best]:.2f}x") + ".")
    return out
