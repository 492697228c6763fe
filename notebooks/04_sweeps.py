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
# # 04 · Sweeps: draft length γ and temperature, measured against theory
#
# Leviathan et al. (2023) predict the speedup of speculative decoding from three numbers:
#
# * **α**, the acceptance rate of a draft token (assumed the same at every position),
# * **γ**, the draft length,
# * **c**, the cost ratio: time of one draft forward / time of one target forward.
#
# A step drafts γ tokens (cost γc) and verifies them in one target forward (cost 1, if a
# (γ+1)-token forward costs what a 1-token forward does). It commits on average
#
# $$ E[\text{tokens per step}] = \frac{1 - \alpha^{\gamma+1}}{1 - \alpha} $$
#
# tokens (this is τ), so the expected speedup over plain decoding is
#
# $$ S(\alpha, \gamma, c) = \frac{1 - \alpha^{\gamma+1}}{(1 - \alpha)(\gamma c + 1)} $$
#
# (`workbench.metrics.theoretical_speedup`). Longer drafts pay off only while α is high and c small:
# γ trades more tokens per step against more draft work per step. Here we sweep γ ∈ {1, 2, 4, 8} at
# temperature 0 (greedy) and 0.7, measure α and c from the traces, and compare S with the
# measured speedup.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")
DRAFT = os.environ.get("WORKBENCH_NOTEBOOK_DRAFT", f"{MODEL}:bf16")
TOKENS = int(os.environ.get("WORKBENCH_NOTEBOOK_TOKENS", "32"))  # new tokens per run
REPEATS = int(os.environ.get("WORKBENCH_NOTEBOOK_REPEATS", "1"))  # measured speedup = median over repeats
GAMMAS = [1, 2, 4, 8]
TEMPERATURES = [0.0, 0.7]
SEED = 0
ADVICE_BUDGET = os.environ.get("WORKBENCH_NOTEBOOK_ADVICE_BUDGET", "2m")  # the advisor's section, below

# %%
import statistics
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

from ui import presenters as P
from workbench import SamplingConfig, Trace
from workbench import metrics as M

PROMPTS = [
    "Explain in two sentences what a KV cache is.",
    "List five animals that live in the ocean, one per line.",
]

# %% [markdown]
# ## Run the sweep
#
# For each temperature, repeat and prompt: plain decoding (the baseline, in this process, on the same
# prompt), then speculative decoding at each γ. A short warm-up per method first. Every run is
# logged to the store (`source="notebook"`); `03_comparing_runs` can plot them again. Timings drift
# on a busy machine: raise `REPEATS` (`WORKBENCH_NOTEBOOK_REPEATS`) to see the spread.

# %%
def run(method, prompt, temperature, **params):
    return workbench.run(method, prompt, target=MODEL, draft=DRAFT if method != "autoregressive" else None,
                         params=params or None, sampling=SamplingConfig(temperature=temperature, seed=SEED),
                         max_new_tokens=TOKENS, source="notebook")


for method in ("autoregressive", "speculative"):  # warm-up
    workbench.run(method, PROMPTS[0], target=MODEL, draft=DRAFT if method == "speculative" else None,
                  max_new_tokens=4, source="notebook")

runs = []  # one dict per run: temperature, gamma (0 = plain), repeat, prompt, RunResult
for temperature in TEMPERATURES:
    for rep in range(REPEATS):
        for i, prompt in enumerate(PROMPTS):  # the baseline right before its γ runs: less drift between them
            runs.append(dict(temperature=temperature, gamma=0, repeat=rep, prompt=i,
                             result=run("autoregressive", prompt, temperature)))
            for gamma in GAMMAS:
                runs.append(dict(temperature=temperature, gamma=gamma, repeat=rep, prompt=i,
                                 result=run("speculative", prompt, temperature, gamma=gamma)))
        print(f"T={temperature} repeat {rep + 1}/{REPEATS}: done")
print(f"{len(runs)} runs")

