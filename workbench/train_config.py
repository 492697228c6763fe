"""Training settings for `workbench train` (torch-free, so the CLI parser can read the defaults)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from .config import TRAINING_KINDS, ConfigError
TRAIN_PROMPTS = Path(__file__).resolve().parent / "suites" / "train_prompts.jsonl"


@dataclass
class TrainConfig:
    kind: str
    target: str = "smollm2-135m"
    prompts: str | None = None  # a JSONL file ("prompt" text or chat "messages"); None: the shipped set
    samples: int = 1000  # responses to generate (about 13 minutes on a 2-core CPU for SmolLM2-135M)
    # instructions the target writes itself (Magpie), each answered once, on top of `samples`; 0: none
    self_prompts: int = 0
    max_new_tokens: int = 128  # per response
    steps: int = 1200
    batch_size: int = 8  # sequences per step
    lr: float | None = None  # None: 5e-4 for eagle (a layer that starts from the target's), 1e-3 otherwise
    heads: int = 4  # medusa / hydra heads (draft positions)
    layers: int = 2  # distilled draft model: decoder layers kept (dflash, pard: the drafter's decoder layers)
    init_from: str | None = None  # pard: a distilled draft model directory whose layers it starts from (None: target's)
    vocab_trim: int = 8192  # propose only the k most frequent tokens of the target's outputs; 0: full vocabulary
    # eagle: weights of the feature-regression (smooth L1) and token (cross-entropy) losses
    feature_weight: float = 1.0
    token_weight: float = 0.1
    # eagle, eagle3: draft positions trained; each after the first reads the head's own prediction (None: 1 for
    # eagle, 3 for eagle3, whose published training is this "training-time test")
    unroll: int | None = None
    fuse: bool = False  # heads: also read a low and a middle layer of the target (EAGLE-3's fused features)
    holdout: float = 0.1  # fraction of responses held out for evaluation
    gen_batch: int = 32
    checkpoint_every: int = 100
    seed: int = 0
    device: str | None = None
    out: str | None = None  # None: the user heads dir / <target>-<kind>
    resume: bool = False
    store: bool = True  # record the training in the run store
    evaluate_prompts: int = 4  # held-out prompts decoded with the trained head (0: skip)

    def command(self) -> str:
        """The `workbench train` command line that reproduces these settings (defaults left out)."""
        skip = {"kind", "out", "resume", "store", "device", "evaluate_prompts"}
        base = TrainConfig(kind=self.kind)
        parts = ["workbench train", f"--kind {self.kind}"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in skip or value == getattr(base, f.name) and f.name != "target":
                continue
            if isinstance(value, bool):  # a switch, off by default (`--fuse`)
                parts.append(f"--{f.name.replace('_', '-')}")
                continue
            parts.append(f"--{f.name.replace('_', '-')} {value}")
        return " ".join(parts)

    def __post_init__(self) -> None:
        if self.kind not in TRAINING_KINDS:
            raise ConfigError(f"unknown training kind {self.kind!r}; kinds: {', '.join(TRAINING_KINDS)}")
        if self.unroll is None:
            self.unroll = 3 if self.kind == "eagle3" else 1
        counts = {name: 1 for name in ("samples", "max_new_tokens", "steps", "batch_size", "heads", "layers",
                                       "gen_batch", "checkpoint_every", "unroll")} | {"self_prompts": 0, "vocab_trim": 0}
        for name, least in counts.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ConfigError(f"{name} must be a whole number >= {least}, got {v!r}")
        if not isinstance(self.fuse, bool):
            raise ConfigError(f"fuse must be true or false, got {self.fuse!r}")
        if self.init_from is not None and self.kind != "pard":
            raise ConfigError(f"--from (a distilled draft to start from) is for --kind pard, not {self.kind}")
        if self.init_from is not None and not Path(self.init_from).expanduser().is_dir():
            raise ConfigError(f"--from {self.init_from}: no such draft model directory")
        if self.unroll > 8:
            raise ConfigError(f"unroll must be at most 8, got {self.unroll!r}")
        if not (0.0 < self.holdout < 0.5):
            raise ConfigError(f"holdout must be between 0 and 0.5, got {self.holdout!r}")
        if self.lr is None:
            self.lr = 5e-4 if self.kind in ("eagle", "eagle3") else 1e-3
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("feature_weight", "token_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {v!r}")


