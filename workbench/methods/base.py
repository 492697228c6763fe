"""The drafter plugin interface, parameter schemas and the method registry.

A method is a Drafter subclass registered by name. It declares its parameters
(a schema the CLI, the UI forms and benchmark sweeps read), whether it is
lossless, and whether it needs a draft model. The engine owns the decode loop
and verification; a drafter only proposes (`propose`) and learns (`observe`),
like transformers' candidate generators, and never touches the target's cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch

from ..backend import open_session
from ..backend.profile import CostModel
from ..config import AcceptanceConfig, ConfigError, SamplingConfig, is_int, is_number, shown
from ..draft import Draft
from .sizing import SizingLog


# A longer parameter string is a mistake (or an attack on a shared server), never a tree spec.
MAX_PARAM_TEXT = 10_000
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Param:
    """One declared method parameter.

    `parse` accepts what the CLI (strings), the UI (numbers, bools, strings) and
    Python callers pass, and refuses bools where numbers are meant, NaN, infinity,
    fractional ints and out-of-range values with one ConfigError line. `check`,
    when given, validates the parsed value further (e.g. a tree spec) and raises
    ConfigError, so a bad value is refused before any run is recorded.
    """

    name: str
    type: str  # "int" | "float" | "bool" | "choice" | "str"
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def parse(self, value: Any) -> Any:
        """Convert a CLI/UI value to this parameter's type and check its range."""
        out = self._convert(value)
        if out is None:
            raise ConfigError(f"parameter '{self.name}' expects {self.type}, got {shown(value)}")
        if self.type == "choice" and out not in self.choices:
            raise ConfigError(f"parameter '{self.name}' must be one of {', '.join(self.choices)}, got {shown(out)}")
        if self.min is not None and out < self.min:
            raise ConfigError(f"parameter '{self.name}' must be >= {_num(self.min)}, got {shown(out)}")
        if self.max is not None and out > self.max:
            raise ConfigError(f"parameter '{self.name}' must be <= {_num(self.max)}, got {shown(out)}")
        if self.check is not None:
            self.check(out)
        return out

    def _convert(self, value: Any) -> Any:
        """The value as this parameter's type, or None when it is not one."""
        if isinstance(value, str):
            if len(value) > MAX_PARAM_TEXT:
                return None
            text = value.strip()
            if self.type in ("int", "float"):
                return _number_from_text(text, self.type)
            if self.type == "bool":
                return True if text.lower() in _TRUE else False if text.lower() in _FALSE else None
            return value
        if self.type == "int":
            if is_int(value):
                return value
            return int(value) if is_number(value) and float(value).is_integer() else None
        if self.type == "float":
            return _finite_float(value)
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            return bool(value) if is_number(value) and value in (0, 1) else None
        return None  # "str" and "choice" take text only

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help,
                "min": self.min, "max": self.max, "choices": list(self.choices)}


def cost_aware_param(action: str, per: str = "", extra: str = "") -> Param:
    """The shared `cost_aware` switch: cut the draft to the length its learned acceptance pays for here.

    action: what is cut ("draft only as many tokens"); per: what acceptance is learned per; extra: a
    closing clause of the method's own (what false means).
    """
    per = f" (per {per})" if per else ""
    return Param("cost_aware", "bool", True, f"{action} as their learned acceptance{per} pays for on this "
                 f"hardware (measured cost profile){extra}")


def adaptive_length_param(default: bool = False) -> Param:
    """The shared `adaptive` switch of the match-length drafters: shrink after a miss, grow after a full accept."""
    return Param("adaptive", "bool", default, "shrink the draft after a miss, grow it after a full accept "
                 "(cost_aware learns the length per kind of match instead)")


# A run's history: (target spec, at most n runs) -> (a key naming that history, the output ids of the newest
# finished runs of that target, oldest first). The caller that owns a run store hands it in (workbench.record).
RunHistory = Callable[[str, int], "tuple[tuple, list[list[int]]]"]


