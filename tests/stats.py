"""Chi-square goodness of fit used by the distribution tests."""
from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import stats


def chi2_pvalue(samples, expected: dict, min_expected: float = 5.0) -> float:
    """p-value of `samples` against the distribution `expected` (outcome -> probability).

    Outcomes with an expected count below min_expected are pooled into one cell,
    and so are observed outcomes the distribution gives (almost) no mass.
    """
    n = len(samples)
    counts = Counter(samples)
    obs, exp = [], []
    pooled_obs, pooled_exp = 0, 0.0
    for outcome, prob in expected.items():
        if prob * n >= min_expected:
            obs.append(counts.pop(outcome, 0))
            exp.append(prob * n)
        else:
            pooled_obs += counts.pop(outcome, 0)
            pooled_exp += prob * n
    pooled_obs += sum(counts.values())  # outcomes outside the support
    if pooled_exp > 0 or pooled_obs > 0:
        obs.append(pooled_obs)
        exp.append(max(pooled_exp, 1e-9))
    exp_arr = np.array(exp)
    exp_arr *= n / exp_arr.sum()
    return float(stats.chisquare(np.array(obs), exp_arr).pvalue)
