"""Benchmark results, computed from the runs stored under one benchmark id (never from memory).

How the per-run metrics of workbench.metrics (τ, α, α_k, γ, c, verify ×, theoretical
speedup) are pooled over a benchmark's runs:

- a row is one arm on one backend (workbench.backend: eager, compiled) on one
  category; each run carries its backend (params["bench.backend"], env["backend"]).
  A transformers arm is tagged with the backend it corresponds to (bench.hf.HF_BACKEND).
- tokens/s of an arm on a category, repeat r: total new tokens / total wall time of
  that repeat's runs on the category's prompts. Reported: the median over
  repeats, and the min-max over repeats as the spread.
- speedup = median tokens/s of the arm / median tokens/s of the autoregressive
  baseline on the same backend, same prompts (a ratio of totals: long answers
  weigh more); speedup_vs_eager = the same against the eager backend's baseline
  (when the benchmark ran eager): what the backend and the method give together.
- τ = total new tokens / total target forward passes (counts the bonus token; 1.0
  for plain decoding); τ-1 = the same without the bonus token (gpt-fast's).
- α, path acceptance = accepted draft tokens / drafted positions on the verified path
  (workbench.metrics.acceptance); node acceptance = accepted / all drafted tree nodes;
  α_k per draft position k, conditional on reaching it (workbench.metrics.acceptance_by_position),
  over all steps.
- γ = mean draft length (deepest path) over decode steps, empty drafts included.
- c = (draft time per drafted token of the arm) / (target time per plain-decoding
  forward: the baseline's verify time per decode step), same category, same run.
- theoretical speedup = workbench.metrics.theoretical_speedup(α, γ, c) (Leviathan et
  al.), for chain methods only (tree methods get none); efficiency = measured / theoretical.
- verify x = the arm's mean verify time per decode step / the baseline's: what a
  (γ+1)-token verification really costs against one plain forward (Leviathan's
  formula assumes 1.0).
- lossless = whether every run of the arm was lossless (its method and every option: the
  runs' stored ``lossless`` flag, workbench.trace.Trace.lossy empty); ``lossy`` lists what made
  its runs lossy. A lossy arm is never reported as lossless.
- lossless match = fraction of prompts whose output is token-identical to the
  baseline's (first repeat) on the same backend in every repeat (a transformers
  arm whose backend did not run: the reference backend's); mismatches keep the
  first differing position. For lossless arms only (NaN for a lossy arm, whose
  differences are the quality it trades, reported by the quality columns).
- quality (workbench.quality, stored with each run against the baseline arm's first run of the
  prompt): the mean over the arm's runs of token agreement, agreement to the first divergence,
  ROUGE-L, NLL gap (nats/token) and task score (over the runs of items with a checker; NaN
  when none); runs without a stored quality are left out of the means.
- trace overhead = tokens/s with DecodeConfig(trace=False) / tokens/s with tracing - 1, from the
  medians; also from the best repeats (contention on a shared machine only ever slows a run down,
  so the best repeat is the least disturbed one). On the reference backend (eager when it ran).
- roofline: workbench.bench.roofline, against the reference backend's baseline.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .. import metrics as M
from ..trace import Step, Trace
from ..config import BASELINE, ConfigError
from ..methods import get_method
from ..quality import MEASURES
from .arms import TRACE_OFF_LABEL
from .hf import OURS, hf_backend
from .roofline import bound, roofline

ALL = "all"
EAGER = "eager"
# The quality measures a row averages over its runs (workbench.quality.MEASURES).
QUALITY_MEANS = tuple(MEASURES)


@dataclass
class _Run:
    id: str
    arm: str
    method: str
    category: str
    prompt: str
    repeat: int
    new_tokens: int
    wall_s: float
    forwards: int
    draft_s: float
    verify_s: float
    drafted: int
    peak_mem_mb: float
    output_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    backend: str = EAGER
    lossy: list[str] = field(default_factory=list)  # what made the run lossy (empty: lossless)
    quality: dict[str, Any] | None = None  # workbench.quality.Quality.to_dict(); None: not measured
    # the memory bandwidths in the run's env (bytes/s): for a plain-decoding run, measured right before it
    copy_Bps: float | None = None
    read_Bps: float | None = None


def _load(store, benchmark_id: str, with_steps: bool) -> tuple[dict[str, Any], list[_Run]]:
    bench = store.get_benchmark(benchmark_id)
    runs: list[_Run] = []
    for rec in store.list_runs(benchmark_id=bench["id"], status="finished", limit=None):
        p, m = rec.params, rec.metrics
        if "bench.arm" not in p:
            continue
        runs.append(_Run(
            id=rec.id, arm=p["bench.arm"], method=rec.method, category=p.get("bench.category", "?"),
            prompt=p.get("bench.prompt", rec.id), repeat=int(rec.typed_params.get("bench.repeat", 0)),
            new_tokens=int(m.get("new_tokens") or 0), wall_s=float(m.get("wall_s") or 0.0),
            forwards=int(m.get("target_forward_passes") or 0), draft_s=float(m.get("draft_s") or 0.0),
            verify_s=float(m.get("verify_s") or 0.0), drafted=int(m.get("drafted_tokens") or 0),
            peak_mem_mb=_num(m.get("peak_mem_mb")), output_ids=list(rec.output_ids or []),
            steps=store.load_trace(rec.id).steps if with_steps else [],
            backend=p.get("bench.backend") or (rec.env or {}).get("backend") or EAGER,
            lossy=list(rec.lossy) if not rec.lossless else [], quality=rec.quality,
            copy_Bps=(rec.env or {}).get("copy_bandwidth_Bps"), read_Bps=(rec.env or {}).get("read_bandwidth_Bps")))
    return bench, runs


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


Key = tuple[str, str]  # (arm label, backend)


def _keys(bench: dict[str, Any], runs: list[_Run]) -> list[Key]:
    """Every (arm, backend) in the benchmark's order: ours backend by backend, then the transformers arms."""
    cfg = bench.get("config", {})
    order = [(a["label"], a.get("backend") or EAGER) for a in cfg.get("arms", [])]
    order += [(a["label"], hf_backend(a["label"])) for a in cfg.get("hf_arms", [])]
    order = list(dict.fromkeys(order))
    return order + [k for k in dict.fromkeys((r.arm, r.backend) for r in runs) if k not in order]


