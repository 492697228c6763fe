"""The distribution tests' tools: an oracle of the warped target distribution, and chi-square goodness of fit."""
from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

if TYPE_CHECKING:
    from workbench.config import SamplingConfig


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


def oracle_probs(logits: torch.Tensor, cfg: SamplingConfig) -> dict[int, float]:
    """The warped next-token distribution from its definition, independently of workbench.sampling:
    softmax(logits / T); keep the top_k most likely; renormalise; keep the smallest most-likely
    prefix whose mass reaches top_p; renormalise."""
    z = [float(x) / cfg.temperature for x in logits.double().tolist()]
    m = max(z)
    w = sorted(((math.exp(v - m), tok) for tok, v in enumerate(z)), reverse=True)
    if cfg.top_k:
        w = w[: cfg.top_k]
    total = sum(x for x, _ in w)
    kept, mass = [], 0.0
    for x, tok in w:
        if mass >= cfg.top_p:
            break
        kept.append((x / total, tok))
        mass += x / total
    norm = sum(x for x, _ in kept)
    return {tok: x / norm for x, tok in kept}


def exact_joint(model, prompt, cfg, depth: int, eos=(257,)):
    """Exact probability of every continuation of `depth` tokens (or fewer, ending in EOS) under the warped target."""
    out = {}
    with torch.inference_mode():
        def rec(prefix, prob):
            if len(prefix) == len(prompt) + depth or (len(prefix) > len(prompt) and prefix[-1] in eos):
                out[tuple(prefix[len(prompt):])] = prob
                return
            for tok, p in oracle_probs(model(input_ids=torch.tensor([prefix])).logits[0, -1], cfg).items():
                rec(prefix + [tok], prob * p)
        rec(list(prompt), 1.0)
    return out
