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
# What `workbench train --kind` makes: drafter heads on the target's hidden states (pard: a parallel draft LM kept as a
# head, its layers over the target's embedding and LM head), or a distilled draft model.
HEAD_KINDS = ("eagle", "medusa", "hydra", "eagle3", "dflash", "pard")
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


def parse_knobs(text: Any, what: str, example: str, knobs: dict[str, type]) -> tuple[str, dict[str, Any]]:
    """A setting written as text, 'name:key=value,key=value' (--accept, --kv) -> (name, {key: value}), each
    value converted by its type in `knobs`; anything else is one ConfigError line naming `what`."""
    if not isinstance(text, str) or len(text) > 200:
        raise ConfigError(f"{what} must be text like {example!r}, got {shown(text)}")
    name, _, rest = text.strip().partition(":")
    values: dict[str, Any] = {}
    for pair in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or key not in knobs:
            raise ConfigError(f"{what} setting {shown(pair)} is not one of {', '.join(k + '=...' for k in knobs)}")
        try:
            values[key] = knobs[key](raw.strip())
        except ValueError:
            raise ConfigError(f"{what} {key} must be {'an integer' if knobs[key] is int else 'a number'}, "
                              f"got {shown(raw.strip())}") from None
    return name.strip(), values


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


# Relaxed acceptance rules of the shared verifier (workbench.verify.relaxed_admits); "exact" is lossless verification.
ACCEPTANCE_RULES = ("exact", "typical", "top_k", "ratio")
# Beyond this an entropy factor delta only spells "never relax" (delta * exp(-H) >= 1 for any vocabulary below it).
MAX_DELTA = 1e12