def _backends(bench: dict[str, Any], runs: list[_Run]) -> list[str]:
    """The backends our arms ran on (not the transformers arms' tags)."""
    named = list(bench.get("config", {}).get("backends") or [])
    hf = {a["label"] for a in bench.get("config", {}).get("hf_arms", [])}
    return named + [b for b in dict.fromkeys(r.backend for r in runs if r.arm not in hf) if b not in named]


def reference_backend(backends: list[str]) -> str:
    """The backend the report's single-backend sections use: eager when it ran, else the first."""
    return EAGER if EAGER in backends or not backends else backends[0]


def _categories(bench: dict[str, Any], runs: list[_Run]) -> list[str]:
    cats = list(bench.get("config", {}).get("categories", []))
    return cats + [c for c in dict.fromkeys(r.category for r in runs) if c not in cats]


def _speed(runs: list[_Run]) -> tuple[float, float, float, list[float]]:
    """(median, min, max, per-repeat) of total tokens / total time per repeat."""
    by_rep: dict[int, list[_Run]] = {}
    for r in runs:
        by_rep.setdefault(r.repeat, []).append(r)
    per = [sum(r.new_tokens for r in rs) / wall for rs in by_rep.values()
           if (wall := sum(r.wall_s for r in rs)) > 0]
    if not per:
        return math.nan, math.nan, math.nan, []
    return statistics.median(per), min(per), max(per), per


