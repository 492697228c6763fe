"""Run configuration: frozen dataclasses, validated when they are built.

A bad value fails here, with a message naming the field, before any model is
loaded or any run is recorded.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

# The method every speedup is measured against: plain decoding, one target forward per token.
BASELINE = "autoregressive"
# What `workbench train --kind` makes: drafter heads on the target's hidden states, or a distilled draft model.
HEAD_KINDS = ("eagle", "medusa", "hydra", "dflash")
TRAINING_KINDS = HEAD_KINDS + ("draft",)
# Absurd-length guard: a CPU decodes ~10 tokens/s on the embedded model, so
# more than this is almost certainly a typo (and would hold a UI worker for hours).
MAX_NEW_TOKENS_LIMIT = 8192
# torch.Generator.manual_seed takes up to 64 bits; stay in the signed range every backend accepts.
MAX_SEED = 2**63 - 1
# Larger than any vocabulary; top_k at or above the vocabulary size already means "off".
MAX_TOP_K = 10_000_000
# Far below this, logits / temperature overflow float32 and the probabilities turn into NaN;
# anywhere below it sampling is greedy decoding in all but name, which temperature 0 does exactly.
MIN_TEMPERATURE = 1e-3


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


def env_number(name: str, default: float, lo: float, hi: float | None = None, *, integer: bool = False,
               error: type[Exception] = ConfigError) -> float:
    """A numeric setting from the environment variable `name` (default when unset), checked against [lo, hi]."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        kind = "a whole number" if integer else "a number"
        bound = f"from {lo:g} to {hi:g}" if hi is not None else f">= {lo:g}"
        raise error(f"${name} must be {kind} {bound}, got {raw!r}")
    return value


def is_int(value: Any) -> bool:
    """A real integer: True/False are not (bool is an int subclass in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool, NaN or infinity."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def shown(value: Any, limit: int = 60) -> str:
    """repr(value) cut to one short line, for error messages (a huge number or text stays readable)."""
    if is_int(value) and value.bit_length() > 200:  # repr of a huge int is slow, or refused past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = " ".join(repr(value).split())
    except ValueError:  # e.g. a container holding a huge int
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the target's logits.

    temperature == 0 means greedy (argmax). top_k == 0 and top_p == 1.0 disable
    those filters. seed makes sampling reproducible (one torch.Generator per run).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not is_number(self.temperature) or not 0 <= self.temperature <= 100:
            raise ConfigError(f"temperature must be a number in [0, 100], got {shown(self.temperature)}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ConfigError(f"temperature {shown(self.temperature)} is too small to sample with; "
                              f"use 0 for greedy or at least {MIN_TEMPERATURE}")
        if not is_int(self.top_k) or not 0 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be an integer in [0, {MAX_TOP_K}] (0 = off), got {shown(self.top_k)}")
        if not is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be a number in (0, 1], got {shown(self.top_p)}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got {shown(self.seed)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DecodeConfig:
    """Stopping and bookkeeping for one generation."""

    max_new_tokens: int = 128
    stop_on_eos: bool = True
    # Keep per-step draft trees and probabilities. Off only for overhead measurements.
    trace: bool = True
    extra_eos_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not is_int(self.max_new_tokens):
            raise ConfigError(f"max_new_tokens must be an integer, got {shown(self.max_new_tokens)}")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {shown(self.max_new_tokens)}")
        if self.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
            raise ConfigError(
                f"max_new_tokens={shown(self.max_new_tokens)} is more than the limit of {MAX_NEW_TOKENS_LIMIT}"
            )
        for name in ("stop_on_eos", "trace"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {shown(getattr(self, name))}")
        eos = self.extra_eos_ids
        if not isinstance(eos, (tuple, list)) or not all(is_int(i) and i >= 0 for i in eos):
            raise ConfigError(f"extra_eos_ids must be a tuple of token ids (integers >= 0), got {shown(eos)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
