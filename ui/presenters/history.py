"""Tables of runs, side-by-side comparison of their metrics, and a token-level diff of two outputs."""
from __future__ import annotations

import difflib
import html
import json
from typing import Any, Sequence

import pandas as pd

from workbench.config import BASELINE
from workbench.quality import describe, lossy_badge

from .base import _get, _nan, visible
from .tokens import speedup


def _short(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


RUN_COLUMNS = ["id", "date", "method", "settings", "sampling", "status", "tok/s", "speedup", "τ", "α (path)",
               "lossless", "agreement", "ROUGE-L", "NLL gap", "tokens", "backend", "target", "draft", "prompt"]
_RUN_KEYS = ("max_new_tokens", "chat")  # run settings kept apart from the method's parameters


def run_backend(rec: Any) -> str:
    """The backend a run decoded on, from its env (runs stored before backends existed ran eagerly)."""
    return (_get(rec, "env", None) or {}).get("backend") or "eager"


def backend_text(rec: Any) -> str:
    """'compiled · 95 s warm-up' (warm-up: compiling before the run, not in its timings), or 'eager'."""
    w = (_get(rec, "env", None) or {}).get("warmup_s")
    return run_backend(rec) + (f" · {w:.0f} s warm-up" if isinstance(w, (int, float)) and w >= 1 else "")


def _typed(value: Any) -> Any:
    """A stored parameter's value: text as stored, JSON numbers and bools decoded (as store.records does)."""
    if not isinstance(value, str):
        return value
    try:
        out = json.loads(value)
    except ValueError:
        return value
    return out if isinstance(out, (bool, int, float)) or out is None else value


def _params(rec: Any) -> dict[str, Any]:
    return {k: _typed(v) for k, v in (_get(rec, "params", None) or {}).items()}


def _value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v) if v != "" else '""'


def settings_text(rec: Any, defaults: dict[str, dict[str, Any]] | None = None) -> str:
    """A run's method parameters and length: 'depth=3 top_k=2 · 48 new · chat'. With `defaults` (method ->
    parameter -> default) only the parameters that differ from their default are named ("defaults" when none do).
    A benchmark's own bookkeeping (bench.*) is left out."""
    params = {k: v for k, v in _params(rec).items() if not str(k).startswith("bench.")}
    mine = {k: v for k, v in params.items() if k not in _RUN_KEYS}
    known = (defaults or {}).get(_get(rec, "method", ""))
    if known is not None:
        mine = {k: v for k, v in mine.items() if k not in known or known[k] != v}
    parts = [" ".join(f"{k}={_value(v)}" for k, v in sorted(mine.items())) or ("defaults" if known is not None
                                                                                else "no parameters")]
    if params.get("max_new_tokens") is not None:
        parts.append(f"{_value(params['max_new_tokens'])} new")
    if params.get("chat") is not None:
        parts.append("chat" if params["chat"] else "no chat")
    return " · ".join(parts)


def sampling_text(sampling: dict[str, Any] | None) -> str:
    """'greedy', or 'T 0.7 · top-p 0.9 · top-k 50 · seed 1' (what a sampled run was drawn with)."""
    s = sampling or {}
    t = float(s.get("temperature") or 0.0)
    if t == 0.0:
        return "greedy"
    parts = [f"T {t:g}"]
    if s.get("top_p") not in (None, 1, 1.0):
        parts.append(f"top-p {float(s['top_p']):g}")
    if s.get("top_k"):
        parts.append(f"top-k {int(s['top_k'])}")
    parts.append(f"seed {int(s.get('seed') or 0)}")
    return " · ".join(parts)


def run_speedup(rec: Any, baseline: Any | None) -> float:
    """tokens/s of `rec` over its plain-decoding baseline's (1.0 for a plain-decoding run; NaN without one)."""
    if _get(rec, "method", "") == BASELINE:
        return 1.0
    if baseline is None:
        return float("nan")
    tps = (_get(rec, "metrics", None) or {}).get("tokens_per_s")
    base = (_get(baseline, "metrics", None) or {}).get("tokens_per_s")
    return speedup(float("nan") if tps is None else tps, base)