@dataclass
class DrafterEnv:
    """What a drafter may use from outside: the models (read-only), sampling settings, the run's RNG, the
    backend, the machine's cost model and the run history. A drafter reads nothing else: not the machine,
    not the store.

    A drafter that runs a model (a draft model, a view of the target) opens its KV
    cache with `session(lm)`: it runs on the run's backend (workbench.backend),
    sized for the run, and the engine closes it when the run ends.
    """

    target: Any  # workbench.models.LoadedModel
    draft: Any | None  # LoadedModel or None
    sampling: SamplingConfig
    generator: torch.Generator | None
    backend: str = "eager"
    max_len: int = 0  # positions a run may cache: prompt + new tokens + one draft
    # what forwards cost on this machine (cost-aware drafters size their drafts from it); tests hand in a stand-in
    costs: CostModel = field(default_factory=CostModel)
    history: RunHistory | None = None  # earlier runs' outputs (sam corpus=history); None: no run store at hand
    # why cost-aware sizing chose a plain step (workbench.methods.sizing); the engine counts it per step
    sizing: SizingLog = field(default_factory=SizingLog)
    sessions: list = field(default_factory=list)

    def session(self, lm: Any, backend: str | None = None) -> Any:
        """A KV session for `lm` on the run's backend (or `backend`), closed with the run."""
        s = open_session(backend or self.backend, lm, self.max_len)
        self.sessions.append(s)
        return s

    def close_sessions(self) -> None:
        while self.sessions:
            self.sessions.pop().close()


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
    # Only for drafters that declare `needs_hidden_states`: the target's final hidden states (k, H) of the
    # positions this step added to its cache, from the forward it already ran. After prefill (draft None)
    # every prompt position; after a decode step the root and each accepted node. Row j belongs to position
    # len(tokens) - 1 - k + j, so the drafter holds states for every committed token but the last. A drafter
    # whose `wants_feature_layers` is true after `begin` gets (k, H (1 + m)): the final states, then the
    # outputs of the m decoder layers `cache.feature_layers` picks (a head with fused features); when it is a
    # tuple of indices into the model's `hidden_states`, those layers' (an EAGLE-3 head's three).
    hidden: torch.Tensor | None = None


# The families methods are grouped by, in the order `workbench methods` and the app list them (docs/methods.md
# has a section for each); a method declaring none is listed last, under OTHER_FAMILY.
FAMILIES = ("Plain decoding", "Draft model, chain", "Draft model, tree", "Without a draft model", "Trained heads")
OTHER_FAMILY = "Other"


