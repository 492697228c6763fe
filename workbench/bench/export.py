"""A BenchmarkReport as Markdown (also the terminal output) and CSV, with its speed-quality points (the
Pareto plot's: ui.presenters.quality draws them, `workbench bench --pareto FILE.html`)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .. import metrics as M
from ..config import BASELINE
from ..quality import MEASURES, check_measure, pareto_front, quality_value
from .report import ALL, BenchmarkReport

MAX_MISMATCH_ROWS = 40


def _f(x: Any, digits: int = 2, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    if pct:
        return f"{100 * x:.{max(0, digits - 1)}f}%"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def speed_quality_points(rep: BenchmarkReport, measure: str = "agreement") -> list[dict[str, Any]]:
    """One point per arm (all categories): its name, speedup, quality on `measure` (workbench.quality.quality_value:
    a lossless arm at the reference), whether it is lossless, and its swept knob values."""
    check_measure(measure)
    out = []
    for a, bk in rep.keys:
        r = next((x for x in rep.rows if (x["arm"], x["backend"], x["category"]) == (a, bk, ALL)), None)
        if r is None:
            continue
        lossless = bool(r.get("lossless", True)) and not r.get("lossy")
        out.append({"label": rep.name(a, bk), "arm": a, "backend": bk, "method": r["method"],
                    "speed": r["speedup"], "quality": quality_value({measure: r.get(measure)}, measure, lossless),
                    "lossless": lossless, "lossy": list(r.get("lossy") or []), "swept": r.get("swept") or {}})
    return out


def speed_quality_lines(rep: BenchmarkReport, measure: str = "agreement") -> list[str]:
    """The report's speed-quality section: every arm's speedup and quality, the Pareto front marked."""
    points = speed_quality_points(rep, measure)
    front = {id(p) for p in pareto_front(points, measure)}
    lines = [f"## Speed vs quality ({MEASURES[measure]}; lossless arms at the reference by definition)", ""]
    lines += _table(["method", "speedup", MEASURES[measure], "lossless", "swept", "Pareto front"],
                    [[p["label"], _f(p["speed"]), _f(p["quality"], 3), "yes" if p["lossless"] else "LOSSY",
                      ", ".join(f"{k}={v}" for k, v in p["swept"].items()) or "-", "*" if id(p) in front else ""]
                     for p in sorted(points, key=lambda p: -p["speed"] if p["speed"] == p["speed"] else 0)])
    return lines


def to_markdown(rep: BenchmarkReport, measure: str = "agreement") -> str:
    b, cfg, env = rep.benchmark, rep.benchmark.get("config", {}), rep.benchmark.get("env", {})
    lines = [f"# Benchmark {b['id']}", ""]
    lines.append(f"suite `{b['suite']}` ({cfg.get('n_prompts', '?')} prompts from {cfg.get('n_questions', '?')} "
                 f"questions) · target `{cfg.get('target')}` ({env.get('dtype', '?')}) · draft "
                 f"`{cfg.get('draft') or '-'}` · {cfg.get('max_new_tokens')} new tokens · greedy · "
                 f"{cfg.get('repeats')} repeats · backends {', '.join(rep.backends) or '-'} · status {b['status']}")
    isa = f", {env['cpu_isa']}" if env.get("cpu_isa") else ""
    lines.append(f"environment: CPU {env.get('cpu')} ({env.get('cpu_count')} cores{isa}, {env.get('torch_threads')} "
                 f"torch threads) · GPU {env.get('gpu') or '-'} · device {env.get('device')} · "
                 f"torch {env.get('torch')} · transformers {env.get('transformers')} · Python {env.get('python')}")
    warm = {**(env.get("warmup_s") or {}), **(env.get("hf_warmup_s") or {})}
    if warm:
        lines.append("warm-up before timing (compiling, then one short run per arm; never timed): "
                     + " · ".join(f"{k} {_f(v, 1)} s" for k, v in warm.items()))
    multi = len(rep.backends) > 1
    vs_eager = "eager" in rep.backends and any(k[1] != "eager" for k in rep.keys)
    lines += ["", "Speedup = median over repeats of (total new tokens / total time) ÷ the same for plain greedy "
              "decoding on the same backend, same prompts, same process"
              + ("; vs eager: ÷ plain greedy decoding on the eager backend." if vs_eager else "."), ""]
    by = {(r["arm"], r["backend"], r["category"]): r for r in rep.rows}
    cats = rep.categories + [ALL]

    lines += ["## Speedup against plain decoding on the same backend (methods × categories)", ""]
    lines += _table(["method", "backend"] + cats,
                    [[a, bk] + [_f(by.get((a, bk, c), {}).get("speedup")) for c in cats] for a, bk in rep.keys])
    if vs_eager and multi:
        lines += ["", "## Speedup against eager plain decoding (methods × categories)", ""]
        lines += _table(["method", "backend"] + cats,
                        [[a, bk] + [_f(by.get((a, bk, c), {}).get("speedup_vs_eager")) for c in cats]
                         for a, bk in rep.keys])
    lines += ["", "## Tokens/s: median (min-max over repeats)", ""]
    lines += _table(["method", "backend"] + cats, [[a, bk] + [_speed(by.get((a, bk, c))) for c in cats]
                                                   for a, bk in rep.keys])

    lines += ["", "## Per method (all categories)", ""]
    header = ["method", "backend", "tok/s", "speedup"] + (["vs eager"] if vs_eager else []) + [
        "theoretical", "efficiency", "τ", "τ-1", "α (path)", "node acc.", "α by position", "γ", "c", "verify×",
        "fwd/prompt", "draft",
        "verify", "peak MB", "lossless", "identical"]
    rows = []
    for a, bk in rep.keys:
        r = by.get((a, bk, ALL))
        if r is None:
            continue
        acc = r.get("acceptance_by_position") or []
        rows.append([a, bk, _speed(r), _f(r["speedup"])] + ([_f(r.get("speedup_vs_eager"))] if vs_eager else []) + [
            _f(r.get("theoretical_speedup")), _f(r.get("efficiency"), 2, True),
            _f(r["tau"]), _f(r["tau_minus_bonus"]), _f(r.get("alpha")), _f(r.get("node_acceptance")),
            " ".join(_f(x) for x in acc[:8]) + (" …" if len(acc) > 8 else "") or "-",
            _f(r.get("gamma")), _f(r.get("c"), 3), _f(r.get("verify_x")), _f(r["target_forwards"], 1),
            _f(r["draft_share"], 1, True), _f(r["verify_share"], 1, True), _f(r["peak_mem_mb"], 0),
            _badge(r), _f(r["lossless_match"])])
    lines += _table(header, rows)
    lines += ["", f"α (path) = {M.PATH_ACCEPTANCE}: accepted draft tokens / drafted positions on the verified path "
              "(up to and including the first rejection); node acc. = accepted / all drafted tree nodes "
              "(docs/metrics.md). lossless: every run of the arm was (LOSSY otherwise); identical: the fraction "
              "of prompts token-identical to plain greedy decoding, for lossless arms."]
    lines += ["", "## Quality against plain decoding (all categories; docs/quality.md)", ""]
    lines += _table(["method", "backend", "speedup", "lossless", "agreement", "to 1st divergence", "ROUGE-L",
                     "NLL gap", "task score", "what made it lossy"],
                    [[a, bk, _f(r["speedup"]), _badge(r), _f(r.get("agreement"), 3),
                      _f(r.get("prefix_agreement"), 3), _f(r.get("rouge_l"), 3), _f(r.get("nll_gap"), 3),
                      _f(r.get("task_score")), "; ".join(r.get("lossy") or []) or "-"]
                     for a, bk in rep.keys if (r := by.get((a, bk, ALL))) is not None])

    lines += ["", *speed_quality_lines(rep, measure)]

    detail = [r for r in rep.rows if r["category"] != ALL and r.get("gamma")]
    if detail:
        lines += ["", "## Drafting methods by category", ""]
        lines += _table(["method", "backend", "category", "speedup", "theoretical", "τ", "α (path)", "γ", "c",
                         "verify×", "lossless", "identical"],
                        [[r["arm"], r["backend"], r["category"], _f(r["speedup"]), _f(r.get("theoretical_speedup")),
                          _f(r["tau"]), _f(r.get("alpha")), _f(r.get("gamma")), _f(r.get("c"), 3),
                          _f(r.get("verify_x")), _badge(r), _f(r["lossless_match"])] for r in detail])

    if rep.hf:
        lines += ["", "## Against transformers (same prompts, same process)", ""]
        lines += _table(["ours", "transformers", "ours tok/s", "HF tok/s", "ours / HF", "τ ours", "τ HF",
                         "HF tokens = ours", "HF warm-up s", "HF settings"],
                        [[f"{h['ours']} ({h['ours_backend']})" if h["ours"] else "-", h["hf"],
                          _f(h["ours_tokens_per_s"]), _f(h["hf_tokens_per_s"]), _f(h["ours_over_hf"]),
                          _f(h["ours_tau"]), _f(h["hf_tau"]), _f(h["identical_to_ours"]), _f(h.get("warmup_s"), 1),
                          ", ".join(f"{k}={v}" for k, v in h["params"].items()) or "-"] for h in rep.hf])
    if rep.trace_overhead:
        t = rep.trace_overhead
        lines += ["", f"## Tracing overhead (plain decoding, {t.get('backend', 'eager')})", "",
                  f"tracing on {_f(t['tokens_per_s_trace_on'])} tok/s "
                  f"({_f(t['spread_on'][0])}-{_f(t['spread_on'][1])}), "
                  f"off {_f(t['tokens_per_s_trace_off'])} tok/s ({_f(t['spread_off'][0])}-{_f(t['spread_off'][1])}): "
                  f"overhead {_f(t['overhead_pct'], 1)}% (medians), {_f(t.get('overhead_pct_best'), 1)}% "
                  f"(best repeats)"]
    if rep.roofline:
        r = rep.roofline
        base = rep.name(BASELINE, r.get("backend", "eager"))
        extra = "".join(f"; {k} {_f(v, 2, True)}" for k, v in r.get("achieved_fraction_by_arm", {}).items()
                        if k != base)
        lines += ["", "## Memory-bandwidth roofline (plain decoding)", "",
                  f"weights read per token {r['weight_bytes_per_token'] / 2**20:.1f} MiB · {_bandwidths(r)} · "
                  f"roofline {_f(r['roofline_tokens_per_s'], 1)} tok/s · "
                  f"plain decoding ({r.get('backend', 'eager')}) {_f(r.get('measured_tokens_per_s'), 1)} tok/s = "
                  f"{_f(r.get('achieved_fraction'), 2, True)} of the roofline{extra}"]
        if r.get("decode_tokens_per_s") is not None:
            lines += ["", f"After the first token (the prompt's forward excluded), plain decoding runs "
                          f"{_f(r['decode_tokens_per_s'], 1)} tok/s = {_f(r['decode_fraction'], 2, True)} of the "
                          "roofline (medians over its runs, each against the bandwidths measured right before "
                          "it)."]
    lines += ["", "## Lossless match (lossless arms)", ""]
    if rep.mismatches:
        lines += _table(["method", "backend", "prompt", "category", "repeat", "first differing position", "length",
                         "baseline length", "p(baseline token) - p(its token)"],
                        [[m["arm"], m.get("backend", "eager"), m["prompt"], m["category"], str(m["repeat"]),
                          str(m["first_diff"]), str(m["len"]), str(m["baseline_len"]), _f(m.get("p_margin"), 4)]
                         for m in rep.mismatches[:MAX_MISMATCH_ROWS]])
        lines.append("(a margin near 0 is a floating-point tie between the top two tokens, not a broken method)")
        if len(rep.mismatches) > MAX_MISMATCH_ROWS:
            lines.append(f"... and {len(rep.mismatches) - MAX_MISMATCH_ROWS} more (all in --json and the store)")
    else:
        lines.append("every run of a lossless arm is token-identical to plain greedy decoding on its backend")
    return "\n".join(lines) + "\n"


def _badge(row: dict[str, Any]) -> str:
    """A row's lossless column: "yes", or "LOSSY" (never "yes" for an arm with a lossy run)."""
    return "yes" if row.get("lossless", True) and not row.get("lossy") else "LOSSY"


