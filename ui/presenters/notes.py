"""What a run says about itself (``Trace.notes``), as the app shows it.

A note is ``{"kind", "text", ...}`` (workbench.engine): ``no_draft`` (cost-aware sizing chose plain
steps in most of the run, and why, with the measured costs that drove it), ``profile_measured`` (a
cost profile of this machine was measured before the run's clock started), ``profile_stale`` /
``profile_disagrees`` (the run's verification forwards disagreed with the profile),
``profile_noisy`` (the profile was kept from a busy machine) and ``not_identical`` (a lossless run under
greedy decoding that differs from plain greedy decoding: workbench.quality.identity_note). ``notes_html`` lists them under the
metric cards, ``notes_status`` for the Playground's status line, and ``no_draft_line`` is the
speedup card's line for a run that drafted (almost) nothing: its speed is plain decoding's.
"""
from __future__ import annotations

import html

from workbench.trace import Trace

# notes that change how the run's numbers read come first; a profile measured first is background
NOTE_ORDER = ("no_draft", "profile_noisy", "profile_stale", "profile_disagrees", "profile_measured")


def _ordered(trace: Trace) -> list[dict]:
    rank = {k: i for i, k in enumerate(NOTE_ORDER)}
    return sorted((n for n in trace.notes if n.get("text")), key=lambda n: rank.get(n.get("kind"), len(rank)))


def no_draft_line(trace: Trace) -> str:
    """'nothing drafted: plain decoding's speed, not a method win' (34 of 37 steps), or '' when the run drafted."""
    note = trace.note("no_draft")
    if note is None:
        return ""
    steps, of = note.get("steps"), note.get("of")
    where = "" if not steps or steps >= (of or 0) else f" in {steps} of {of} steps"
    return f"nothing drafted{where}: this is plain decoding's speed, not a win of the method"


def notes_html(trace: Trace) -> str:
    """The run's notes as a small list under the cards ('' without notes)."""
    items = "".join(f'<li data-note="{html.escape(str(n.get("kind", "")), quote=True)}">'
                    f'{html.escape(str(n["text"]))}</li>' for n in _ordered(trace))
    if not items:
        return ""
    return (f'<ul class="wb-run-notes" style="margin:6px 0 0 0;padding-left:18px;font-size:12px;color:#7a4a00">'
            f"{items}</ul>")


def notes_status(trace: Trace) -> str:
    """The notes that change how the run reads, as sentences for the status line ('' without)."""
    texts = [n["text"] for n in _ordered(trace) if n.get("kind") != "profile_measured"]
    return " ".join(t[0].upper() + t[1:] + ("" if t.endswith(".") else ".") for t in texts)
