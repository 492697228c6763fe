# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Comparing runs from the store
#
# Every run (from the CLI, the app, a benchmark or a notebook) is one row in the SQLite run store,
# with its parameters, metrics and per-step trace. This notebook reads it with the `store` API into
# pandas and compares methods:
#
# * **speedup vs τ**: τ = new tokens / target forwards (counts the bonus token; plain decoding = 1).
#   If drafting were free and verifying γ+1 tokens cost one plain forward, speedup would equal τ;
#   the gap below the diagonal is what drafting and wider verification cost.
# * **acceptance by draft position** α_k = P(position k accepted | positions < k accepted).
# * **where the time goes**: draft, verify (target forward) and other (bookkeeping) per token.
#
# The store is `$WORKBENCH_DB` if set, else the user data directory (`workbench runs` lists it).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")  # compare runs of this target
DRAFT = os.environ.get("WORKBENCH_NOTEBOOK_DRAFT", f"{MODEL}:bf16")  # used only if runs must be made
TOKENS = int(os.environ.get("WORKBENCH_NOTEBOOK_TOKENS", "48"))  # idem
BENCHMARK_ID = os.environ.get("WORKBENCH_NOTEBOOK_BENCHMARK") or None  # None: the newest benchmark

# %%
import math
import sys
from pathlib import Path

try:
    import workbench
except ModuleNotFoundError:  # not installed (pip install -e .): use the checkout this notebook lives in
    sys.path.insert(0, str(Path.cwd().parent))
    import workbench

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from IPython.display import display

from store import RunStore
from ui import presenters as P
from workbench import SamplingConfig
from workbench.models import normalize_spec, parse_spec
from workbench.metrics import acceptance_by_position

store = RunStore()
TARGET = normalize_spec(*parse_spec(MODEL))  # the spec runs are stored under
print(f"store: {store.url}  |  target: {TARGET}")

# %% [markdown]
# ## All runs as a DataFrame
#
# `runs_dataframe()` has one row per run: identity columns, `sampling.*`, `param.*`, every summary
# metric, and `acceptance_by_position` as a list. It takes `list_runs`' filters (method, status,
# source, benchmark_id, search, limit).

# %%
everything = store.runs_dataframe()
print(f"{len(everything)} runs in the store")
if len(everything):
    display(everything.groupby(["target", "method", "status"]).size().rename("runs").to_frame())

# %% [markdown]
# Speedup needs a baseline: a finished plain-decoding run with the same target, prompt, sampling,
# chat flag, `max_new_tokens` and device/dtype (`RunStore.baseline_for`, what the app's cards
# use). Runs without one get no speedup.

# %%
def load_runs() -> pd.DataFrame:
    df = store.runs_dataframe(status="finished")
    df = df[df["target"] == TARGET].copy()
    recs = {r.id: r for r in store.list_runs(status="finished", limit=None)}
    base = {rid: store.baseline_for(recs[rid]) for rid in df["id"]}
    df["baseline_tokens_per_s"] = df["id"].map(lambda rid: base[rid].metrics.get("tokens_per_s")
                                               if base[rid] is not None else math.nan)
    df["speedup"] = df["tokens_per_s"] / df["baseline_tokens_per_s"]
    df.loc[df["method"] == "autoregressive", "speedup"] = 1.0  # the baseline itself
    return df


runs = load_runs()
comparable = runs[(runs["method"] != "autoregressive") & runs["speedup"].notna()]
print(f"{len(runs)} finished runs of {TARGET}; {len(comparable)} non-plain runs with a baseline")

# %% [markdown]
# An empty store (or one without baselines for this target) gets a few runs first, so there is
# something to compare: two prompts, plain decoding and three methods, logged with
# `source="notebook"` like every notebook run.