def _speed(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    return f"{_f(r['tokens_per_s'])} ({_f(r['tokens_per_s_min'])}-{_f(r['tokens_per_s_max'])})"


def write_markdown(rep: BenchmarkReport, path: str | Path, measure: str = "agreement") -> Path:
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rep, measure), encoding="utf-8")
    return out


def write_csv(rep: BenchmarkReport, path: str | Path) -> Path:
    """One line per (method, backend, category) with every metric; acceptance_by_position as a JSON list."""
    df = rep.frame()
    if "lossy" in df:
        df["lossy"] = df["lossy"].map(lambda v: "; ".join(v) if isinstance(v, list) else "")
    if "acceptance_by_position" in df:
        df["acceptance_by_position"] = df["acceptance_by_position"].map(
            lambda v: json.dumps([None if x != x else x for x in v]) if isinstance(v, list) else "[]")
    df.insert(0, "benchmark_id", rep.id)
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    return out


def _bandwidths(r: dict) -> str:
    """The roofline's bandwidths: "read bandwidth 40.1 GB/s (copy 33.9; medians of 7 measurements)", or the copy
    alone for a benchmark stored before read bandwidths were measured."""
    n = r.get("bandwidth_measurements") or 1
    of = f"medians of {n} measurements" if n > 1 else "one measurement"
    if r.get("read_bandwidth_GBps") is None:
        return f"copy bandwidth {_f(r['copy_bandwidth_GBps'])} GB/s ({of})"
    return f"read bandwidth {_f(r['read_bandwidth_GBps'])} GB/s (copy {_f(r['copy_bandwidth_GBps'])}; {of})"