def _first_diff(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _reference_outputs(runs: list[_Run], baseline: str) -> dict[str, _Run]:
    """The baseline run (first repeat) of every prompt."""
    ref: dict[str, _Run] = {}
    for r in runs:
        if r.arm == baseline and (r.prompt not in ref or r.repeat < ref[r.prompt].repeat):
            ref[r.prompt] = r
    return ref


def _target_p(run: _Run, i: int) -> float | None:
    """The target's probability (temperature 1) of the run's i-th output token, from its trace."""
    if not run.steps:
        return None
    origins = Trace(method=run.method, params={}, prompt_ids=[], steps=run.steps).token_origins()
    return origins[i]["p"] if i < len(origins) else None


def _lossless(runs: list[_Run], ref: dict[str, _Run]) -> tuple[float, list[dict[str, Any]]]:
    """Fraction of prompts token-identical to the baseline; each mismatch with its first differing position.

    Greedy decoding is identical up to floating-point ties: a verification forward over several
    tokens may round differently from one-token forwards, which flips an argmax only when the top
    two tokens are (nearly) equally likely. So a mismatch carries the target's probability of the
    baseline's token and of the method's token at the first difference, and their margin: a margin
    near 0 is a tie, a large one a real bug.
    """
    prompts: dict[str, bool] = {}
    mismatches = []
    if any(r.lossy for r in runs):
        return math.nan, []  # identity is not what a lossy arm claims: its quality columns say how far it is
    for r in sorted(runs, key=lambda r: (r.prompt, r.repeat)):
        base = ref.get(r.prompt)
        if base is None:
            continue
        want = base.output_ids
        same = r.output_ids == want
        prompts[r.prompt] = prompts.get(r.prompt, True) and same
        if not same:
            i = _first_diff(r.output_ids, want)
            p_base, p_ours = _target_p(base, i), _target_p(r, i)
            margin = p_base - p_ours if p_base is not None and p_ours is not None else None
            mismatches.append({"arm": r.arm, "backend": r.backend, "prompt": r.prompt, "category": r.category,
                               "repeat": r.repeat,
                               "first_diff": i, "len": len(r.output_ids), "baseline_len": len(want),
                               "p_baseline": p_base, "p_ours": p_ours, "p_margin": margin, "run_id": r.id})
    frac = sum(prompts.values()) / len(prompts) if prompts else math.nan
    return frac, mismatches


def _plain_forward_s(runs: list[_Run]) -> float:
    return M.plain_forward_s([s for r in runs for s in r.steps])


def _row(arm: str, backend: str, cat: str, runs: list[_Run], base_runs: list[_Run], eager_runs: list[_Run],
         ref: dict[str, _Run], detailed: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    med, lo, hi, per = _speed(runs)
    base_med = _speed(base_runs)[0] if base_runs else math.nan
    eager_med = _speed(eager_runs)[0] if eager_runs else math.nan
    tokens = sum(r.new_tokens for r in runs)
    forwards = sum(r.forwards for r in runs)
    wall = sum(r.wall_s for r in runs)
    match, mismatches = _lossless(runs, ref)
    row: dict[str, Any] = {
        "arm": arm, "backend": backend, "method": runs[0].method, "category": cat,
        "prompts": len({r.prompt for r in runs}),
        "runs": len(runs), "tokens_per_s": med, "tokens_per_s_min": lo, "tokens_per_s_max": hi,
        "speedup": med / base_med if base_med and base_med == base_med else math.nan,
        "speedup_vs_eager": med / eager_med if eager_med and eager_med == eager_med else math.nan,
        "tau": M.tau(tokens, forwards),
        "tau_minus_bonus": M.tau_without_bonus(tokens, forwards),
        "target_forwards": forwards / len(runs),
        "new_tokens": tokens / len(runs),
        "draft_share": sum(r.draft_s for r in runs) / wall if wall else math.nan,
        "verify_share": sum(r.verify_s for r in runs) / wall if wall else math.nan,
        "peak_mem_mb": max((r.peak_mem_mb for r in runs if r.peak_mem_mb == r.peak_mem_mb), default=math.nan),
        "lossless": not any(r.lossy for r in runs),
        "lossy": list(dict.fromkeys(line for r in runs for line in r.lossy)),
        "lossless_match": match,
        **_quality_means(runs),
    }
    if detailed:
        steps = [s for r in runs for s in r.steps]
        acc = M.acceptance(steps)
        alpha = acc.path_rate
        gamma = M.mean_draft_length(steps)
        t_plain = _plain_forward_s(base_runs)
        c = M.cost_ratio(steps, t_plain)
        if gamma == 0:
            theo = 1.0
        elif _is_tree(runs[0].method) or alpha != alpha or c != c:
            theo = math.nan  # Leviathan's formula is for chains
        else:
            theo = M.theoretical_speedup(alpha, gamma, c)
        row.update({
            "alpha": alpha, "node_acceptance": acc.node_rate, "accepted_draft_tokens": acc.accepted,
            "path_positions": acc.path_positions, "drafted_nodes": acc.drafted_nodes,
            "acceptance_by_position": M.acceptance_by_position(steps), "gamma": gamma, "c": c,
            "theoretical_speedup": theo,
            "efficiency": row["speedup"] / theo if theo == theo and theo > 0 else math.nan,
            "verify_x": M.verify_cost_ratio(steps, t_plain),
        })
    return row, mismatches


def _quality_means(runs: list[_Run]) -> dict[str, float]:
    """The mean of each quality measure over the runs that have it (NaN when none does)."""
    out = {}
    for key in QUALITY_MEANS:
        vals = [float(v) for r in runs if (v := (r.quality or {}).get(key)) is not None]
        out[key] = statistics.fmean(vals) if vals else math.nan
    return out


def _is_tree(method: str) -> bool:
    try:
        return bool(get_method(method).tree)
    except ConfigError:  # a transformers arm: chains
        return False


def _compute(bench: dict[str, Any], runs: list[_Run], detailed: bool) -> dict[str, Any]:
    keys = _keys(bench, runs)
    cats = _categories(bench, runs)
    backends = _backends(bench, runs)
    ref_backend = reference_backend(backends)
    arms = list(dict.fromkeys(a for a, _ in keys))
    baseline = next((a for a in arms if a == BASELINE), arms[0] if arms else BASELINE)
    refs = {b: _reference_outputs([r for r in runs if r.backend == b], baseline) for b in backends}
    swept = {a["label"]: dict(a.get("swept") or {}) for a in bench.get("config", {}).get("arms", [])}
    rows, mismatches = [], []
    for arm, backend in keys:
        mine = [r for r in runs if r.arm == arm and r.backend == backend]
        if not mine:
            continue
        lossless_vs = backend if refs.get(backend) else ref_backend  # a transformers arm's backend may not have run
        for cat in cats + [ALL]:
            sel = [r for r in mine if cat == ALL or r.category == cat]
            if not sel:
                continue
            base = [r for r in runs if r.arm == baseline and (cat == ALL or r.category == cat)]
            row, mm = _row(arm, backend, cat, sel, [r for r in base if r.backend == backend],
                           [r for r in base if r.backend == EAGER], refs.get(lossless_vs, {}), detailed)
            row["lossless_vs"] = lossless_vs
            row["swept"] = swept.get(arm, {})  # a --sweep arm's knob values (its curve on the Pareto plot)
            rows.append(row)
            if cat == ALL:
                mismatches += mm
    return {"keys": [k for k in keys if any((r["arm"], r["backend"]) == k for r in rows)], "arms": arms,
            "backends": backends, "reference_backend": ref_backend, "categories": cats, "baseline": baseline,
            "rows": rows, "mismatches": mismatches}


def display_name(arm: str, backend: str, backends: list[str], hf_labels=OURS) -> str:
    """An arm as tables name it: the label, with "@backend" when the benchmark ran several (not for transformers')."""
    return arm if len(backends) <= 1 or arm in hf_labels else f"{arm}@{backend}"


def benchmark_table(store, benchmark_id: str):
    """Speedups against plain decoding on the same backend: a DataFrame with one row per arm (per backend:
    "label@backend" when the benchmark ran several) and one column per category + "all".

    Fast (stored metrics only, no steps); used by the app's History tab and notebooks.
    """
    bench, runs = _load(store, benchmark_id, with_steps=False)
    res = _compute(bench, runs, detailed=False)
    cols = res["categories"] + [ALL]
    names = {k: display_name(*k, res["backends"]) for k in res["keys"]}
    table = pd.DataFrame(index=pd.Index(list(names.values()), name="method"), columns=cols, dtype=float)
    for row in res["rows"]:
        table.loc[names[(row["arm"], row["backend"])], row["category"]] = row["speedup"]
    return table


def benchmark_rows(store, benchmark_id: str) -> tuple[list[dict[str, Any]], dict[Key, str]]:
    """The report's rows without the step-level metrics (fast: stored metrics and quality only), and each
    (arm, backend)'s display name: what the app's speed-quality plot of a benchmark reads."""
    bench, runs = _load(store, benchmark_id, with_steps=False)
    res = _compute(bench, runs, detailed=False)
    return res["rows"], {k: display_name(*k, res["backends"]) for k in res["keys"]}


@dataclass
class BenchmarkReport:
    """Everything a benchmark measured. `rows`: one dict per (arm, backend, category), category "all" included."""

    benchmark: dict[str, Any]
    rows: list[dict[str, Any]]
    mismatches: list[dict[str, Any]]
    hf: list[dict[str, Any]]
    trace_overhead: dict[str, Any] | None
    roofline: dict[str, Any] | None
    categories: list[str]
    arms: list[str]  # labels, each once
    backends: list[str] = field(default_factory=lambda: [EAGER])  # the backends our arms ran on
    keys: list[tuple[str, str]] = field(default_factory=list)  # (arm, backend) of every row, in order

    @property
    def id(self) -> str:
        return self.benchmark["id"]

    def frame(self):
        """`rows` as a pandas DataFrame (acceptance_by_position kept as a list column)."""
        return pd.DataFrame(self.rows)

    def overall(self, arm: str, backend: str | None = None) -> dict[str, Any] | None:
        """The "all" row of `arm` on `backend` (None: its first backend)."""
        return next((r for r in self.rows if r["arm"] == arm and r["category"] == ALL
                     and (backend is None or r["backend"] == backend)), None)

    def name(self, arm: str, backend: str) -> str:
        return display_name(arm, backend, self.backends)

    def to_json(self) -> dict[str, Any]:
        b = self.benchmark
        env = b.get("env") or {}
        return _clean({"benchmark_id": b["id"], "suite": b["suite"], "status": b["status"],
                       "created_at": b["created_at"], "config": b["config"], "env": b["env"],
                       "cpu": env.get("cpu"), "backends": self.backends, "warmup_s": env.get("warmup_s"),
                       "hf_warmup_s": env.get("hf_warmup_s"),
                       "categories": self.categories, "arms": self.arms, "rows": self.rows,
                       "lossless_mismatches": self.mismatches, "hf_comparison": self.hf,
                       "trace_overhead": self.trace_overhead, "roofline": self.roofline})


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def benchmark_report(store, benchmark_id: str) -> BenchmarkReport:
    """The full report of a stored benchmark: per-arm rows, HF comparison, tracing overhead, roofline."""
    bench, runs = _load(store, benchmark_id, with_steps=True)
    res = _compute(bench, runs, detailed=True)
    rows = res["rows"]
    backends, ref_backend = res["backends"], res["reference_backend"]
    overall = {(r["arm"], r["backend"]): r for r in rows if r["category"] == ALL}
    hf = []
    for (arm, backend), row in overall.items():
        if arm not in OURS:
            continue
        # ours: the same method on the backend this transformers arm corresponds to, else on the reference backend
        candidates = [k for k in res["keys"] if k in overall and overall[k]["method"] == OURS[arm]
                      and k[0] != TRACE_OFF_LABEL and k[0] not in OURS]
        ours_key = next((k for k in candidates if k[1] == backend),
                        next((k for k in candidates if k[1] == ref_backend), None))
        ours = overall.get(ours_key) if ours_key else None
        same = _identical(runs, (arm, backend), ours_key) if ours_key else math.nan
        hf.append({"hf": arm, "hf_backend": backend, "ours": ours_key[0] if ours_key else None,
                   "ours_backend": ours_key[1] if ours_key else None, "hf_tokens_per_s": row["tokens_per_s"],
                   "ours_tokens_per_s": ours["tokens_per_s"] if ours else math.nan,
                   "ours_over_hf": (ours["tokens_per_s"] / row["tokens_per_s"]) if ours and row["tokens_per_s"]
                   else math.nan, "hf_tau": row["tau"], "ours_tau": ours["tau"] if ours else math.nan,
                   "hf_speedup": row["speedup"], "hf_speedup_vs_eager": row["speedup_vs_eager"],
                   "identical_to_ours": same, "identical_to_baseline": row["lossless_match"],
                   "warmup_s": (bench.get("env") or {}).get("hf_warmup_s", {}).get(arm),
                   "params": next((a.get("params", {}) for a in bench["config"].get("hf_arms", [])
                                   if a.get("label") == arm), {})})
    trace = None
    on_row, off_row = overall.get((BASELINE, ref_backend)), overall.get((TRACE_OFF_LABEL, ref_backend))
    if on_row and off_row:
        on, off = on_row["tokens_per_s"], off_row["tokens_per_s"]
        best_on, best_off = on_row["tokens_per_s_max"], off_row["tokens_per_s_max"]
        trace = {"backend": ref_backend, "tokens_per_s_trace_on": on, "tokens_per_s_trace_off": off,
                 "overhead_pct": (off / on - 1) * 100 if on and off else math.nan,
                 "overhead_pct_best": (best_off / best_on - 1) * 100 if best_on and best_off else math.nan,
                 "spread_on": [on_row["tokens_per_s_min"], on_row["tokens_per_s_max"]],
                 "spread_off": [off_row["tokens_per_s_min"], off_row["tokens_per_s_max"]]}
    roof = None
    env = bench.get("env", {})
    if env.get("copy_bandwidth_Bps") and env.get("target_weight_bytes"):
        base = overall.get((res["baseline"], ref_backend))
        weight_bytes = env["target_weight_bytes"]
        plain = [r for r in runs if (r.arm, r.backend) == (res["baseline"], ref_backend)]
        # each plain run's bandwidths were measured right before it (runner.bandwidths_now; a benchmark stored
        # before that has the ones measured as it started): the roofline is their median, and each run's
        # decode rate is judged against its own
        copies = [r.copy_Bps for r in plain if r.copy_Bps] or [env["copy_bandwidth_Bps"]]
        reads = [r.read_Bps for r in plain if r.read_Bps] or [env.get("read_bandwidth_Bps")]
        roof = roofline(weight_bytes, statistics.median(copies), base["tokens_per_s"] if base else None,
                        read=statistics.median(reads) if all(reads) else None)
        roof["backend"] = ref_backend
        roof["bandwidth_measurements"] = len(copies)
        # the same plain-decoding runs after their first token: the rate the roofline bounds
        decode = [(M.decode_tokens_per_s(r.steps, r.wall_s),
                   bound(r.copy_Bps or env["copy_bandwidth_Bps"], r.read_Bps) / weight_bytes) for r in plain]
        decode = [(rate, top) for rate, top in decode if rate == rate]  # top: the run's own roofline
        if decode:
            roof["decode_tokens_per_s"] = statistics.median(rate for rate, _ in decode)
            roof["decode_fraction"] = statistics.median(rate / top for rate, top in decode)
        shown = [(res["baseline"], b) for b in backends] + [(TRACE_OFF_LABEL, ref_backend)]
        shown += [k for k in res["keys"] if k[0] in OURS and OURS[k[0]] == BASELINE]
        roof["achieved_fraction_by_arm"] = {
            display_name(*k, backends): overall[k]["tokens_per_s"] / roof["roofline_tokens_per_s"]
            for k in shown if k in overall}
    return BenchmarkReport(benchmark=bench, rows=rows, mismatches=res["mismatches"], hf=hf, trace_overhead=trace,
                           roofline=roof, categories=res["categories"],
                           arms=list(dict.fromkeys(a for a, _ in res["keys"])), backends=backends, keys=res["keys"])


def _identical(runs: list[_Run], arm: Key, ours: Key) -> float:
    """Fraction of prompts where every repeat of `arm` equals `ours`' first repeat, token for token."""
    ref = _reference_outputs([r for r in runs if r.backend == ours[1]], ours[0])
    return _lossless([r for r in runs if (r.arm, r.backend) == arm], ref)[0]