# %%
if comparable.empty:
    prompts = ["Explain in two sentences what a KV cache is.",
               "Repeat the following text exactly: Speculative decoding lets a small draft model propose several "
               "tokens, and the large target model checks all of them in a single forward pass."]
    for prompt in prompts:
        for method in ["autoregressive", "speculative", "prompt_lookup", "tree_dynamic"]:
            r = workbench.run(method, prompt, target=MODEL, draft=DRAFT, sampling=SamplingConfig(),
                              max_new_tokens=TOKENS, source="notebook")
            print(f"made {method:<15} run {r.run_id[:8]}  τ={r.summary.mean_accepted_tokens:.2f}")
    runs = load_runs()

# %%
cols = ["id", "created_at", "method", "source", "prompt", "new_tokens", "tokens_per_s",
        "mean_accepted_tokens", "acceptance_rate", "speedup"]
runs[cols].assign(id=runs["id"].str[:8], prompt=runs["prompt"].str[:40]).head(20)

# %% [markdown]
# ## Speedup vs τ, per method
#
# Each point is one run against its own baseline. Points on the dotted diagonal would mean that
# drafting is free and that verifying a draft costs one plain forward. The distance below it is the
# price of drafting (draft-model forwards; a string search for prompt lookup) and of verifying
# several tokens in one forward, which on a CPU costs noticeably more than one token.

# %%
pts = runs[runs["speedup"].notna()].copy()
pts["short_id"] = pts["id"].str[:8]
pts["prompt_start"] = pts["prompt"].str[:50]
fig = px.scatter(pts, x="mean_accepted_tokens", y="speedup", color="method", symbol="source",
                 hover_data=["short_id", "prompt_start", "new_tokens", "acceptance_rate"],
                 template=P.PLOT_TEMPLATE, height=440,
                 labels={"mean_accepted_tokens": "τ (tokens per target forward)", "speedup": "speedup vs plain"},
                 title=f"speedup vs τ ({TARGET})")
hi = max(2.0, float(pts["mean_accepted_tokens"].max()) * 1.05)
fig.add_trace(go.Scatter(x=[1, hi], y=[1, hi], mode="lines", name="speedup = τ",
                         line=dict(dash="dot", color="#999")))
fig.add_hline(y=1.0, line_dash="dash", line_color="#ccc")
fig.show()

# %% [markdown]
# Per method (ratio of totals, so long runs weigh more):

# %%
agg = runs.groupby("method").agg(runs=("id", "size"), tokens=("new_tokens", "sum"),
                                 forwards=("target_forward_passes", "sum"), wall_s=("wall_s", "sum"),
                                 accepted=("accepted_draft_tokens", "sum"), drafted=("drafted_tokens", "sum"),
                                 median_speedup=("speedup", "median"))
agg["τ"] = agg["tokens"] / agg["forwards"]
agg["tokens/s"] = agg["tokens"] / agg["wall_s"]
agg["accepted/drafted"] = agg["accepted"] / agg["drafted"].where(agg["drafted"] > 0)
agg.sort_values("median_speedup", ascending=False).style.format(precision=2, na_rep="—")

# %% [markdown]
# ## Acceptance by draft position
#
# α_k pools the steps of all runs of a method (`workbench.metrics.acceptance_by_position` on the
# stored steps, loaded with `store.load_trace`). It falls with k for a draft model (errors
# compound); prompt lookup is all-or-nothing: a copied span either matches or diverges early.

# %%
rows = []
for method, ids in runs[runs["drafted_tokens"] > 0].groupby("method")["id"]:
    steps = [s for rid in ids.head(50) for s in store.load_trace(rid).steps]  # the newest 50 runs
    for k, a in enumerate(acceptance_by_position(steps), start=1):
        if not math.isnan(a):
            rows.append({"method": method, "position k": k, "α_k": a})
alpha = pd.DataFrame(rows, columns=["method", "position k", "α_k"])
fig = px.line(alpha, x="position k", y="α_k", color="method", markers=True, template=P.PLOT_TEMPLATE,
              height=380, range_y=[0, 1.05], title="acceptance rate by draft position")
fig.update_xaxes(dtick=1)
fig.show()