class Drafter:
    """Base class of every decoding method. Subclass, declare, register.

    The engine calls, in this order: `begin` once (before the clock starts), then per step
    `propose`, one verification forward, `observe_target` (only when `wants_target_argmax`) and
    `observe`. Nothing else of a drafter is called; every hook is declared here.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""  # one of FAMILIES ("": listed under OTHER_FAMILY)
    pays_when: ClassVar[str] = ""  # one line: when the method pays off (the CLI and the app's method picker show it)
    lossless: ClassVar[bool] = True
    needs_draft_model: ClassVar[bool] = False
    tree: ClassVar[bool] = False  # proposes branching trees (not only chains)
    any_draft_tokenizer: ClassVar[bool] = False  # drafts with a model of another vocabulary (cross_vocab)
    needs_hidden_states: ClassVar[bool] = False  # observe() gets the target's final hidden states (heads)
    # ... and its feature layers' too (set by `begin`: it depends on the head): True, or the layer ids
    wants_feature_layers: bool | tuple[int, ...] = False
    wants_target_argmax: ClassVar[bool] = False  # observe_target() gets the target's argmax at every verified row
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, env: DrafterEnv, **params: Any) -> None:
        self.env = env
        self.params = params  # this run's values; the class attribute `params` is the schema

    def begin(self, prompt_ids: list[int]) -> None:
        """Called once before decoding (e.g. to prefill a draft model)."""

    def propose(self, ctx: DraftContext) -> Draft | None:
        """Return a draft tree for the next step, or None to let the target decode one token."""
        return None

    def observe_target(self, argmax_rows: list[int], draft: Draft | None) -> None:
        """Called after every verification when `wants_target_argmax`, before `observe`.

        argmax_rows: the target's most likely token at every row of the verification forward, the
        root's row first, then each draft node's (in node order): what the target itself would put
        after each position, accepted or not (Jacobi iteration and lookahead learn from them).
        """

    def observe(self, fb: StepFeedback) -> None:
        """Adaptive hook, called after every verification."""

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Validate parameters against each other (each one alone is checked by its Param); raise ConfigError."""

    def run_notes(self) -> list[dict[str, Any]]:
        """What the method says about its run when it ends ({"kind", "text", ...numbers}; `Trace.notes`)."""
        return []

    @classmethod
    def verify_rule(cls, params: dict[str, Any]) -> AcceptanceConfig | None:
        """The acceptance rule the method's own verification uses with these (resolved) parameters (a lossy
        method's rollback bound, e.g. BiLD's), in place of the run's; None: the run's rule (exact by default)."""
        return None

    @classmethod
    def drafts(cls) -> bool:
        """Whether the method proposes drafts at all (plain decoding keeps the base `propose`)."""
        return cls.propose is not Drafter.propose

    @classmethod
    def facts(cls) -> dict[str, Any]:
        """The method's declared facts and parameter schema (what `workbench methods` and the app list)."""
        return {"name": cls.name, "label": cls.label or cls.name, "description": cls.description,
                "family": cls.family or OTHER_FAMILY, "pays_when": cls.pays_when, "lossless": cls.lossless,
                "needs_draft_model": cls.needs_draft_model, "tree": cls.tree,
                "any_draft_tokenizer": cls.any_draft_tokenizer, "needs_hidden_states": cls.needs_hidden_states,
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
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    shown_name = name if isinstance(name, str) and len(name) <= 60 else shown(name)
    raise ConfigError(f"unknown method '{shown_name}'; available: {', '.join(sorted(_REGISTRY))}")


def list_methods() -> list[type[Drafter]]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def methods_by_family() -> list[tuple[str, list[type[Drafter]]]]:
    """(family, its methods sorted by shown name) in FAMILIES order, methods of no known family last."""
    groups: dict[str, list[type[Drafter]]] = {f: [] for f in FAMILIES}
    for cls in list_methods():
        groups.setdefault(cls.family if cls.family in FAMILIES else OTHER_FAMILY, []).append(cls)
    return [(f, sorted(ms, key=lambda c: ((c.label or c.name).casefold(), c.name))) for f, ms in groups.items() if ms]


def resolve_params(method: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """Validate user parameters against the method's schema and fill in defaults."""
    cls = get_method(method)
    schema = {p.name: p for p in cls.params}
    if given is not None and not isinstance(given, Mapping):
        raise ConfigError(f"method parameters must be a mapping of name to value, not {type(given).__name__}")
    given = dict(given or {})
    unknown = sorted((k for k in given if k not in schema), key=str)
    if unknown:
        known = ", ".join(schema) or "none"
        raise ConfigError(f"method '{method}' has no parameter {', '.join(map(shown, unknown))} (parameters: {known})")
    resolved = {name: (p.parse(given[name]) if name in given else p.default) for name, p in schema.items()}
    cls.check_params(resolved)
    return resolved


def _number_from_text(text: str, kind: str) -> int | float | None:
    """'3', '3.0', '1e3' -> a finite number of `kind`; None for anything else ('nan', 'inf', 'three')."""
    try:
        x = float(text)
    except ValueError:
        return None
    if not math.isfinite(x):
        return None
    if kind == "float":
        return x
    try:
        return int(text)  # exact, also beyond float precision
    except ValueError:
        return int(x) if x.is_integer() else None


def _finite_float(value: Any) -> float | None:
    if not is_number(value):
        return None
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return x if math.isfinite(x) else None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