@dataclass(frozen=True)
class AcceptanceConfig:
    """How the shared verifier judges a draft token x at a node whose target distribution is p.

    Lossless verification ("exact") accepts x only when the target would have produced it: x is p's
    argmax (greedy), or it passes the rejection test r < p(x)/q(x) (sampling). A relaxed rule also
    admits x when (every rule is a superset of the lossless one):
      typical  p(x) > min(eps, delta * exp(-H(p)))    Medusa-2's typical acceptance (Cai et al. 2024)
      top_k    x is among p's k most likely tokens     (ties ranked as argmax ranks them: lower id first)
      ratio    p(x) >= ratio * max p                   (at ratio = 1 only the argmax itself)
    Greedy: p is the target's softmax at temperature 1. Sampling: p is the warped distribution the run
    samples from (temperature, top-k, top-p); an admitted token is accepted whatever the rejection test
    says, and a token neither admits goes on to the lossless residual as usual, so the run's random draws
    are the same ones lossless verification makes.
    `exact(greedy, vocab)` says whether a setting can change nothing (the run then stays lossless).
    """

    rule: str = "exact"
    eps: float = 0.09  # typical: the probability floor (Medusa's posterior_threshold)
    delta: float = 0.3  # typical: the entropy-scaled floor's factor (Medusa's posterior_alpha)
    k: int = 2  # top_k: how many of the target's most likely tokens are admitted
    ratio: float = 0.5  # ratio: admitted when p(x) >= ratio * max p

    def __post_init__(self) -> None:
        if self.rule not in ACCEPTANCE_RULES:
            raise ConfigError(f"acceptance rule must be one of {', '.join(ACCEPTANCE_RULES)}, got {shown(self.rule)}")
        if not is_number(self.eps) or not 0.0 <= self.eps <= 1.0:
            raise ConfigError(f"acceptance eps must be a number in [0, 1], got {shown(self.eps)}")
        if not is_number(self.delta) or not 0.0 <= self.delta <= MAX_DELTA:
            raise ConfigError(f"acceptance delta must be a number in [0, {MAX_DELTA:g}], got {shown(self.delta)}")
        if not is_int(self.k) or not 1 <= self.k <= MAX_TOP_K:
            raise ConfigError(f"acceptance k must be an integer in [1, {MAX_TOP_K}], got {shown(self.k)}")
        if not is_number(self.ratio) or not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"acceptance ratio must be a number in (0, 1], got {shown(self.ratio)}")

    @classmethod
    def parse(cls, text: str) -> "AcceptanceConfig":
        """'typical:eps=0.3,delta=0.09', 'top_k:k=3', 'ratio:ratio=0.2' or 'exact' -> the config (CLI, app)."""
        rule, values = parse_knobs(text, "acceptance", "typical:eps=0.09,delta=0.3",
                                   {"eps": float, "delta": float, "k": int, "ratio": float})
        return cls(rule=rule or "exact", **values)

    def exact(self, greedy: bool, vocab: int) -> bool:
        """Whether this setting admits nothing lossless verification rejects (for a vocabulary of `vocab`).

        Greedy: a token other than the argmax has p(x) <= 1/2, so a typical floor of at least 1/2 admits none,
        and top_k = 1 or ratio = 1 admit only the argmax. Sampling: the argmax is not always accepted, so only
        a typical floor of 1 (eps = 1, delta >= vocab, as exp(-H) >= 1/vocab) admits nothing."""
        if self.rule == "exact":
            return True
        if self.rule == "typical":
            floor = min(self.eps, self.delta / max(vocab, 1))  # the lowest min(eps, delta exp(-H)) can be
            return floor >= (0.5 if greedy else 1.0)
        if self.rule == "top_k":
            return greedy and self.k == 1
        return greedy and self.ratio == 1.0

    def describe(self) -> str:
        """One line naming the rule and its setting (a lossy run's `Trace.lossy` entry)."""
        if self.rule == "typical":
            return f"typical acceptance (eps={self.eps:g}, delta={self.delta:g})"
        if self.rule == "top_k":
            return f"top-k acceptance (k={self.k})"
        if self.rule == "ratio":
            return f"probability-ratio acceptance (ratio={self.ratio:g})"
        return "exact acceptance"

    def text(self) -> str:
        """The text form `parse` reads back ('typical:eps=0.09,delta=0.3'), as a run's parameters store it."""
        knobs = {"typical": f"eps={self.eps:g},delta={self.delta:g}", "top_k": f"k={self.k}",
                 "ratio": f"ratio={self.ratio:g}", "exact": ""}[self.rule]
        return f"{self.rule}:{knobs}" if knobs else self.rule

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# KV-cache compression policies of the target's cache (workbench.kv_compress); "none" keeps every position.
KV_POLICIES = ("none", "streaming", "h2o")
# Bits of a quantised KV cache (workbench.kv_quant); 16 stores the model's dtype (no quantisation).
KV_BITS = (4, 8, 16)


