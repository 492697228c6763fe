"""Logits -> probabilities (temperature, top-k, top-p), sampling and greedy choice.

The same warping is applied to the target's and the draft's logits, so that
speculative sampling reproduces the target's *warped* distribution exactly —
the distribution plain sampling with the same settings draws from.

`token_nll_rows` is the one definition of a token's negative log-likelihood under a model: the raw logits'
log-softmax (temperature 1, no top-k/top-p, whatever the run sampled with), read at the token. The engine
reads it from its verification forwards, the quality accounting from a teacher-forced one.
"""
from __future__ import annotations

import torch

from .config import SamplingConfig


def logits_to_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 probabilities under cfg.

    Greedy configs return the one-hot distribution of the argmax, which makes
    the speculative accept rule reduce to exact prefix matching.
    """
    logits = logits.float()
    if cfg.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (always keep the first)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def token_nll_rows(logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """-log softmax(logits[i])[tokens[i]] for each row i: (k, V) logits, k tokens -> (k,) float32 NLLs in nats."""
    want = torch.tensor(tokens, dtype=torch.long).to(logits.device, non_blocking=True)[:, None]  # (k, 1)
    return -logits.float().log_softmax(-1).gather(-1, want).squeeze(-1)  # (k,)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Draw one token id from a (V,) distribution."""
    return int(torch.multinomial(probs, 1, generator=generator).item())


def choose(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> tuple[int, float]:
    """Pick the next token from (V,) logits; return (token, its probability under cfg)."""
    if cfg.greedy:
        return int(logits.argmax(-1).item()), 1.0
    probs = logits_to_probs(logits, cfg)
    tok = sample(probs, generator)
    return tok, float(probs[tok].item())


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
