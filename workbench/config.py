"""Run configuration: frozen dataclasses, validated when they are built.

A bad value fails here, with a message naming the field, before any model is
loaded or any run is recorded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Absurd-length guard: a CPU decodes ~10 tokens/s on the embedded model, so
# more than this is almost certainly a typo (and would hold a UI worker for hours).
MAX_NEW_TOKENS_LIMIT = 8192


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


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
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0 or self.temperature > 100:
            raise ConfigError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

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
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ConfigError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
            raise ConfigError(
                f"max_new_tokens={self.max_new_tokens} is more than the limit of {MAX_NEW_TOKENS_LIMIT}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
