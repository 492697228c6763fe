"""What the advisor tries for a target: the methods that apply, with the drafters at hand, a few settings each.

A method applies (workbench.methods' registry says what it needs):
- without a draft model (prompt lookup, SAM, ADED, lookahead, Jacobi, recycling, layer skipping): always;
- with a trained head (eagle, medusa, hydra): when a head of that kind is found for the target (the
  user's heads first, then the shipped ones: workbench.heads) or given with --head, and its card
  matches the target;
- with a draft model: for each draft given (--draft) that shares the target's vocabulary, every
  draft-model method but cross_vocab; for a draft of another vocabulary, cross_vocab only.
Lossy methods are left out: the advice is among methods whose output is plain decoding's.

Each applicable method is probed at its defaults (tier 0) and, when the budget allows, at the few other
settings in EXTRA_SETTINGS (tier 1): fixed draft lengths that a flatter machine would reward, and the
cost-sized variants' fixed twins. A method missing there is probed at its defaults only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..bench.arms import Arm
from ..config import BASELINE, HEAD_KINDS, ConfigError
from ..heads import HeadError, find_head, load_head, read_card
from ..methods import get_method, list_methods, resolve_params
from ..models import IncompatibleModelsError, check_compatible

EXTRA_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "speculative": [{"gamma": 0}, {"gamma": 2}, {"gamma": 8}],
    "prompt_lookup": [{"cost_aware": False}],
    "sam": [{"cost_aware": False}],
    "recycling": [{"sizing": "fixed", "max_nodes": 8}],
    "tree_dynamic": [{"sizing": "fixed", "total_tokens": 8}],
    "eagle": [{"mode": "chain", "depth": 4}, {"sizing": "fixed", "total_tokens": 8}],
    "medusa": [{"tree": "chain4"}],
    "hydra": [{"tree": "chain4"}],
}
KINDS = ("no draft model", "trained head", "draft model")


class AdviceError(ConfigError):
    """Advice that cannot be given as asked: one line that says why and what to do."""


@dataclass(frozen=True)
class Config:
    """One configuration to probe: a method, the parameters given (the rest at their defaults), its draft."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    draft: str | None = None  # a draft model spec (draft-model methods)
    tier: int = 0  # 0: the method's defaults; 1: another setting, probed when the budget allows

    @property
    def kind(self) -> str:
        return kind_of(self.method)

    def arm(self) -> Arm:
        """The benchmark arm that runs it (workbench.bench)."""
        return Arm(self.label, self.method, resolve_params(self.method, self.params), draft=self.draft)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, "params": dict(self.params), "draft": self.draft,
                "tier": self.tier, "kind": self.kind}


def kind_of(method: str) -> str:
    """What a method drafts with: one of KINDS."""
    cls = get_method(method)
    if cls.needs_draft_model:
        return "draft model"
    return "trained head" if cls.needs_hidden_states else "no draft model"


def candidate_methods() -> list[str]:
    """Every lossless method that drafts (plain decoding is the baseline, not a candidate)."""
    return [m.name for m in list_methods() if m.name != BASELINE and m.lossless and m.drafts()]


def draft_suggestions(target: str) -> list[str]:
    """Draft specs that fit any target by construction: its own int8 and bf16 copies."""
    name = (target or "").split(":")[0]
    return [f"{name}:int8", f"{name}:bf16"] if name else []


@dataclass
class Drafters:
    """The drafters at hand for a target, checked against it."""

    drafts: list[Any]  # LoadedModel, in the order given
    heads: dict[str, str]  # head kind -> ref ("" for the default head of that kind)
    notes: list[str] = field(default_factory=list)