# %% [markdown]
# ## α, γ and c from the traces
#
# For each (temperature, γ), pool the steps of its runs into one `Trace` and read its summary:
#
# * α = accepted / attempted draft positions,
# * γ = mean draft length (the nominal γ, except near the end where fewer tokens are left),
# * c = (draft time per drafted token) / (target time per plain-decoding forward), the latter being
#   the mean verify time of the plain runs' decode steps at the same temperature,
# * verify × = the speculative step's verify time / a plain forward: what verifying γ+1 tokens
#   really costs (the formula assumes 1).
#
# Measured speedup = (tokens / time of the speculative runs) ÷ (tokens / time of the plain runs), per
# repeat, median over repeats.

# %%
def pooled(rs) -> Trace:
    return Trace(method="pooled", params={}, prompt_ids=[], steps=[s for r in rs for s in r["result"].trace.steps])


def tokens_per_s(rs) -> float:
    return sum(r["result"].summary.new_tokens for r in rs) / sum(r["result"].summary.wall_s for r in rs)


rows = []
for temperature in TEMPERATURES:
    plain = [r for r in runs if r["temperature"] == temperature and r["gamma"] == 0]
    t_forward = M.plain_forward_s(pooled(plain).steps)  # one plain target forward
    for gamma in GAMMAS:
        spec = [r for r in runs if r["temperature"] == temperature and r["gamma"] == gamma]
        tr = pooled(spec)
        s = tr.summary()
        c = M.cost_ratio(tr.steps, t_forward)
        speedups = [tokens_per_s([r for r in spec if r["repeat"] == k])
                    / tokens_per_s([r for r in plain if r["repeat"] == k]) for k in range(REPEATS)]
        rows.append({
            "temperature": temperature, "γ": gamma, "α": s.acceptance_rate, "γ mean": s.mean_draft_length,
            "τ": s.mean_accepted_tokens, "c": c,
            "verify ×": M.verify_cost_ratio(tr.steps, t_forward),
            "theoretical": M.theoretical_speedup(s.acceptance_rate, s.mean_draft_length, c),
            "measured": statistics.median(speedups),
            "measured min": min(speedups), "measured max": max(speedups),
        })
sweep = pd.DataFrame(rows)
sweep["efficiency"] = sweep["measured"] / sweep["theoretical"]
sweep.style.format(precision=3)

# %% [markdown]
# ## Measured against theoretical speedup
#
# Points on the diagonal are explained by α, γ and c alone. Points below it lose time the
# formula does not count: mostly verify × > 1 (verifying γ+1 tokens costs more than one token on a
# CPU) and per-step bookkeeping.

# %%
sweep["label"] = "γ=" + sweep["γ"].astype(str)
sweep["T"] = "T=" + sweep["temperature"].astype(str)
fig = px.scatter(sweep, x="theoretical", y="measured", color="T", text="label", template=P.PLOT_TEMPLATE,
                 height=440, error_y=sweep["measured max"] - sweep["measured"],
                 error_y_minus=sweep["measured"] - sweep["measured min"],
                 hover_data={"α": ":.3f", "c": ":.3f", "τ": ":.2f", "verify ×": ":.2f"},
                 title=f"measured vs theoretical speedup ({MODEL} ← {DRAFT})")
hi = float(max(sweep["theoretical"].max(), sweep["measured"].max(), 1.0)) * 1.1
fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", name="measured = theoretical",
                         line=dict(dash="dot", color="#999")))
fig.update_traces(textposition="top center", selector=dict(mode="markers+text"))
fig.update_layout(xaxis_range=[0, hi], yaxis_range=[0, hi])
fig.show()

# %% [markdown]
# The same against γ, with the formula's curve over γ for the measured α and c (drawn for the
# α and c of the γ = 4 runs):

