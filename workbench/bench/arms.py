"""What a benchmark runs: its *arms* (a method with fixed parameters), parsed from the command line.

--methods m1,m2           methods to compare; plain greedy decoding (autoregressive) is always the
                          baseline and always runs first
--param m.key=value       a fixed parameter of method m (repeatable)
--sweep m.key=v1,v2,...   one arm per value (repeatable: two sweeps of one method make a grid, at
                          most two per method; sweeps of two methods sweep each on its own)
--backends b1,b2          every arm runs on each backend (workbench.backend), its own baseline included
--accept RULE[:K=V,...]   every drafting arm once per acceptance rule given (repeatable; lossy unless exact:
                          workbench.config.AcceptanceConfig); the baseline drafts nothing and runs once
--kv POLICY[:K=V,...]     every arm but the baseline once per KV-cache compression given (eviction or int8/int4;
                          repeatable; lossy unless none: workbench.config.KVConfig); the baseline keeps its
                          whole cache

Every value is checked against the method's declared parameters (workbench.methods)
before anything is loaded, so bad input fails at once with one line.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from ..backend import check_backend
from ..config import BASELINE, AcceptanceConfig, ConfigError, KVConfig
from ..methods import get_method, resolve_params

TRACE_OFF_LABEL = "autoregressive[trace=off]"
MAX_SWEEPS = 2  # per method: a grid over two parameters
LARGEST_VOCAB = 10_000_000  # what an arm's lossless flag assumes before a model is loaded (conservative)


@dataclass(frozen=True)
class Arm:
    """One configuration to time: a method, its (resolved) parameters and a unique label."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    swept: dict[str, Any] = field(default_factory=dict)  # the swept parameters' values (also in params)
    trace: bool = True  # False: decode with DecodeConfig(trace=False), for the tracing-overhead measurement
    backend: str = "eager"  # how its forwards run (workbench.backend)
    draft: str | None = None  # a draft model spec of its own (None: the benchmark's draft, if it uses one)
    acceptance: AcceptanceConfig = AcceptanceConfig()  # the verifier's rule for this arm (relaxed: lossy)
    kv: KVConfig = KVConfig()  # this arm's KV-cache compression (evicting: lossy)

    @property
    def key(self) -> str:
        """Unique among a benchmark's arms: the label and the backend."""
        return f"{self.label}@{self.backend}"

    @property
    def lossless(self) -> bool:
        """The method is lossless and the acceptance rule admits nothing more under greedy (any vocabulary)."""
        return (get_method(self.method).lossless and self.acceptance.exact(greedy=True, vocab=LARGEST_VOCAB)
                and not self.kv.active)

    @property
    def needs_draft(self) -> bool:
        return get_method(self.method).needs_draft_model


def parse_backends(text: str) -> list[str]:
    """"eager,compiled" -> ["eager", "compiled"] (checked, duplicates dropped)."""
    names = [b.strip() for b in (text or "").split(",") if b.strip()]
    if not names:
        raise ConfigError("--backends is empty: give e.g. --backends eager,compiled")
    return list(dict.fromkeys(check_backend(b) for b in names))


def on_backends(arms: list[Arm], backends: list[str]) -> list[Arm]:
    """Every arm once per backend, backend by backend (each backend's baseline first)."""
    return [replace(a, backend=b) for b in backends for a in arms]


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in (text or "").split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods is empty: give e.g. --methods speculative,prompt_lookup")
    for m in methods:
        get_method(m)  # ConfigError naming the known methods
    return list(dict.fromkeys(methods))


def _split_key(text: str, option: str) -> tuple[str, str, str]:
    lhs, sep, value = text.partition("=")
    method, dot, key = lhs.strip().partition(".")
    if not sep or not dot or not method or not key.strip():
        form = ("METHOD.KEY=V1,V2,... (e.g. speculative.gamma=1,2,4)" if option == "--sweep"
                else "METHOD.KEY=VALUE (e.g. speculative.gamma=4)")
        raise ConfigError(f"{option} expects {form}, got {text!r}")
    get_method(method)
    return method, key.strip(), value.strip()