def find_drafters(tgt, drafts: list[Any], head_refs: list[str]) -> Drafters:
    """The heads for `tgt` (those given, else every kind's default head found) and the drafts given.

    A head given that does not fit the target is an error (HeadError names it); a default head that is
    missing or does not fit is a note, and its method is left out."""
    heads: dict[str, str] = {}
    notes: list[str] = []
    for ref in head_refs:
        try:
            path = find_head(ref, tgt, HEAD_KINDS[0])  # a name or a directory; its kind is on its card
        except HeadError:
            raise AdviceError(f"no head {ref!r}: give a head directory or a name `workbench heads` lists") from None
        card = read_card(path)
        load_head(ref, tgt, card["kind"])  # fits this target, or HeadError
        heads[card["kind"]] = ref
    if not head_refs:
        missing = []
        for kind in HEAD_KINDS:
            try:
                load_head("", tgt, kind)
            except HeadError:
                missing.append(kind)
                continue
            heads[kind] = ""
        if missing:
            notes.append(f"{', '.join(missing)}: no trained head for {tgt.spec} (train one: `workbench train --kind "
                         f"{missing[0]} --target {tgt.spec}`, or import a published one with `workbench heads "
                         f"import`)")
    return Drafters(drafts=list(drafts), heads=heads, notes=notes)


def _label(method: str, params: dict[str, Any], draft: str | None, name_draft: bool) -> str:
    shown = ([f"draft={draft}"] if draft and name_draft else []) + [f"{k}={_fmt(v)}" for k, v in params.items()]
    return f"{method}[{','.join(shown)}]" if shown else method


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def configurations(tgt, drafters: Drafters, methods: list[str] | None = None) -> tuple[list[Config], dict[str, str]]:
    """Every configuration to probe, tier 0 first, and the methods that do not apply with what each needs;
    AdviceError when no method applies (saying what would)."""
    wanted = list(methods) if methods else candidate_methods()
    for m in wanted:
        get_method(m)  # ConfigError naming the known methods
    compatible, other_vocab = [], []
    for d in drafters.drafts:
        try:
            check_compatible(tgt, d)
            compatible.append(d.spec)
        except IncompatibleModelsError:
            other_vocab.append(d.spec)
    name_draft = len(drafters.drafts) > 1
    out: list[Config] = []
    missing: dict[str, str] = {}
    for m in wanted:
        cls = get_method(m)
        if m == BASELINE or not cls.lossless:
            continue
        if cls.needs_draft_model:
            specs = other_vocab if cls.any_draft_tokenizer else compatible
            if not specs:
                missing[m] = _needs_draft(tgt.spec, cls.any_draft_tokenizer)
            for spec in specs:
                out += _settings(m, {}, spec, name_draft)
        elif cls.needs_hidden_states:
            kind = getattr(cls, "kind", "") or m  # the head kind it drafts with (blockwise: medusa's heads)
            if kind not in drafters.heads:
                missing[m] = _needs_head(tgt.spec, kind)
                continue
            ref = drafters.heads[kind]
            out += _settings(m, {"head": ref} if ref else {}, None, False)
        else:
            out += _settings(m, {}, None, False)
    if not out:
        raise AdviceError(no_drafter_message(tgt.spec, missing, wanted))
    return sorted(out, key=lambda c: c.tier), missing


def _settings(method: str, base: dict[str, Any], draft: str | None, name_draft: bool) -> list[Config]:
    out = [Config(_label(method, base, draft, name_draft), method, dict(base), draft, 0)]
    for extra in EXTRA_SETTINGS.get(method, []):
        params = {**base, **extra}
        out.append(Config(_label(method, params, draft, name_draft), method, params, draft, 1))
    return out


def _needs_head(target: str, kind: str) -> str:
    return (f"a trained {kind} head for {target} (train one: `workbench train --kind {kind} --target {target}`; "
            f"or import a published one with `workbench heads import`, then --head NAME)")


def _needs_draft(target: str, any_vocab: bool) -> str:
    if any_vocab:
        return "a draft model with another vocabulary than the target's (--draft SPEC)"
    return (f"a draft model with {target}'s vocabulary (--draft, e.g. "
            f"{' or '.join(draft_suggestions(target))})")


def no_drafter_message(target: str, missing: dict[str, str], wanted: list[str]) -> str:
    """No method applies: what each one asked for needs, and the methods that need nothing."""
    needs = "; ".join(f"{m} needs {why}" for m, why in missing.items())
    free = [m for m in candidate_methods() if kind_of(m) == "no draft model" and m not in wanted]
    tail = (f". Methods that need no drafter: {', '.join(free)} (drop --methods to try them)" if free else "")
    return f"no drafter at hand applies to {target}: {needs or 'no lossless method asked for'}{tail}"
