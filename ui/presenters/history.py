"""Tables of runs, side-by-side comparison of their metrics, and a token-level diff of two outputs."""
from __future__ import annotations

import difflib
import html
from typing import Any, Sequence

import pandas as pd

from .base import _nan, visible
from .tokens import speedup


def _get(rec: Any, key: str, default: Any = None) -> Any:
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def _short(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


RUN_COLUMNS = ["id", "date", "method", "status", "tok/s", "τ", "α", "tokens", "backend", "target", "draft",
               "prompt"]


def run_backend(rec: Any) -> str:
    """The backend a run decoded on, from its env (runs stored before backends existed ran eagerly)."""
    return (_get(rec, "env", None) or {}).get("backend") or "eager"


def backend_text(rec: Any) -> str:
    """'compiled · 95 s warm-up' (warm-up: compiling before the run, not in its timings), or 'eager'."""
    w = (_get(rec, "env", None) or {}).get("warmup_s")
    return run_backend(rec) + (f" · {w:.0f} s warm-up" if isinstance(w, (int, float)) and w >= 1 else "")


def runs_frame(records: Sequence[Any]) -> pd.DataFrame:
    """The history table: one row per run record (store.RunRecord or a dict with the same keys)."""
    rows = []
    for r in records:
        m = _get(r, "metrics", {}) or {}
        created = _get(r, "created_at")
        rows.append({
            "id": str(_get(r, "id", ""))[:8],
            "date": created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if hasattr(created, "astimezone")
            else str(created or ""),
            "method": _get(r, "method", ""),
            "target": _get(r, "target", ""),
            "draft": _get(r, "draft") or "",
            "prompt": _short(_get(r, "prompt", ""), 60),
            "status": _get(r, "status", ""),
            "tok/s": _round(m.get("tokens_per_s"), 1),
            "τ": _round(m.get("mean_accepted_tokens"), 2),
            "α": _round(m.get("acceptance_rate"), 2),
            "tokens": None if m.get("new_tokens") is None else int(m["new_tokens"]),
            "backend": run_backend(r),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _round(x: Any, nd: int) -> float | None:
    return None if _nan(x) else round(float(x), nd)


COMPARE_METRICS = [
    ("tokens_per_s", "tokens/s", 1), ("mean_accepted_tokens", "τ (tokens / forward)", 2),
    ("acceptance_rate", "acceptance rate α", 3), ("target_forward_passes", "target forwards", 0),
    ("new_tokens", "new tokens", 0), ("ttft_s", "TTFT (s)", 3), ("wall_s", "wall (s)", 3),
    ("mean_draft_length", "mean draft length", 2), ("peak_mem_mb", "peak memory (MB)", 0),
]


def compare_frame(records: Sequence[Any], baseline_tokens_per_s: float | None = None) -> pd.DataFrame:
    """Runs side by side: one column per run, one row per metric (plus method/models/backend/status)."""
    data: dict[str, list[Any]] = {"": ["method", "target", "draft", "backend", "status"]
                                  + [label for _, label, _ in COMPARE_METRICS] + ["speedup vs first"]}
    first_tps = None
    for r in records:
        m = _get(r, "metrics", {}) or {}
        tps = m.get("tokens_per_s")
        if first_tps is None:
            first_tps = tps
        col = [_get(r, "method", ""), _get(r, "target", ""), _get(r, "draft") or "—", backend_text(r),
               _get(r, "status", "")]
        for key, _, nd in COMPARE_METRICS:
            v = m.get(key)
            col.append("—" if _nan(v) else (f"{v:.{nd}f}" if nd else f"{v:.0f}"))
        sp = speedup(tps if tps is not None else float("nan"), first_tps)
        col.append("—" if _nan(sp) else f"{sp:.2f}×")
        name = str(_get(r, "id", ""))[:8]
        while name in data:
            name += "'"
        data[name] = col
    return pd.DataFrame(data)


def token_diff_html(a: Sequence[str], b: Sequence[str], a_label: str = "A", b_label: str = "B") -> str:
    """Token-level diff of two outputs: tokens only in A struck through (red), only in B underlined (green)."""
    sm = difflib.SequenceMatcher(a=list(a), b=list(b), autojunk=False)
    parts: list[str] = []
    changed = 0

    def spans(tokens: Sequence[str], cls: str, style: str) -> str:
        return "".join(f'<span class="wb-diff-{cls}" style="{style}">'
                       f'{html.escape(visible(t.replace(chr(10), "↵"))) or "∅"}</span>' for t in tokens)

    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            parts.append(spans(a[i1:i2], "eq", ""))
            continue
        changed += max(i2 - i1, j2 - j1)
        if i2 > i1:
            parts.append(spans(a[i1:i2], "del", "background:#ffd4d4;text-decoration:line-through;color:#900"))
        if j2 > j1:
            parts.append(spans(b[j1:j2], "ins", "background:#d2f5d6;text-decoration:underline;color:#065"))
    if changed == 0:
        head = f"Outputs are token-identical ({len(a)} tokens)."
    else:
        head = (f"{changed} token position{'s' * (changed != 1)} differ · "
                f"{len(a)} tokens in {html.escape(a_label)}, {len(b)} in {html.escape(b_label)} · "
                f"similarity {sm.ratio():.2f}")
    legend = "" if changed == 0 else (
        f'<span class="wb-diff-del" style="background:#ffd4d4;text-decoration:line-through">only in '
        f'{html.escape(a_label)}</span> <span class="wb-diff-ins" style="background:#d2f5d6;'
        f'text-decoration:underline">only in {html.escape(b_label)}</span>')
    return (f'<div class="wb-diff" data-changed="{changed}"><div style="font-size:13px;margin-bottom:4px">'
            f'<b>{html.escape(a_label)} → {html.escape(b_label)}</b>: {head} {legend}</div>'
            f'<div style="white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;'
            f'line-height:1.8">{"".join(parts)}</div></div>')