def parse_params(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """["speculative.gamma=4", ...] -> {"speculative": {"gamma": 4}} (typed, validated)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        method, key, value = _split_key(pair, "--param")
        if value == "":
            raise ConfigError(f"--param {pair!r} has no value")
        out.setdefault(method, {})[key] = value
    for method, given in out.items():
        resolved = resolve_params(method, given)
        out[method] = {k: resolved[k] for k in given}
    return out


def parse_sweeps(specs: list[str]) -> list[tuple[str, str, list[Any]]]:
    """["speculative.gamma=1,2,4"] -> [("speculative", "gamma", [1, 2, 4])] (typed, validated)."""
    specs = list(specs or [])
    out: list[tuple[str, str, list[Any]]] = []
    for spec in specs:
        method, key, values = _split_key(spec, "--sweep")
        raw = [v.strip() for v in values.split(",")]
        if not values or any(v == "" for v in raw):
            raise ConfigError(f"--sweep expects METHOD.KEY=V1,V2,... with no empty value, got {spec!r}")
        typed = [resolve_params(method, {key: v})[key] for v in raw]
        if any((m, k) == (method, key) for m, k, _ in out):
            raise ConfigError(f"--sweep {method}.{key} is given twice")
        if sum(m == method for m, _, _ in out) >= MAX_SWEEPS:
            raise ConfigError(f"at most {MAX_SWEEPS} --sweep options per method (a grid over two parameters); "
                              f"{method} has more")
        out.append((method, key, list(dict.fromkeys(typed))))
    return out


def parse_accepts(specs: list[str] | None) -> list[AcceptanceConfig]:
    """["typical:eps=0.09,delta=0.3", "exact"] -> their configs, in order, duplicates dropped; [] -> [exact]."""
    out = [AcceptanceConfig.parse(s) for s in specs or []] or [AcceptanceConfig()]
    return list(dict.fromkeys(out))


def parse_kvs(specs: list[str] | None) -> list[KVConfig]:
    """["h2o:budget=0.5", "none"] -> their configs, in order, duplicates dropped; [] -> [none]."""
    out = [KVConfig.parse(s) for s in specs or []] or [KVConfig()]
    return list(dict.fromkeys(out))


def _kv_label(kv: KVConfig) -> str:
    """An arm label's suffix for its KV-cache compression ('' for none)."""
    return f"+kv:{kv.text()}" if kv.active else ""


def _accept_label(acc: AcceptanceConfig) -> str:
    """An arm label's suffix for its acceptance rule ('' for exact)."""
    return "" if acc.rule == "exact" else f"+{acc.text()}"


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def build_arms(methods: list[str], params: dict[str, dict[str, Any]] | None = None,
               sweeps: list[tuple[str, str, list[Any]]] | None = None, trace_overhead: bool = True,
               accepts: list[AcceptanceConfig] | None = None, kvs: list[KVConfig] | None = None) -> list[Arm]:
    """The baseline first, then (optionally) the untraced baseline, then each method (one arm per sweep point),
    each drafting arm once per acceptance rule of `accepts` (default: exact only), and every arm but the
    baseline once per KV-cache compression of `kvs` (an evicting one also adds plain decoding over it)."""
    arms = _build_arms(methods, params, sweeps, trace_overhead)
    accepts = accepts or [AcceptanceConfig()]
    kvs = kvs or [KVConfig()]
    base = [a for a in arms if a.method == BASELINE]
    out = list(base)
    out += [replace(base[0], label=BASELINE + _kv_label(kv), kv=kv) for kv in kvs if kv.active]
    for a in arms:
        if a.method != BASELINE:
            out += [replace(a, label=a.label + _accept_label(acc) + _kv_label(kv), acceptance=acc, kv=kv)
                    for kv in kvs for acc in accepts]
    return out


def _build_arms(methods: list[str], params: dict[str, dict[str, Any]] | None,
                sweeps: list[tuple[str, str, list[Any]]] | None, trace_overhead: bool) -> list[Arm]:
    params = params or {}
    sweeps = sweeps or []
    order = [m for m in methods if m != BASELINE]
    for m, _, _ in sweeps:
        if m == BASELINE:
            raise ConfigError(f"'{BASELINE}' is the baseline and has no parameters to sweep")
        if m not in order:
            order.append(m)
    for m in params:
        if m not in order and m != BASELINE:
            raise ConfigError(f"--param for method '{m}', which is not in --methods")
    arms = [Arm(BASELINE, BASELINE, resolve_params(BASELINE, params.get(BASELINE)))]
    if trace_overhead:
        arms.append(Arm(TRACE_OFF_LABEL, BASELINE, dict(arms[0].params), trace=False))
    for m in order:
        fixed = params.get(m, {})
        mine = [(k, vals) for sm, k, vals in sweeps if sm == m]
        if not mine:
            arms.append(Arm(m, m, resolve_params(m, fixed)))
            continue
        keys = [k for k, _ in mine]
        for combo in itertools.product(*[vals for _, vals in mine]):
            swept = dict(zip(keys, combo))
            label = f"{m}[{','.join(f'{k}={_fmt(v)}' for k, v in swept.items())}]"
            arms.append(Arm(label, m, resolve_params(m, {**fixed, **swept}), swept=swept))
    return arms
