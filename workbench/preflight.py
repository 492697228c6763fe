"""Every check made before a run is recorded, in one place: the CLI, the app, the benchmark, cluster
workers and the Python API call these, so they can never disagree about what a valid run is.

Two stages, because some checks need the models and some must not wait for them:
- `check_request`: what needs no model (prompt, method and its parameters, a draft model given when the
  method needs one, sampling, the token budget, the backend) -> a `Request` of validated values;
- `check_models`: what needs the loaded models (the draft's vocabulary, the prompt encoding to some
  tokens, prompt + new tokens fitting each model's positions).

Each raises ConfigError (IncompatibleModelsError for vocabularies) with one line that says what to change;
nothing here loads, records or decodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .backend import GIVE_EAGER, check_backend, check_compression_backend
from .config import AcceptanceConfig, ConfigError, DecodeConfig, KVConfig, SamplingConfig
from .methods import get_method, list_methods, resolve_params
from .models import IncompatibleModelsError, check_compatible

# What a surface without its own words says to do when a method lacks its draft model.
GIVE_DRAFT = "add --draft, e.g. smollm2-135m:bf16"


@dataclass(frozen=True)
class Request:
    """A run's settings once checked: what a runner may rely on without checking again."""

    method: str
    params: dict[str, Any]  # every declared parameter, parsed, defaults filled in
    sampling: SamplingConfig
    decode: DecodeConfig
    backend: str
    draft: str | None  # None where the method drafts without a model (a draft given to it is not recorded)
    acceptance: AcceptanceConfig = AcceptanceConfig()  # the verifier's rule (a relaxed one makes the run lossy)
    kv: KVConfig = KVConfig()  # the target's KV-cache compression (an evicting one makes the run lossy)


def check_request(method: str, prompt: Any, *, draft: str | None = None, params: dict[str, Any] | None = None,
                  sampling: SamplingConfig | None = None, max_new_tokens: int = 128, chat: bool | None = None,
                  backend: str | None = None, trace: bool = True, give_draft: str = GIVE_DRAFT,
                  acceptance: AcceptanceConfig | str | None = None, kv: KVConfig | str | None = None,
                  give_eager: str = GIVE_EAGER) -> Request:
    """Check everything about a run that needs no model; raise ConfigError with one line, else the Request.

    give_draft: how this surface tells a user to give a draft model (the CLI's flag, the app's dropdown).
    give_eager: how it tells a user to choose the eager backend (KV-cache compression runs on it only).
    acceptance: an AcceptanceConfig or its text form ('typical:eps=0.09,delta=0.3'); None: exact.
    kv: a KVConfig or its text form ('h2o:budget=0.5'); None: no compression (eager backend only).
    """
    check_prompt(prompt)
    if chat is not None and not isinstance(chat, bool):
        raise ConfigError(f"chat must be True, False or None, got {chat!r}")
    cls = get_method(method)
    resolved = resolve_params(method, params)
    sampling = SamplingConfig() if sampling is None else sampling
    if not isinstance(sampling, SamplingConfig):
        raise ConfigError(f"sampling must be a SamplingConfig, not {type(sampling).__name__}")
    decode = DecodeConfig(max_new_tokens=max_new_tokens, trace=trace)
    backend = check_backend(backend)
    check_draft_given(method, bool(draft), give_draft)
    return Request(method=method, params=resolved, sampling=sampling, decode=decode, backend=backend,
                   draft=draft if cls.needs_draft_model else None,
                   acceptance=check_acceptance(acceptance, cls, resolved), kv=check_kv(kv, backend, give_eager))


