"""A stored advice as rows and text: what `workbench advise` prints, and what the app and notebooks tabulate.

Reads only the advice dict (store.advice.advice_dict): never recomputes anything.
"""
from __future__ import annotations

import math
from typing import Any

ALL = "all"


def _x(v: Any, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}x"


def _n(v: Any, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def measured_overall(advice: dict[str, Any]) -> dict[str, float]:
    """Configuration label -> the speedup its verification measured (over every category)."""
    rows = (advice.get("result") or {}).get("verification", {}).get("rows", [])
    return {r["label"]: r["measured"] for r in rows if r["category"] == ALL}


def ranking_rows(advice: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration, best predicted first: prediction, interval, probe figures, measured."""
    measured = measured_overall(advice)
    out = []
    for c in (advice.get("result") or {}).get("configs", []):
        p, m = c["predicted"], c["measured"]
        out.append({"rank": c.get("rank"), "configuration": c["label"], "kind": c["kind"],
                    "predicted": p["speedup"], "low": p["low"], "high": p["high"],
                    "tau": m["tau"], "alpha_1": (m["alphas"] or [float("nan")])[0],
                    "draft_x": p["draft"], "verify_x": p["verify"], "holds_back": c["limits"]["holds_back"],
                    "measured": measured.get(c["label"])})
    return out


def verification_rows(advice: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted against measured, per verified configuration and category ("all" last)."""
    return list((advice.get("result") or {}).get("verification", {}).get("rows", []))


def headline(advice: dict[str, Any]) -> str:
    r = advice.get("result") or {}
    when = (advice.get("created_at") or "")[:16].replace("T", " ")
    rec = r.get("recommended")
    return (f"advice {advice['id'][:8]} | {advice['target']} on {advice['backend']} | {when} UTC | "
            f"{advice['status']}" + (f" | recommended: {rec}" if rec else "")
            + (f" | {advice['error']}" if advice.get("error") else ""))


def advice_text(advice: dict[str, Any]) -> str:
    """The whole advice as the CLI prints it: the ranking, the verification, the explanation, the command."""
    r = advice.get("result") or {}
    lines = [headline(advice), ""]
    rows = ranking_rows(advice)
    if rows:
        lines.append(f"{'rank':>4}  {'configuration':<34} {'predicted (90%)':<20} {'tau':>5} {'a_1':>5} "
                     f"{'draft':>6} {'verify':>6}  {'held back by':<17} {'verified':>8}")
        for row in rows:
            interval = f"{_x(row['predicted'])} ({_n(row['low'])}-{_n(row['high'])})"
            lines.append(f"{row['rank'] or '-':>4}  {row['configuration'][:34]:<34} {interval:<20} "
                         f"{_n(row['tau']):>5} {_n(row['alpha_1']):>5} {_n(row['draft_x']):>6} "
                         f"{_n(row['verify_x']):>6}  {row['holds_back']:<17} {_x(row['measured']):>8}")
        lines.append("(predicted: speedup over plain decoding at the verification's length; draft, verify: a step's "
                     "cost in plain forwards)")
    v = r.get("verification")
    if v:
        lines += ["", f"verification: benchmark {v['benchmark_id'][:8]}, {len(r['split']['verify'])} questions not "
                      f"probed, {v['tokens']} tokens x {v['repeats']} repeat{'s' * (v['repeats'] != 1)}, "
                      "interleaved with plain decoding"]
        lines.append(f"{'configuration':<34} {'category':<16} {'predicted (90%)':<20} {'measured':>8} {'error':>7}")
        for row in verification_rows(advice):
            interval = f"{_x(row['predicted'])} ({_n(row['low'])}-{_n(row['high'])})"
            err = "-" if row["error_pct"] is None or row["error_pct"] != row["error_pct"] else f"{row['error_pct']:+.0f}%"
            lines.append(f"{row['label'][:34]:<34} {row['category'][:16]:<16} {interval:<20} "
                         f"{_x(row['measured']):>8} {err:>7}")
    if r.get("explanation"):
        lines += [""] + r["explanation"]
    if r.get("notes"):
        lines += [""] + [f"note: {n}" for n in r["notes"]]
    lines += ["", f"probe benchmark {(r.get('probe') or {}).get('benchmark_id', '-')}; reproduce: "
                  f"{advice.get('command', '')}"]
    return "\n".join(lines)


def list_rows(advice_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Past advice, one row each (the CLI's --list, the app's table)."""
    out = []
    for a in advice_list:
        r = a.get("result") or {}
        rec = r.get("recommended")
        measured = measured_overall(a).get(rec) if rec else None
        out.append({"id": a["id"], "created": (a.get("created_at") or "")[:19].replace("T", " "),
                    "status": a["status"], "target": a["target"], "backend": a["backend"],
                    "recommended": rec or "-", "measured": measured,
                    "configurations": len(r.get("configs", [])), "command": a.get("command", "")})
    return out
