"""The drafter plugin interface, parameter schemas and the method registry.

A method is a Drafter subclass registered by name. It declares its parameters
(a schema the CLI, the UI forms and benchmark sweeps read), whether it is
lossless, and whether it needs a draft model. The engine owns the decode loop
and verification; a drafter only proposes (`propose`) and learns (`observe`),
like transformers' candidate generators, and never touches the target's cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..config import ConfigError, SamplingConfig
from ..tree import Draft


@dataclass(frozen=True)
class Param:
    """One declared method parameter."""

    name: str
    type: str  # "int" | "float" | "bool" | "choice" | "str"
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, value: Any) -> Any:
        """Convert a CLI/UI value to this parameter's type and check its range."""
        try:
            if self.type == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out: Any = int(value)
            elif self.type == "float":
                out = float(value)
            elif self.type == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError
                    out = value.lower() in ("1", "true", "yes", "on")
                else:
                    out = bool(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter '{self.name}' expects {self.type}, got {value!r}") from None
        if self.type == "choice" and out not in self.choices:
            raise ConfigError(f"parameter '{self.name}' must be one of {', '.join(self.choices)}, got {out!r}")
        if self.min is not None and out < self.min:
            raise ConfigError(f"parameter '{self.name}' must be >= {self.min}, got {out}")
        if self.max is not None and out > self.max:
            raise ConfigError(f"parameter '{self.name}' must be <= {self.max}, got {out}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help,
                "min": self.min, "max": self.max, "choices": list(self.choices)}


@dataclass
class DrafterEnv:
    """What a drafter may use: the models (read-only), sampling settings, the run's RNG."""

    target: Any  # workbench.models.LoadedModel
    draft: Any | None  # LoadedModel or None
    sampling: SamplingConfig
    generator: torch.Generator | None
    device: torch.device


@dataclass
class DraftContext:
    """The state a drafter sees when asked for a draft."""

    tokens: list[int]  # prompt + everything committed so far
    n_prompt: int
    max_tokens: int  # drafting more than this many tokens deep is wasted (budget left - 1)
    step: int


@dataclass
class StepFeedback:
    """What happened to the last draft; passed to `observe`."""

    draft: Draft | None
    accepted: list[int]  # accepted node indices
    committed: list[int]  # tokens appended this step
    tokens: list[int] = field(default_factory=list)  # the full context after the step


class Drafter:
    """Base class of every decoding method. Subclass, declare, register."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    needs_draft_model: ClassVar[bool] = False
    tree: ClassVar[bool] = False  # proposes branching trees (not only chains)
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, env: DrafterEnv, **params: Any) -> None:
        self.env = env
        self.p = params

    def begin(self, prompt_ids: list[int]) -> None:
        """Called once before decoding (e.g. to prefill a draft model)."""

    def propose(self, ctx: DraftContext) -> Draft | None:
        """Return a draft tree for the next step, or None to let the target decode one token."""
        return None

    def observe(self, fb: StepFeedback) -> None:
        """Adaptive hook, called after every verification."""

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "label": cls.label or cls.name, "description": cls.description,
                "lossless": cls.lossless, "needs_draft_model": cls.needs_draft_model, "tree": cls.tree,
                "params": [p.to_dict() for p in cls.params]}


_REGISTRY: dict[str, type[Drafter]] = {}


def register(cls: type[Drafter]) -> type[Drafter]:
    """Class decorator: make a method available to the engine, CLI, UI and benchmarks."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method '{cls.name}' is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Drafter]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(_REGISTRY))}") from None


def list_methods() -> list[type[Drafter]]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def resolve_params(method: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """Validate user parameters against the method's schema and fill in defaults."""
    cls = get_method(method)
    schema = {p.name: p for p in cls.params}
    given = dict(given or {})
    unknown = sorted(set(given) - set(schema))
    if unknown:
        known = ", ".join(schema) or "none"
        raise ConfigError(f"method '{method}' has no parameter {', '.join(map(repr, unknown))} (parameters: {known})")
    return {name: (p.parse(given[name]) if name in given else p.default) for name, p in schema.items()}