# %% [markdown]
# ## Where the time goes
#
# Per new token: draft time, verify time (the target forward over root + draft) and the rest
# (sampling, cache bookkeeping, tracing), summed over each method's runs.

# %%
lat = runs.groupby("method")[["draft_s", "verify_s", "other_s", "new_tokens"]].sum()
for part in ("draft", "verify", "other"):
    lat[f"{part} ms/token"] = 1000 * lat[f"{part}_s"] / lat["new_tokens"]
long = lat.reset_index().melt(id_vars="method", value_vars=[f"{p} ms/token" for p in ("draft", "verify", "other")],
                              var_name="part", value_name="ms per token")
long["part"] = long["part"].str.split().str[0]
fig = px.bar(long, x="method", y="ms per token", color="part", template=P.PLOT_TEMPLATE, height=380,
             color_discrete_map=P.LATENCY_COLORS, title="latency breakdown per generated token")
fig.show()

# %% [markdown]
# One run, step by step (the same figure as the app's Latency tab), rebuilt from the store:

# %%
newest = runs[runs["method"] != "autoregressive"].sort_values("created_at").iloc[-1]
trace = store.load_trace(newest["id"])
print(f"run {newest['id'][:8]}: {newest['method']}, {len(trace.steps)} steps")
P.latency_figure(trace).show()

# %% [markdown]
# ## Selecting runs
#
# Runs made in the app carry `source == "ui"` (the CLI `cli`, notebooks `notebook`, benchmarks
# `bench` and `bench-hf`, `workbench.run` called directly `api`). Filter in the query, or in pandas:

# %%
ui_runs = store.runs_dataframe(source="ui")  # == everything[everything["source"] == "ui"]
print(f"{len(ui_runs)} runs made in the app")
ui_runs[["id", "created_at", "method", "target", "draft", "prompt", "tokens_per_s"]].head(10)

# %%
everything.groupby("source").size().rename("runs").to_frame() if len(everything) else "no runs"

# %% [markdown]
# ### Runs of one benchmark
#
# A benchmark (`workbench bench ...`) logs every run under one benchmark id, each labelled with its
# arm, category, prompt and repeat (`param.bench.*`). With no benchmark in the store, a very small
# one runs here (one summarization prompt, one repeat; `workbench.run_benchmark`).

# %%
benches = store.list_benchmarks()
if BENCHMARK_ID is None and not benches:
    from workbench import run_benchmark
    from workbench.bench import BenchConfig

    cfg = BenchConfig(suite="builtin", methods=["speculative", "prompt_lookup"], target=MODEL, draft=DRAFT,
                      max_new_tokens=min(TOKENS, 32), repeats=1, limit=1, categories=["summarization"],
                      trace_overhead=False, bandwidth_mib=64)
    run_benchmark(cfg, store, progress=print)
    benches = store.list_benchmarks()
pd.DataFrame(benches)[["id", "created_at", "suite", "status", "n_runs", "n_finished"]].head(10)

# %%
bench_id = BENCHMARK_ID or benches[0]["id"]
bench_runs = store.runs_dataframe(benchmark_id=bench_id)
bench_runs[["id", "method", "param.bench.arm", "param.bench.category", "param.bench.prompt",
            "param.bench.repeat", "tokens_per_s", "mean_accepted_tokens"]]

# %% [markdown]
# The benchmark's own tables (`workbench.bench`): speedups per arm and category, and the full
# report with τ, α, γ, the cost ratio c and Leviathan's theoretical speedup (see `04_sweeps`).

# %%
from workbench.bench import benchmark_report, benchmark_table

benchmark_table(store, bench_id).style.format(precision=2, na_rep="—")

# %%
report = benchmark_report(store, bench_id).frame()
report[report["category"] == "all"][["arm", "tokens_per_s", "speedup", "tau", "alpha", "gamma", "c",
                                     "theoretical_speedup", "lossless_match"]].style.format(precision=3,
                                                                                            na_rep="—")