@dataclass(frozen=True)
class KVConfig:
    """Compress the target's KV cache to a memory budget (eager backend; workbench.kv_compress, workbench.kv_quant).

    streaming  keep `sinks` first positions and the most recent ones (StreamingLLM, Xiao et al. 2024)
    h2o        keep `sinks`, a recent window and the heavy hitters: the positions with the largest
               accumulated attention (H2O, Zhang et al. 2023; workbench.kv_compress says what stands in
               for the attention weights)
    budget: the share of the positions seen so far that the cache keeps (0.5: about half the memory).
    bits 8 or 4: store keys and values as integers (KIVI, Liu et al. 2024), written 'int8' / 'int4' as the
               policy: keys per channel and values per token in groups of `group`, the most recent
               `residual` (to residual + group - 1) positions kept in full precision. Not combined with
               eviction (policy none).
    """

    policy: str = "none"
    budget: float = 0.5
    sinks: int = 4
    recent: float = 0.5  # h2o: the share of the kept positions that are the most recent ones
    bits: int = 16
    group: int = 32  # tokens per key scale, channels per value scale
    residual: int = 32  # recent positions kept in full precision (KIVI's R)

    def __post_init__(self) -> None:
        if self.policy not in KV_POLICIES:
            raise ConfigError(f"kv policy must be one of {', '.join(KV_POLICIES + ('int8', 'int4'))}, "
                              f"got {shown(self.policy)}")
        if not is_number(self.budget) or not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"kv budget must be a number in (0, 1], got {shown(self.budget)}")
        if not is_int(self.sinks) or not 0 <= self.sinks <= 1024:
            raise ConfigError(f"kv sinks must be an integer in [0, 1024], got {shown(self.sinks)}")
        if not is_number(self.recent) or not 0.0 < self.recent <= 1.0:
            raise ConfigError(f"kv recent must be a number in (0, 1], got {shown(self.recent)}")
        if not is_int(self.bits) or self.bits not in KV_BITS:
            raise ConfigError(f"kv bits must be 8 or 4 (16: not quantised), got {shown(self.bits)}")
        if not is_int(self.group) or not 2 <= self.group <= 4096 or self.group % 2:
            raise ConfigError(f"kv group must be an even integer in [2, 4096], got {shown(self.group)}")
        if not is_int(self.residual) or not 0 <= self.residual <= 65536:
            raise ConfigError(f"kv residual must be an integer in [0, 65536], got {shown(self.residual)}")
        if self.bits < 16 and self.policy != "none":
            raise ConfigError(f"kv quantisation (int{self.bits}) does not combine with eviction ({self.policy}): "
                              "use one of them")

    @property
    def quantised(self) -> bool:
        """Whether keys and values are stored as integers (workbench.kv_quant)."""
        return self.bits < 16

    @property
    def active(self) -> bool:
        """Whether the cache is compressed at all (budget 1 keeps every position: the uncompressed cache)."""
        return self.quantised or (self.policy != "none" and self.budget < 1.0)

    @property
    def name(self) -> str:
        """The policy as written: 'int8', 'int4' or the eviction policy."""
        return f"int{self.bits}" if self.quantised else self.policy

    @classmethod
    def parse(cls, text: str) -> "KVConfig":
        """'streaming:budget=0.5,sinks=4', 'h2o:budget=0.5,recent=0.5', 'int4:group=32,residual=32' or 'none'
        -> the config (CLI, app)."""
        policy, values = parse_knobs(text, "kv", "h2o:budget=0.5",
                                     {"budget": float, "sinks": int, "recent": float, "group": int, "residual": int})
        if policy in ("int8", "int4"):
            evicting = sorted(set(values) & {"budget", "sinks", "recent"})
            if evicting:
                raise ConfigError(f"kv {policy} takes group=... and residual=..., not {evicting[0]}=...")
            return cls(bits=int(policy[3:]), **values)
        quant = sorted(set(values) & {"group", "residual"})
        if quant:
            raise ConfigError(f"kv {policy or 'none'} takes no {quant[0]}=... (that is int8/int4's)")
        return cls(policy=policy or "none", **values)

    def describe(self) -> str:
        """One line naming the policy and its setting (a lossy run's `Trace.lossy` entry)."""
        if self.quantised:
            what = f"KV-cache quantisation (int{self.bits}: group={self.group}, residual={self.residual})"
        else:
            knobs = f"budget={self.budget:g}, sinks={self.sinks}" + (f", recent={self.recent:g}"
                                                                    if self.policy == "h2o" else "")
            what = f"KV-cache compression ({self.policy}: {knobs})"
        return f"{what}; the drafting stays lossless with respect to the compressed target"

    def text(self) -> str:
        """The text form `parse` reads back ('h2o:budget=0.5,sinks=4,recent=0.5', 'int4:group=32,residual=32'),
        as a run's parameters store it."""
        if self.quantised:
            return f"int{self.bits}:group={self.group},residual={self.residual}"
        if self.policy == "none":
            return "none"
        extra = f",recent={self.recent:g}" if self.policy == "h2o" else ""
        return f"{self.policy}:budget={self.budget:g},sinks={self.sinks}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