# %%
fig = go.Figure()
palette = px.colors.qualitative.Plotly
for j, (temperature, grp) in enumerate(sweep.groupby("temperature")):
    color = palette[j % len(palette)]
    ref = grp[grp["γ"] == 4].iloc[0] if (grp["γ"] == 4).any() else grp.iloc[0]
    gs = [g / 4 for g in range(0, 4 * max(GAMMAS) + 1)]
    fig.add_trace(go.Scatter(x=gs, y=[M.theoretical_speedup(ref["α"], g, ref["c"]) for g in gs], mode="lines",
                             name=f"S(α={ref['α']:.2f}, γ, c={ref['c']:.2f}), T={temperature}",
                             line=dict(color=color, dash="dot")))
    fig.add_trace(go.Scatter(x=grp["γ"], y=grp["theoretical"], mode="markers", name=f"theoretical, T={temperature}",
                             marker=dict(color=color, symbol="circle-open", size=11)))
    fig.add_trace(go.Scatter(x=grp["γ"], y=grp["measured"], mode="lines+markers", name=f"measured, T={temperature}",
                             line=dict(color=color)))
fig.add_hline(y=1.0, line_dash="dash", line_color="#ccc")
fig.update_layout(template=P.PLOT_TEMPLATE, height=440, title="speedup vs draft length γ",
                  xaxis=dict(title="γ", type="log", tickvals=GAMMAS), yaxis_title="speedup vs plain decoding",
                  legend=dict(font=dict(size=10)))
fig.show()

# %% [markdown]
# ## What limits the speedup
#
# τ grows with γ as long as drafts keep being accepted. α belongs to the pair of models and the
# sampling settings: under greedy decoding a draft token is accepted when the two argmaxes agree,
# under sampling with probability min(1, p/q), which is close to 1 wherever q ≈ p. The default
# draft is a bf16 copy of the target, so α is close to 1 at both temperatures. c belongs to the
# hardware and the two models: a draft of the same size costs about as much as the target
# (c ≈ 1, and more on a CPU without native bf16 arithmetic), which keeps S near or below 1 whatever
# α is. A draft ten times cheaper (c ≈ 0.1) at α = 0.8 would give S ≈ 2.4 at γ = 4.

# %%
fig = px.line(sweep.melt(id_vars=["γ", "T"], value_vars=["τ", "α", "c", "verify ×"]), x="γ", y="value",
              color="T", facet_col="variable", markers=True, template=P.PLOT_TEMPLATE, height=320,
              title="what the sweep measured")
fig.update_yaxes(matches=None, showticklabels=True)
fig.update_xaxes(type="log", tickvals=GAMMAS)
fig.show()
print(f"S(α=0.8, γ=4, c=0.1) = {M.theoretical_speedup(0.8, 4, 0.1):.2f}")

# %% [markdown]
# ## Let the advisor choose
#
# The sweep measured one method at a few settings by hand, and the formula explained part of it. The
# advisor (`workbench advise`, [docs/advisor.md](../docs/advisor.md)) does this for every method that
# applies, within a time budget: it probes each one on part of the prompts, predicts its speedup from the
# measured acceptance per draft position, draft cost and verification sizes together with this machine's
# cost of a forward over n tokens (no γc + 1 assumption: verifying n tokens costs what the profile says),
# verifies the top few against plain decoding on the *other* prompts, and explains what holds each method
# back. Here: the draft above against two methods without a draft model, on the built-in suite's
# translation questions (one probed, two verified). The advice is stored; `workbench advise --list` and the
# app's Advisor tab show it again.

# %%
from store import RunStore
from ui.presenters import advisor as AP
from workbench.advisor import AdviceRequest, advice_text, advise

advice = advise(AdviceRequest(target=MODEL, drafts=[DRAFT], methods=["speculative", "prompt_lookup", "sam"],
                              category="translation", budget_s=ADVICE_BUDGET, max_new_tokens=max(TOKENS, 16)),
                RunStore(), progress=print)
print(advice_text(advice))

# %% [markdown]
# Each configuration at its mean draft depth against the ceiling: what a perfect drafter (free, always
# right) drafting k tokens would give on this machine. Predicted (with the 90% interval) and, for the
# verified ones, measured:

# %%
AP.ceiling_figure(advice).show()
AP.advice_verification_frame(advice)
