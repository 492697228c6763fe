"""The output view: tokens coloured by origin with hover details, the legend, and the metric cards."""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from workbench.config import BASELINE
from workbench.trace import Trace

from .base import (
    ORIGIN_COLORS,
    ORIGIN_LABELS,
    _fmt_prob,
    _nan,
    live_summary,
    step_outcome,
    visible,
)


def token_rows(trace: Trace) -> list[dict[str, Any]]:
    """trace.token_origins() with ``kind`` in draft / bonus / correction / plain."""
    by_index = {s.index: s for s in trace.steps}
    rows = trace.token_origins()
    for r in rows:
        r["kind"] = "draft" if r["origin"] == "draft" else step_outcome(by_index[r["step"]])
    return rows


def token_title(row: dict[str, Any]) -> str:
    """Hover text of one output token."""
    parts = [f"step {row['step']}", ORIGIN_LABELS[row["kind"]]]
    if row["kind"] == "draft":
        q = row.get("q")
        parts.append("q=" + (_fmt_prob(q) if q is not None else "— (deterministic draft)"))
    parts.append("p=" + _fmt_prob(row.get("p")))
    return " · ".join(parts)


def token_html(trace: Trace, texts: Sequence[str], *, show_prompt: str | None = None,
               highlight_step: int | None = None) -> str:
    """The output, one span per token coloured by origin, with a hover title (step, q, p).

    texts[i] is the text of output token i (len(texts) may lag behind while streaming);
    the tokens of step ``highlight_step`` get an outline.
    """
    rows = token_rows(trace)
    out = ['<div class="wb-output" style="white-space:pre-wrap;line-height:1.9;font-family:ui-monospace,'
           'SFMono-Regular,Menlo,monospace;font-size:14px">']
    if show_prompt:
        out.append(f'<span class="wb-prompt" style="color:#888">{html.escape(show_prompt)}</span>')
    for i, row in enumerate(rows):
        text = texts[i] if i < len(texts) else ""
        kind = row["kind"]
        shown = html.escape(visible(text.replace("\n", "↵"))) if text else "∅"
        mark = ";outline:2px solid #333" if highlight_step is not None and row["step"] == highlight_step else ""
        span = (f'<span class="wb-tok wb-tok-{kind}" data-step="{row["step"]}" '
                f'style="background:{ORIGIN_COLORS[kind]};border-radius:3px;padding:1px 0{mark}" '
                f'title="{html.escape(token_title(row), quote=True)}">{shown}</span>')
        out.append(span)
        if "\n" in text:
            out.append("\n")
    if not rows:
        out.append('<span class="wb-empty" style="color:#888">(no tokens yet)</span>')
    out.append("</div>")
    return "".join(out)


def legend_html(kinds: Iterable[str] = ("draft", "bonus", "correction", "plain")) -> str:
    items = "".join(
        f'<span class="wb-legend-item" style="margin-right:14px;white-space:nowrap">'
        f'<span class="wb-tok-{k}" style="display:inline-block;width:14px;height:14px;border-radius:3px;'
        f'vertical-align:middle;background:{ORIGIN_COLORS[k]};border:1px solid #0002"></span> '
        f'{html.escape(ORIGIN_LABELS[k])}</span>'
        for k in kinds)
    return f'<div class="wb-legend" style="font-size:13px;margin:4px 0">{items}</div>'





def speedup(tokens_per_s: float, baseline_tokens_per_s: float | None) -> float:
    if _nan(baseline_tokens_per_s) or not baseline_tokens_per_s or _nan(tokens_per_s):
        return float("nan")
    return tokens_per_s / baseline_tokens_per_s


def backend_hint(backend: str, warmup_s: float | None) -> str:
    """What a run's backend cost before it started: compiling is timed apart from the run."""
    if warmup_s is not None and not _nan(warmup_s) and warmup_s > 0:
        return f"compiled in {warmup_s:.0f} s (not counted)" if warmup_s >= 1 else \
            f"compiled in {warmup_s:.1f} s (not counted)"
    if backend == "compiled":
        return "already compiled" if warmup_s is not None else ""  # None: still streaming, not known yet
    return "stock transformers forwards" if backend == "eager" else ""


def _value_px(value: str) -> int:
    """A card value's font size: long values ("compiled", "1234 ms") smaller, so seven cards fit a row."""
    return 22 if len(value) <= 5 else 18 if len(value) <= 7 else 16


def metric_cards_html(trace: Trace, baseline_tokens_per_s: float | None = None, *,
                      baseline_note: str = "", backend: str | None = None, warmup_s: float | None = None) -> str:
    """Cards: tokens/s, τ, acceptance rate, target forwards, TTFT, speedup vs plain decoding and,
    when `backend` is given, the backend with its warm-up (env["warmup_s"], never in tokens/s)."""
    s = live_summary(trace)
    sp = speedup(s.tokens_per_s, baseline_tokens_per_s)
    if trace.method == BASELINE:
        sp_text, sp_hint = "1.00×", "this run is plain decoding"
    elif _nan(sp):
        sp_text, sp_hint = "—", baseline_note or "no plain-decoding run of this prompt yet"
    else:
        sp_text, sp_hint = f"{sp:.2f}×", baseline_note or f"vs {baseline_tokens_per_s:.1f} tok/s plain decoding"
    alpha = "—" if _nan(s.acceptance_rate) else f"{100 * s.acceptance_rate:.0f}%"
    cards = [
        ("tokens_per_s", "tokens/s", "—" if _nan(s.tokens_per_s) else f"{s.tokens_per_s:.1f}",
         f"{s.new_tokens} tokens in {s.wall_s:.2f} s" if s.wall_s else f"{s.new_tokens} tokens"),
        ("tau", "τ (tokens / target forward)",
         "—" if _nan(s.mean_accepted_tokens) else f"{s.mean_accepted_tokens:.2f}",
         "" if _nan(s.mean_accepted_draft_tokens) else f"{s.mean_accepted_draft_tokens:.2f} without the bonus token"),
        ("acceptance_rate", "acceptance rate α", alpha,
         f"{s.accepted_draft_tokens} / {s.drafted_tokens} drafted tokens accepted" if s.drafted_tokens
         else "nothing drafted"),
        ("target_forward_passes", "target forwards", str(s.target_forward_passes), "one per step"),
        ("ttft", "TTFT", "—" if _nan(s.ttft_s) else f"{1000 * s.ttft_s:.0f} ms", "time to first token"),
        ("speedup", "speedup", sp_text, sp_hint),
    ]
    if backend:
        cards.append(("backend", "backend", backend, backend_hint(backend, warmup_s)))
    body = "".join(
        f'<div class="wb-card" data-metric="{key}" style="flex:1 1 96px;min-width:96px;border:1px solid #0001;'
        f'border-radius:8px;padding:8px 12px;background:#fafafa;color:#222">'
        f'<div style="font-size:12px;color:#666">{html.escape(label)}</div>'
        f'<div class="wb-card-value" style="font-size:{_value_px(value)}px;font-weight:600;line-height:26px;'
        f'white-space:nowrap">{html.escape(value)}</div>'
        f'<div style="font-size:11px;color:#888">{html.escape(hint)}</div></div>'
        for key, label, value, hint in cards)
    return f'<div class="wb-cards" style="display:flex;flex-wrap:wrap;gap:8px">{body}</div>'
