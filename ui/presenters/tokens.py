"""The output view: tokens coloured by origin with hover details, the legend, and the metric cards."""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from workbench import metrics as M
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
from .notes import no_draft_line, notes_html


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


def acceptance_card(trace: Trace) -> tuple[str, str, list[str], dict[str, Any]]:
    """The acceptance card: (label, value, lines under it, data attributes). The big figure is α, path
    acceptance, and the first line says what it is made of; the second is node acceptance, labelled. Both
    from workbench.metrics.acceptance, as `workbench runs show` and the reports (docs/metrics.md)."""
    acc = M.acceptance(trace.steps)
    data = {"accepted": acc.accepted, "path-positions": acc.path_positions, "drafted-nodes": acc.drafted_nodes}
    if not acc.drafted_nodes:
        return M.PATH_ACCEPTANCE, "—", ["nothing drafted"], data
    node = f"{100 * acc.node_rate:.0f}%"
    return M.PATH_ACCEPTANCE, f"{100 * acc.path_rate:.0f}%", [acc.path_caption(),
                                                              f"{M.NODE_ACCEPTANCE} {node}: {acc.node_caption()}"], data


WIDE_CARDS = ("acceptance_rate", "speedup")  # cards whose lines say what their figure is made of


def metric_cards_html(trace: Trace, baseline_tokens_per_s: float | None = None, *,
                      baseline_note: str = "", backend: str | None = None, warmup_s: float | None = None,
                      speedup_lines: Sequence[str] = (), speedup_warn: bool = False) -> str:
    """Cards: tokens/s, τ, acceptance (α, path acceptance, with node acceptance in its caption), target
    forwards, TTFT, speedup vs plain decoding and, when `backend` is given, the backend with its warm-up
    (env["warmup_s"], never in tokens/s).

    baseline_note: the speedup card's line under its figure (ui.presenters.speedup.baseline_line: the
    baseline's tokens/s, run, backend, age and machine); speedup_lines: lines after it (the rest of
    ui.presenters.speedup.speedup_lines: why to re-run the baseline, the spread or the single-run note);
    speedup_warn marks the card (and its first extra line) when the baseline should be run again.
    """
    s = live_summary(trace)
    sp = speedup(s.tokens_per_s, baseline_tokens_per_s)
    if trace.method == BASELINE:
        sp_text, sp_hint = "1.00×", "this run is plain decoding"
    elif _nan(sp):
        sp_text, sp_hint = "—", baseline_note or "no plain-decoding run of this prompt yet"
    else:
        sp_text, sp_hint = f"{sp:.2f}×", baseline_note or f"vs {baseline_tokens_per_s:.1f} tok/s plain decoding"
    acc_label, acc_value, acc_lines, acc_data = acceptance_card(trace)
    cards = [
        ("tokens_per_s", "tokens/s", "—" if _nan(s.tokens_per_s) else f"{s.tokens_per_s:.1f}",
         f"{s.new_tokens} tokens in {s.wall_s:.2f} s" if s.wall_s else f"{s.new_tokens} tokens", [], {}),
        ("tau", "τ (tokens / target forward)",
         "—" if _nan(s.mean_accepted_tokens) else f"{s.mean_accepted_tokens:.2f}",
         "" if _nan(s.mean_accepted_draft_tokens) else f"{s.mean_accepted_draft_tokens:.2f} without the bonus token",
         [], {}),
        ("acceptance_rate", acc_label, acc_value, acc_lines[0], acc_lines[1:], acc_data),
        ("target_forward_passes", "target forwards", str(s.target_forward_passes), "one per step", [], {}),
        ("ttft", "TTFT", "—" if _nan(s.ttft_s) else f"{1000 * s.ttft_s:.0f} ms", "time to first token", [], {}),
        ("speedup", "speedup", sp_text, sp_hint, [] if trace.method == BASELINE else list(speedup_lines),
         {"rerun": "true"} if speedup_warn else {}),
    ]
    no_draft = no_draft_line(trace) if trace.method != BASELINE else ""
    if no_draft:  # the figure is plain decoding's speed against itself: say so first (ui.presenters.notes)
        key, label, value, hint, more, data = cards[-1]
        cards[-1] = (key, label, value, hint, [no_draft, *more], {**data, "no-draft": "true"})
    if backend:
        cards.append(("backend", "backend", backend, backend_hint(backend, warmup_s), [], {}))

    def card(key: str, label: str, value: str, hint: str, more: list[str], data: dict[str, Any]) -> str:
        attrs = "".join(f' data-{k}="{html.escape(str(v), quote=True)}"' for k, v in data.items())
        warn = bool(data.get("rerun") or data.get("no-draft"))
        extra = "".join(f'<div class="wb-card-line" style="font-size:11px;color:'
                        f'{"#a15c00" if warn and i == 0 else "#888"}">{html.escape(line)}</div>'
                        for i, line in enumerate(more))
        size = "flex:2 1 170px;min-width:150px" if key in WIDE_CARDS else "flex:1 1 96px;min-width:96px"
        return (f'<div class="wb-card" data-metric="{key}"{attrs} style="{size};'
                f'border:1px solid {"#e0a040" if warn else "#0001"};border-radius:8px;padding:8px 12px;'
                f'background:#fafafa;color:#222">'
                f'<div style="font-size:12px;color:#666">{html.escape(label)}</div>'
                f'<div class="wb-card-value" style="font-size:{_value_px(value)}px;font-weight:600;line-height:26px;'
                f'white-space:nowrap">{html.escape(value)}</div>'
                f'<div class="wb-card-hint" style="font-size:11px;color:#888">{html.escape(hint)}</div>{extra}</div>')

    body = "".join(card(*c) for c in cards)
    return f'<div class="wb-cards" style="display:flex;flex-wrap:wrap;gap:8px">{body}</div>' + notes_html(trace)