def check_acceptance(acceptance: Any, cls: Any = None, params: dict[str, Any] | None = None) -> AcceptanceConfig:
    """An AcceptanceConfig, its text form or None (exact) -> the config; ConfigError with one line otherwise,
    also when the method `cls` verifies with a rule of its own (BiLD) and a relaxed one is asked for."""
    if acceptance is None:
        acceptance = AcceptanceConfig()
    elif isinstance(acceptance, str):
        acceptance = AcceptanceConfig.parse(acceptance)
    elif not isinstance(acceptance, AcceptanceConfig):
        raise ConfigError(f"acceptance must be an AcceptanceConfig or text like 'typical:eps=0.09,delta=0.3', "
                          f"not {type(acceptance).__name__}")
    if cls is not None and acceptance.rule != "exact" and cls.verify_rule(params or {}) is not None:
        raise ConfigError(f"method '{cls.name}' verifies with its own rule (its parameters); leave out the "
                          f"acceptance option")
    return acceptance


def check_kv(kv: Any, backend: str, give_eager: str = GIVE_EAGER) -> KVConfig:
    """A KVConfig, its text form or None (no compression) -> the config; refused on a backend other than eager
    (`give_eager`: how this surface chooses the eager backend)."""
    if kv is None:
        return KVConfig()
    if isinstance(kv, str):
        kv = KVConfig.parse(kv)
    elif not isinstance(kv, KVConfig):
        raise ConfigError(f"kv must be a KVConfig or text like 'h2o:budget=0.5', not {type(kv).__name__}")
    check_compression_backend(kv.active, backend, give_eager)
    return kv


def check_prompt(prompt: Any) -> None:
    """A prompt is non-blank text or a list of chat messages with some content."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("the prompt is empty")
        return
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise ConfigError(f"a prompt must be text or a list of chat messages ({{'role', 'content'}} dicts), "
                          f"not {type(prompt).__name__}")
    if not any(str(m.get("content", "")).strip() for m in prompt):
        raise ConfigError("the prompt is empty")


def check_draft_given(methods: str | Iterable[str], draft_given: bool, give_draft: str = GIVE_DRAFT) -> None:
    """Refuse methods that need a draft model when none is given, naming them and how to give one."""
    names = [methods] if isinstance(methods, str) else list(methods)
    missing = sorted({m for m in names if get_method(m).needs_draft_model}) if not draft_given else []
    if missing:
        raise ConfigError(f"method {', '.join(missing)} needs a draft model: {give_draft}")


def check_models(method: str | None, target: Any, draft: Any | None, prompt_ids: list[int],
                 max_new_tokens: int) -> None:
    """The checks that need the loaded models (see the module docstring); `method` None: plain decoding."""
    if draft is not None:
        check_draft_vocabulary(method, target, draft)
    if not prompt_ids:
        raise ConfigError("the prompt encodes to no tokens")
    for lm in (m for m in (target, draft) if m is not None):
        check_fits(lm, len(prompt_ids), max_new_tokens)


def check_draft_vocabulary(method: str | None, target: Any, draft: Any) -> None:
    """Refuse a draft whose vocabulary differs from the target's (check_compatible), unless `method`
    drafts across tokenizers (cross_vocab); the error names the methods that would accept the draft."""
    if method is not None and get_method(method).any_draft_tokenizer:
        return
    try:
        check_compatible(target, draft)
    except IncompatibleModelsError as exc:
        names = [m.name for m in list_methods() if m.any_draft_tokenizer]
        if not names:
            raise
        raise IncompatibleModelsError(f"{exc}; only {', '.join(names)} drafts across tokenizers") from None


def check_fits(lm: Any, n_prompt: int, max_new_tokens: int) -> None:
    """Refuse a prompt + max_new_tokens longer than `lm` can attend to, with the numbers.

    Drafts never reach past the token budget (the engine caps their depth), so
    positions stay below n_prompt + max_new_tokens. A sliding window limits
    nothing: the backends' caches keep every position (workbench.kv_cache), so
    a drafting method rolls them back on such a model like on any other.
    """
    total = n_prompt + max_new_tokens
    limit = lm.max_positions
    if limit is not None and total > limit:
        room = (f"lower max_new_tokens to at most {limit - n_prompt}" if n_prompt < limit
                else "shorten the prompt")
        raise ConfigError(f"the prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) = {total} tokens is "
                          f"more than '{lm.spec}' can attend to ({limit} positions); {room}")
