"""The Playground's pickers as (label, value) choices: drafts by precision, heads that fit a target, methods by family.

- ``draft_choices(specs, speeds, profiles)``: every draft spec, the fastest precision of each model on this
  machine marked, from what was already measured here (workbench.backend.speed's cached precision
  timings, else workbench.backend.profile's cached cost profiles); nothing is measured for it.
- ``head_choices(heads, target, kind)``: the default head and every head of `kind` whose card names the
  target's model (shipped, trained here or imported; workbench.heads.list_heads), each with its held-out
  accuracy from its card. The card's fingerprint is checked when the run loads the head.
- ``method_choices(groups)``: methods grouped by family (workbench.methods.methods_by_family), each shown
  as "family › label".

Plain data in, plain data out: no torch, no gradio, no store.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

from workbench.models.errors import ModelError
from workbench.models.specs import DTYPE_NAMES, QUANTS, model_base_name, normalize_spec, parse_spec

FASTEST = "fastest here"


def precision_specs(base: str) -> list[str]:
    """`base` in every precision the workbench supports: fp32, then each other dtype, then each quantisation."""
    return [base] + [f"{base}:{d}" for d in DTYPE_NAMES if d != "fp32"] + [f"{base}:{q}" for q in QUANTS]


def fp32_spec(spec: str) -> str:
    """The fp32, unquantised spec of the same model (a spec that does not parse is its own)."""
    try:
        name, opts = parse_spec(spec)
    except ModelError:
        return spec
    return normalize_spec(name, {**opts, "dtype": "fp32", "quant": None})


def _norm(spec: str) -> str:
    try:
        return normalize_spec(*parse_spec(spec))
    except ModelError:
        return spec


def fastest_precisions(speeds: Sequence[dict[str, Any]] = (),
                       profiles: Sequence[dict[str, Any]] = ()) -> dict[str, tuple[str, str]]:
    """fp32 spec -> (the fastest spec of that model here for one token, why), from what was measured.

    speeds: workbench.backend.speed results (paired against fp32; `speedup` = fp32 time / its time); a
    model with any is judged by them. profiles: workbench.backend.profile rows (seconds of a 1-token forward
    per spec), for models with no paired timing, when two or more of its precisions were profiled on one
    backend with one thread count (the caller passes this machine's, for the backend and threads in use).
    """
    out: dict[str, tuple[str, str]] = {}
    paired: dict[str, dict[str, float]] = {}
    for s in speeds:
        if s.get("rows", 1) != 1 or s.get("speedup") is None or not s.get("spec"):
            continue
        base = s.get("baseline") or fp32_spec(s["spec"])
        paired.setdefault(base, {base: 1.0})[_norm(s["spec"])] = float(s["speedup"])
    for base, ratios in paired.items():
        best = max(ratios, key=lambda k: (ratios[k], k == base))
        measured = ", ".join(f"{_precision(k)} {v:.2f}×" for k, v in sorted(ratios.items()) if k != base)
        out[base] = (best, f"per token vs fp32: {measured}")
    timed: dict[tuple[str, str, int], dict[str, float]] = {}  # (fp32 spec, backend, threads) -> spec -> seconds
    for r in profiles:
        spec, one = str(r.get("model") or ""), (r.get("seconds") or {}).get(1)
        if not spec or "|" in spec or one is None or not math.isfinite(float(one)) or float(one) <= 0:
            continue
        base = fp32_spec(spec)
        if base not in out:
            timed.setdefault((base, str(r.get("backend")), int(r.get("threads") or 0)), {})[_norm(spec)] = float(one)
    for (base, backend, threads), secs in sorted(timed.items(), key=lambda kv: -len(kv[1])):
        if len(secs) < 2 or base in out:
            continue  # one precision alone says nothing; the group timing most precisions wins
        best = min(secs, key=secs.get)
        timings = ", ".join(f"{_precision(k)} {1000 * v:.1f} ms" for k, v in sorted(secs.items()))
        out[base] = (best, f"1-token forward on {backend} with {threads} thread{'s' * (threads != 1)}, from the "
                     f"cost profiles: {timings}")
    return out


def _precision(spec: str) -> str:
    try:
        _, opts = parse_spec(spec)
    except ModelError:
        return spec
    parts = [opts["dtype"]] if opts["dtype"] != "fp32" or not opts["quant"] else []
    return "+".join(parts + ([opts["quant"]] if opts["quant"] else []))


def draft_choices(specs: Sequence[str], speeds: Sequence[dict[str, Any]] = (),
                  profiles: Sequence[dict[str, Any]] = ()) -> list[tuple[str, str]]:
    """(label, spec) for each draft spec; each model's fastest precision here is labelled "spec · fastest here"."""
    best = {spec for spec, _ in fastest_precisions(speeds, profiles).values()}
    return [(f"{s} · {FASTEST}" if _norm(s) in best else s, s) for s in specs]


def fastest_note(speeds: Sequence[dict[str, Any]] = (), profiles: Sequence[dict[str, Any]] = ()) -> str:
    """A small HTML note under the draft list: per model, its fastest precision here and what says so (or that
    nothing was timed here yet)."""
    found = fastest_precisions(speeds, profiles)
    if not found:
        body = ("No draft precision timed on this machine yet: <code>workbench models --measure</code> (or the "
                "Latency tab's <i>Measure this machine</i>) finds the fastest one here.")
    else:
        body = "<br>".join(f"<b>{html.escape(base)}</b>: <code>{html.escape(spec)}</code> {FASTEST} "
                           f"({html.escape(why)})" for base, (spec, why) in sorted(found.items()))
    return f'<div class="wb-draft-speed" style="font-size:12px;color:#666;margin:2px 0 6px">{body}</div>'


def _accuracy(top1: Any) -> str:
    vals = [v for v in (top1 or []) if isinstance(v, (int, float))]
    if not vals:
        return "no held-out accuracy on its card"
    if len(vals) == 1:
        return f"held-out top-1 {100 * vals[0]:.0f}%"
    return "held-out top-1 " + "/".join(f"{100 * v:.0f}" for v in vals) + "% by head"


def head_origin(head: dict[str, Any]) -> str:
    """'shipped' (with the package), 'trained' (here, by `workbench train`) or 'imported' (any other head; a
    published head with its layout and source: 'imported eagle3 from owner/name')."""
    if head.get("source"):
        return f"imported {head.get('format') or ''} from {head['source']}".replace("  ", " ")
    return head.get("origin") or ("shipped" if head.get("where") == "builtin" else "yours")


def head_choices(heads: Sequence[dict[str, Any]], target: str, kind: str) -> list[tuple[str, str]]:
    """(label, head value) for the head parameter of a `kind` method on `target`: the default ("") first,
    then every head of that kind trained for the target's model, the ones `head=""` would pick first.

    heads: workbench.heads.list_heads() rows (user heads before shipped ones, as they are looked up). A head
    hidden behind a same-named one of yours is offered by its directory.
    """
    base = model_base_name(target)
    fit = [h for h in heads if h.get("kind") == kind and h.get("target") == base]
    default = f"{base}-{kind}"
    picked = next((h for h in fit if h.get("name") == default), None)
    if picked is not None:
        first = (f"default: {default} ({head_origin(picked)}) · {_accuracy(picked.get('top1'))}", "")
    else:
        first = (f"default: {default} (none yet; train one with `workbench train --kind {kind}`)", "")
    out, seen = [first], set()
    for h in fit:
        value = h["name"] if h["name"] not in seen else h.get("path") or h["name"]
        seen.add(h["name"])
        out.append((f"{h['name']} · {head_origin(h)} · {_accuracy(h.get('top1'))}", value))
    return out


def method_label(family: str, label: str) -> str:
    return f"{family} › {label}"


def method_choices(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> list[tuple[str, str]]:
    """(label, name) of every method: family by family, each family's methods by their shown names; a lossy
    method's label ends in "(LOSSY)"."""
    return [(method_label(family, m.get("label") or m["name"]) + ("" if m.get("lossless", True) else " (LOSSY)"),
             m["name"]) for family, methods in groups for m in methods]