def runs_frame(records: Sequence[Any], *, defaults: dict[str, dict[str, Any]] | None = None,
               baselines: dict[str, Any] | None = None) -> pd.DataFrame:
    """The history table: one row per run record (store.RunRecord or a dict with the same keys).

    defaults: method -> parameter -> default, so `settings` names only what a run changed; baselines: run id ->
    its plain-decoding baseline (store.RunStore.baselines_for), for the `speedup` column (empty without one).
    """
    rows = []
    for r in records:
        m = _get(r, "metrics", {}) or {}
        q = _get(r, "quality", None) or {}  # workbench.quality.Quality.to_dict(), against plain decoding
        created = _get(r, "created_at")
        rid = str(_get(r, "id", ""))
        sp = run_speedup(r, (baselines or {}).get(rid))
        rows.append({
            "id": rid[:8],
            "date": created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if hasattr(created, "astimezone")
            else str(created or ""),
            "method": _get(r, "method", ""),
            "settings": settings_text(r, defaults),
            "sampling": sampling_text(_get(r, "sampling", None)),
            "target": _get(r, "target", ""),
            "draft": _get(r, "draft") or "",
            "prompt": _short(_get(r, "prompt", ""), 60),
            "status": _get(r, "status", ""),
            "tok/s": _round(m.get("tokens_per_s"), 1),
            "speedup": _round(sp, 2),
            "τ": _round(m.get("mean_accepted_tokens"), 2),
            "α (path)": _round(m.get("acceptance_rate"), 2),
            "lossless": "yes" if _get(r, "lossless", True) and not _get(r, "lossy", None) else "LOSSY",
            "agreement": _round(q.get("agreement"), 3),
            "ROUGE-L": _round(q.get("rouge_l"), 3),
            "NLL gap": _round(q.get("nll_gap"), 3),
            "tokens": None if m.get("new_tokens") is None else int(m["new_tokens"]),
            "backend": run_backend(r),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _round(x: Any, nd: int) -> float | None:
    return None if _nan(x) else round(float(x), nd)


COMPARE_METRICS = [
    ("tokens_per_s", "tokens/s", 1), ("mean_accepted_tokens", "τ (tokens / forward)", 2),
    ("acceptance_rate", "path acceptance α", 3), ("node_acceptance_rate", "node acceptance", 3),
    ("target_forward_passes", "target forwards", 0),
    ("new_tokens", "new tokens", 0), ("ttft_s", "TTFT (s)", 3), ("wall_s", "wall (s)", 3),
    ("mean_draft_length", "mean draft length", 2), ("peak_mem_mb", "peak memory (MB)", 0),
]
SPEEDUP_ROW = "speedup vs plain decoding"
LOSSLESS_ROW = "lossless"
QUALITY_ROW = "quality vs plain decoding"
BASELINE_ROW = "plain-decoding baseline"


def compare_frame(records: Sequence[Any], baselines: dict[str, Any] | None = None, *,
                  defaults: dict[str, dict[str, Any]] | None = None,
                  acceptances: dict[str, Any] | None = None) -> pd.DataFrame:
    """Runs side by side: one column per run, one row per metric (plus method, models, backend, settings,
    sampling, status) and each run's speedup against its own plain-decoding baseline.

    baselines: run id -> its baseline run (store.RunStore.baselines_for; a plain-decoding run is its own);
    acceptances: run id -> workbench.metrics.Acceptance from its stored steps (else the stored metrics).
    """
    data: dict[str, list[Any]] = {"": ["method", "target", "draft", "backend", "settings", "sampling", "status"]
                                  + [label for _, label, _ in COMPARE_METRICS] + [BASELINE_ROW, SPEEDUP_ROW]
                                  + [LOSSLESS_ROW, QUALITY_ROW]}
    for r in records:
        m = dict(_get(r, "metrics", {}) or {})
        rid = str(_get(r, "id", ""))
        acc = (acceptances or {}).get(rid)
        if acc is not None:
            m["acceptance_rate"], m["node_acceptance_rate"] = acc.path_rate, acc.node_rate
        elif m.get("node_acceptance_rate") is None and m.get("drafted_tokens"):
            m["node_acceptance_rate"] = (m.get("accepted_draft_tokens") or 0) / m["drafted_tokens"]
        col = [_get(r, "method", ""), _get(r, "target", ""), _get(r, "draft") or "—", backend_text(r),
               settings_text(r, defaults), sampling_text(_get(r, "sampling", None)), _get(r, "status", "")]
        for key, _, nd in COMPARE_METRICS:
            v = m.get(key)
            col.append("—" if _nan(v) else (f"{v:.{nd}f}" if nd else f"{v:.0f}"))
        base = (baselines or {}).get(rid)
        if _get(r, "method", "") == BASELINE:
            col.append("this run")
        elif base is None:
            col.append("none stored (run one in the Playground)")
        else:
            btps = (_get(base, "metrics", None) or {}).get("tokens_per_s")
            col.append(f"{str(_get(base, 'id', ''))[:8]} ({'—' if _nan(btps) else f'{btps:.1f}'} tok/s)")
        sp = run_speedup(r, base)
        col.append("—" if _nan(sp) else f"{sp:.2f}×")
        col.append(lossy_badge(_get(r, "lossy", None) or []))
        col.append(describe(_get(r, "quality", None)))
        name = rid[:8]
        while name in data:
            name += "'"
        data[name] = col
    return pd.DataFrame(data)


def diff_counts(a: Sequence[Any], b: Sequence[Any]) -> tuple[dict[str, int], list[tuple[str, int, int, int, int]]]:
    """Align two token sequences (difflib.SequenceMatcher, no junk heuristic) and count the edit:
    matched tokens, substituted (a replaced run's paired tokens), deleted (only in a), inserted (only in b).
    matched + substituted + deleted = len(a); matched + substituted + inserted = len(b). Also the opcodes."""
    sm = difflib.SequenceMatcher(a=list(a), b=list(b), autojunk=False)
    ops = sm.get_opcodes()
    n = {"matched": 0, "substituted": 0, "deleted": 0, "inserted": 0}
    for op, i1, i2, j1, j2 in ops:
        la, lb = i2 - i1, j2 - j1
        if op == "equal":
            n["matched"] += la
        else:
            sub = min(la, lb)
            n["substituted"] += sub
            n["deleted"] += la - sub
            n["inserted"] += lb - sub
    return n, ops


def token_diff_html(a: Sequence[str], b: Sequence[str], a_label: str = "A", b_label: str = "B", *,
                    a_ids: Sequence[int] | None = None, b_ids: Sequence[int] | None = None) -> str:
    """Token-level diff of two outputs: tokens only in A struck through (red), only in B underlined (green).

    The alignment is over token ids when both are given (outputs of one tokenizer), else over the token
    texts; the head line counts matched, substituted, deleted and inserted tokens (diff_counts).
    """
    use_ids = a_ids is not None and b_ids is not None and len(a_ids) == len(a) and len(b_ids) == len(b)
    counts, ops = diff_counts(list(a_ids) if use_ids else list(a), list(b_ids) if use_ids else list(b))
    changed = counts["substituted"] + counts["deleted"] + counts["inserted"]
    parts: list[str] = []

    def spans(tokens: Sequence[str], cls: str, style: str) -> str:
        return "".join(f'<span class="wb-diff-{cls}" style="{style}">'
                       f'{html.escape(visible(t.replace(chr(10), "↵"))) or "∅"}</span>' for t in tokens)

    for op, i1, i2, j1, j2 in ops:
        if op == "equal":
            parts.append(spans(a[i1:i2], "eq", ""))
            continue
        if i2 > i1:
            parts.append(spans(a[i1:i2], "del", "background:#ffd4d4;text-decoration:line-through;color:#900"))
        if j2 > j1:
            parts.append(spans(b[j1:j2], "ins", "background:#d2f5d6;text-decoration:underline;color:#065"))
    if changed == 0:
        head = f"Outputs are token-identical ({len(a)} tokens)."
    else:
        head = (f"{len(a)} tokens in {html.escape(a_label)}, {len(b)} in {html.escape(b_label)}, aligned over "
                f"{'token ids' if use_ids else 'token texts'}: {counts['matched']} matched · "
                f"{counts['substituted']} substituted · {counts['deleted']} deleted · {counts['inserted']} inserted")
    legend = "" if changed == 0 else (
        f'<span class="wb-diff-del" style="background:#ffd4d4;text-decoration:line-through">only in '
        f'{html.escape(a_label)}</span> <span class="wb-diff-ins" style="background:#d2f5d6;'
        f'text-decoration:underline">only in {html.escape(b_label)}</span>')
    attrs = "".join(f' data-{k}="{v}"' for k, v in counts.items())
    return (f'<div class="wb-diff" data-changed="{changed}"{attrs}><div style="font-size:13px;margin-bottom:4px">'
            f'<b>{html.escape(a_label)} → {html.escape(b_label)}</b>: {head} {legend}</div>'
            f'<div style="white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;'
            f'line-height:1.8">{"".join(parts)}</div></div>')
