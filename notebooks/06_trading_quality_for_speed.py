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
# # 06 · Trading quality for speed
#
# Every other notebook uses lossless methods: their output is the target's own. The methods and options
# of [docs/lossy.md](../docs/lossy.md) give some of that up for speed. Here we sweep one knob of each
# family and put each point on a speed–quality plane:
#
# * **relaxed acceptance** (Medusa-2's typical acceptance) on a drafting method: the floor
#   min(ε, δ·exp(−H)) a draft token's target probability must clear;
# * **a cascade** (BiLD): the small model's confidence below which it hands over to the target;
# * **early exit** (CALM, calibrated): the agreement with the full model the exit threshold is chosen for;
# * **KV-cache compression** (H2O): the share of the cache kept.
#
# Speed is tokens/s over plain decoding's on the same prompts in this process. Quality is the output's
# token agreement with plain greedy decoding and its ROUGE-L against that text
# (`workbench.quality.compare`). A lossless point sits at agreement 1.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")
DRAFT = os.environ.get("WORKBENCH_NOTEBOOK_DRAFT", f"{MODEL}:bf16")  # BiLD's small model
TOKENS = int(os.environ.get("WORKBENCH_NOTEBOOK_TOKENS", "48"))  # new tokens per run
TINY = MODEL.split(":")[0] == "tiny-random"
# typical acceptance on a trained head (the embedded model ships one); a draft model on the tiny random model
ACCEPT_METHOD = "speculative" if TINY else "hydra"
TYPICAL = [None, (0.3, 0.55), (0.09, 0.3), (0.03, 0.1)]  # (eps, delta); None: exact (lossless)
FALLBACKS = [1.0, 0.8, 0.6, 0.3]  # BiLD: 1 = the target alone
AGREEMENTS = [1.0, 0.95, 0.9, 0.8]  # early exit: calibrated for this agreement
EXIT_LAYERS = {"min_layer": 1, "every": 1} if TINY else {}  # the tiny model has two layers
BUDGETS = [1.0, 0.75, 0.5, 0.25]  # H2O: share of the KV cache kept

# %%
import statistics

import pandas as pd
import plotly.express as px

import workbench
from ui import presenters as P
from workbench import quality as Q
from workbench.api import run
from workbench.bench.suites import load_suite

suite = {q.key: q for q in load_suite("builtin")}
SHORT = [suite["10"].turns[0], suite["13"].turns[0]]  # a question and a word problem
LONG = [suite["16"].turns[0]]  # a retrieval-augmented answer over a long passage (KV compression)
print(workbench.__file__)

# %% [markdown]
# ## Plain decoding: the baseline of every point
#
# One plain greedy run per prompt gives the reference output and the reference speed.

# %%
def decode(method, prompt, **kw):
    return run(method, prompt, target=MODEL, max_new_tokens=TOKENS, source="notebook", **kw)


baseline = {p: decode("autoregressive", p) for p in SHORT + LONG}
for p, r in baseline.items():
    print(f"{r.summary.tokens_per_s:6.1f} tok/s  {p[:60]!r} -> {r.output_text[:60]!r}")

# %%
rows = []


def point(family, knob, prompts, method, **kw):
    """Decode `prompts` with `method` and record speed and quality against plain decoding."""
    speed, agree, rouge, lossy = [], [], [], set()
    for p in prompts:
        r = decode(method, p, **kw)
        ref = baseline[p]
        q = Q.compare(r.output_ids, ref.output_ids, output_text=r.output_text, baseline_text=ref.output_text)
        speed.append(r.summary.tokens_per_s / ref.summary.tokens_per_s)
        agree.append(q.agreement)
        rouge.append(q.rouge_l)
        lossy.update(r.trace.lossy)
    rows.append({"family": family, "knob": knob, "speedup": statistics.median(speed),
                 "agreement": statistics.mean(agree), "rouge_l": statistics.mean(rouge),
                 "lossless": not lossy, "lossy": "; ".join(sorted(lossy))})
    return rows[-1]


# %% [markdown]
# ## Relaxed acceptance: typical acceptance (Medusa-2)
#
# A draft token is kept when the target would have produced it, *or* when its target probability clears
# min(ε, δ·exp(−H)); the smaller the floor, the more of the draft survives each step.

# %%
draft_kw = {"draft": DRAFT} if ACCEPT_METHOD == "speculative" else {}
for setting in TYPICAL:
    acc = "exact" if setting is None else f"typical:eps={setting[0]},delta={setting[1]}"
    print(point("typical acceptance", acc, SHORT, ACCEPT_METHOD, acceptance=acc, **draft_kw))

# %% [markdown]
# ## A cascade: BiLD
#
# The small model decodes while its top probability stays above `fallback`; the target checks its tokens
# and rolls back those it finds too unlikely (−log p > 2 nats). `fallback=1` is the target alone.

# %%
for fb in FALLBACKS:
    print(point("BiLD cascade", f"fallback={fb}", SHORT, "bild", draft=DRAFT, params={"fallback": fb}))

# %% [markdown]
# ## Early exit: CALM, calibrated
#
# Before each run the exit threshold is chosen on a few calibration prompts so that exits agree with the
# full model on the asked share of positions (the run's note gives the threshold).

# %%
for a in AGREEMENTS:
    print(point("early exit", f"agreement={a}", SHORT, "early_exit", params={"agreement": a, **EXIT_LAYERS}))

# %% [markdown]
# ## KV-cache compression: H2O heavy hitters
#
# The cache keeps the attention sinks, a recent window and the positions with the most accumulated
# attention, about `budget` of them. Each run's note measures the bytes the cache held against the
# uncompressed cache.

# %%
for b in BUDGETS:
    print(point("KV compression (H2O)", f"budget={b}", LONG, "autoregressive", kv=f"h2o:budget={b}"))
r = decode("autoregressive", LONG[0], kv="h2o:budget=0.5")
print(next(n["text"] for n in r.trace.notes if n["kind"] == "kv_compression"))

# %% [markdown]
# ## The speed–quality plane
#
# One point per setting; lossless points lie on the agreement = 1 line. A family's curve shows what each
# step of its knob buys and costs on this machine and model.

# %%
df = pd.DataFrame(rows)
fig = px.line(df, x="agreement", y="speedup", color="family", markers=True, text="knob",
              hover_data=["rouge_l", "lossy"], template=P.PLOT_TEMPLATE,
              title=f"Speed vs agreement with plain decoding ({MODEL}, {TOKENS} tokens, greedy)")
fig.update_traces(textposition="top center")
fig.add_hline(y=1.0, line_dash="dot", annotation_text="plain decoding")
fig.show()
df
