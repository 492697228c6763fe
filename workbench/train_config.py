"""Training settings for `workbench train` (torch-free, so the CLI parser can read the defaults)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

KINDS = ("eagle", "medusa", "hydra", "draft")
TRAIN_PROMPTS = Path(__file__).resolve().parent / "suites" / "train_prompts.jsonl"


@dataclass
class TrainConfig:
    kind: str
    target: str = "smollm2-135m"
    prompts: str | None = None  # a JSONL file ("prompt" text or chat "messages"); None: the shipped set
    samples: int = 300  # responses to generate
    max_new_tokens: int = 128  # per response
    steps: int = 600
    batch_size: int = 8  # sequences per step
    lr: float = 1e-3
    heads: int = 4  # medusa / hydra heads (draft positions)
    layers: int = 2  # distilled draft model: decoder layers kept
    vocab_trim: int = 0  # 0: full vocabulary
    holdout: float = 0.1  # fraction of responses held out for evaluation
    gen_batch: int = 16
    checkpoint_every: int = 100
    seed: int = 0
    device: str | None = None
    out: str | None = None  # None: the user heads dir / <target>-<kind>
    resume: bool = False
    store: bool = True  # record the training in the run store
    evaluate_prompts: int = 4  # held-out prompts decoded with the trained head (0: skip)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown training kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        for name in ("samples", "max_new_tokens", "steps", "batch_size", "heads", "layers", "gen_batch",
                     "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
        if not (isinstance(self.vocab_trim, int) and self.vocab_trim >= 0):
            raise ConfigError(f"vocab_trim must be a whole number >= 0, got {self.vocab_trim!r}")
        if not (0.0 < self.holdout < 0.5):
            raise ConfigError(f"holdout must be between 0 and 0.5, got {self.holdout!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")


