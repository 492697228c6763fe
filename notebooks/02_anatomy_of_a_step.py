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
# # 02 · Anatomy of a step
#
# One speculative step, done by hand with the models themselves, then judged by the library's own
# verification code (`workbench.verify`), which every method shares. Then a draft *tree* from a real
# `tree_dynamic` run, with the attention mask that lets the target verify all its branches in one
# forward.
#
# Notation (Leviathan et al. 2023; Chen et al. 2023): **p** is the target's distribution at a
# position, **q** the distribution the drafter drew its token x from, both after the same
# temperature / top-k / top-p warping (`workbench.sampling.logits_to_probs`).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")
DRAFT = os.environ.get("WORKBENCH_NOTEBOOK_DRAFT", f"{MODEL}:bf16")
TOKENS = int(os.environ.get("WORKBENCH_NOTEBOOK_TOKENS", "32"))  # length of the tree_dynamic run
GAMMA = 4  # draft length γ of the hand-made step
TEMPERATURE = 0.7  # the target's temperature
# The draft samples hotter than the target so that p and q visibly differ: a bf16 copy at the same
# temperature is almost the target itself. Any q keeps the step lossless, as long as it is the
# distribution the draft really sampled from.
DRAFT_TEMPERATURE = 1.3
SEED = 0

# %%
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
import torch
from IPython.display import HTML, display

from ui import presenters as P
from workbench import SamplingConfig, load_model
from workbench.sampling import logits_to_probs, make_generator, sample
from workbench.tokens import single_texts, texts_for
from workbench.draft import Draft
from workbench.verify import residual, verify_stochastic

# %%
target, draft = load_model(MODEL), load_model(DRAFT)
PROMPT = "Write one sentence about the sea."
prompt_ids = target.encode_prompt(PROMPT)  # with the chat template when the model has one
p_cfg = SamplingConfig(temperature=TEMPERATURE, seed=SEED)
q_cfg = SamplingConfig(temperature=DRAFT_TEMPERATURE, seed=SEED)
gen = make_generator(SEED)


def tok(t: int) -> str:
    return P.display_token(single_texts(target.spec, [t])[0])


print(f"target {target.spec}, draft {draft.spec}, prompt of {len(prompt_ids)} tokens")

# %% [markdown]
# ## 1. Draft: γ tokens from the draft model, recording q
#
# The draft model runs γ times, each time on the prompt plus what it has drafted so far
# (no KV cache here, for clarity), and samples x_i ~ q_i.

# %%
ids = torch.tensor([prompt_ids], device=draft.device)  # (1, T)
drafted, q_rows = [], []
with torch.no_grad():
    for _ in range(GAMMA):
        logits = draft.model(ids).logits[0, -1]  # (V,) next-token logits of the draft
        q = logits_to_probs(logits, q_cfg)  # (V,) float32
        x = sample(q, gen)
        drafted.append(x)
        q_rows.append(q)
        ids = torch.cat([ids, torch.tensor([[x]], device=ids.device)], dim=1)  # (1, T + i + 1)
q_dist = torch.stack(q_rows)  # (γ, V): row i is what x_i was drawn from
print("drafted:", [tok(x) for x in drafted])

# %% [markdown]
# ## 2. Verify: one target forward over prompt + draft gives p at every drafted position
#
# The target sees all γ drafted tokens at once. Its output at the last prompt token is p for
# x_1, at x_1 it is p for x_2, …, and at x_γ it is the distribution of the bonus token:
# γ + 1 distributions from one forward.

# %%
with torch.no_grad():
    logits = target.model(ids.to(target.device)).logits[0, -GAMMA - 1:]  # (γ+1, V)
p_dist = logits_to_probs(logits, p_cfg)  # (γ+1, V)

# %% [markdown]
# ## 3. The accept/reject rule
#
# Draft token x_i is accepted with probability
#
# $$ \min\Big(1, \frac{p_i(x_i)}{q_i(x_i)}\Big) $$
#
# so a token the draft *under*-estimates (q ≤ p) is always kept, and one it *over*-estimates is kept
# with probability p/q. The step walks the draft left to right and stops at the first rejection.
# After a rejection at position i the target samples its correction from the **residual**
#
# $$ p'_i = \mathrm{norm}\big(\max(p_i - q_i, 0)\big) $$
#
# which puts back exactly the probability mass the draft took too little of. If all γ are
# accepted, the bonus token is sampled from p_{γ+1}. Either way the step adds
# (accepted + 1) tokens, distributed exactly as if the target had sampled them one by one.
#
# Under greedy decoding (`temperature=0`) `logits_to_probs` returns one-hot distributions and the
# rule becomes exact prefix matching with the target's argmax.

# %%
step = Draft.chain(drafted, q=[float(q_dist[i, x]) for i, x in enumerate(drafted)], q_dist=q_dist)
verdict = verify_stochastic(p_dist, step, make_generator(SEED))
table = pd.DataFrame({
    "position": range(1, GAMMA + 1),
    "token": [tok(x) for x in drafted],
    "q(x)": [float(q_dist[i, x]) for i, x in enumerate(drafted)],
    "p(x)": [float(p_dist[i, x]) for i, x in enumerate(drafted)],
})
table["min(1, p/q)"] = (table["p(x)"] / table["q(x)"]).clip(upper=1.0)
n_acc = len(verdict.accepted)
table["outcome"] = ["accepted" if i < n_acc else "rejected" if i == n_acc else "not reached" for i in range(GAMMA)]
print(f"accepted {n_acc} of {GAMMA}; the target then adds {tok(verdict.bonus_token)!r} "
      f"({'bonus' if n_acc == GAMMA else 'correction'}): this step commits {n_acc + 1} token(s)")
table.style.format(precision=3)

# %% [markdown]
# p against q over the most likely tokens at one position (the first rejected one, else the
# first): above the diagonal the draft under-estimates and its tokens are always accepted, below it
# a token is accepted with probability p/q.

# %%
k = n_acc if n_acc < GAMMA else 0  # the position to look at (0-based)
p_k, q_k, x_k = p_dist[k], q_dist[k], drafted[k]
top = torch.topk(torch.maximum(p_k, q_k), 12).indices.tolist()
if x_k not in top:
    top.append(x_k)
pq = pd.DataFrame({"token": [tok(t) for t in top], "p": [float(p_k[t]) for t in top],
                   "q": [float(q_k[t]) for t in top],
                   "token kind": ["drafted x" if t == x_k else "other" for t in top]})
pq["accept prob"] = (pq["p"] / pq["q"]).clip(upper=1.0)
top_p = float(max(pq["p"].max(), pq["q"].max())) * 1.08
fig = px.scatter(pq, x="q", y="p", text="token", color="accept prob", symbol="token kind",
                 color_continuous_scale="RdYlGn", range_color=[0, 1], template=P.PLOT_TEMPLATE, height=460,
                 title=f"position {k + 1}: target p vs draft q over the top tokens (drafted: {tok(x_k)!r})",
                 hover_data={"p": ":.3f", "q": ":.3f", "accept prob": ":.2f"})
fig.add_trace(go.Scatter(x=[0, top_p], y=[0, top_p], mode="lines", name="p = q",
                         line=dict(dash="dot", color="#999")))
fig.update_traces(textposition="top center", selector=dict(mode="markers+text"))
fig.update_layout(xaxis_range=[0, top_p], yaxis_range=[0, top_p])
fig.show()

# %% [markdown]
# The residual `workbench.verify.residual(p, q, x)` at that position: the distribution the
# correction is drawn from when x is rejected. It is zero wherever q ≥ p.

# %%
r_k = residual(p_k, q_k, x_k)  # (V,) norm(max(p - q, 0))
pq["residual"] = [float(r_k[t]) for t in top]
long = pq.melt(id_vars="token", value_vars=["q", "p", "residual"], var_name="distribution", value_name="prob")
fig = px.bar(long, x="token", y="prob", color="distribution", barmode="group", template=P.PLOT_TEMPLATE,
             height=380, color_discrete_map={"q": "#8fb9e8", "p": "#e8a23a", "residual": "#2e9d4a"},
             title=f"position {k + 1}: q, p and the residual norm(max(p − q, 0))")
fig.show()

# %% [markdown]
# **Lossless, checked by sampling.** Repeat the one-token version of this step many times:
# draw x ~ q, accept with min(1, p/q), otherwise sample the residual. The committed token's
# frequencies match p, not q.

# %%
N = 3000
g = make_generator(SEED + 1)
counts = torch.zeros_like(p_k)
for _ in range(N):
    x = sample(q_k, g)
    v = verify_stochastic(p_dist[k:k + 2], Draft.chain([x], q_dist=q_k[None]), g)  # rows: root, x
    counts[x if v.accepted else v.bonus_token] += 1
emp = pd.DataFrame({"token": [tok(t) for t in top], "p (target)": [float(p_k[t]) for t in top],
                    "q (draft)": [float(q_k[t]) for t in top],
                    f"speculative, {N} draws": [float(counts[t]) / N for t in top]})
fig = px.bar(emp.melt(id_vars="token", var_name="distribution", value_name="prob"), x="token", y="prob",
             color="distribution", barmode="group", template=P.PLOT_TEMPLATE, height=380,
             title="the first committed token follows p")
fig.show()
print(f"total variation distance to p: {0.5 * float((counts / N - p_k).abs().sum()):.3f}   "
      f"(q to p: {0.5 * float((q_k - p_k).abs().sum()):.3f})")

# %% [markdown]
# ## 4. A draft tree
#
# Tree methods draft several continuations at once. `tree_dynamic` (EAGLE-2 style) expands the
# most confident nodes level by level with the draft model's top-k and keeps the best
# `total_tokens` nodes. The target still verifies everything in **one** forward: the nodes are laid
# out as one sequence after the root (the last committed token), and a tree attention mask lets
# each node see the cached prefix, the root and its own ancestors only. Verification follows the
# longest path the target agrees with.
#
# By default (`sizing="cost"`) the method then verifies only the share of the tree that pays for
# its verification on this machine (the target's measured cost profile against the drafter's path
# probabilities, corrected by what has been accepted so far); on a small CPU that is often one or
# two nodes. Here `sizing="fixed"` keeps all `total_tokens`, to show the whole tree.
#
# Here a real run (greedy, logged to the store like any other), and one of its steps from the Trace.

# %%
run = workbench.run("tree_dynamic", PROMPT, target=MODEL, draft=DRAFT, params={"depth": 4, "top_k": 3,
                    "total_tokens": 12, "sizing": "fixed"}, sampling=SamplingConfig(temperature=0.0), max_new_tokens=TOKENS,
                    source="notebook")
trace = run.trace
s = run.summary
print(f"run {run.run_id[:8]}: {s.new_tokens} tokens in {s.target_forward_passes} target forwards, "
      f"τ = {s.mean_accepted_tokens:.2f}")
display(HTML(P.legend_html() + P.token_html(trace, texts_for(run.target, run.output_ids))))

# %%
drafted_steps = [st for st in trace.steps if st.tokens]
st = max(drafted_steps, key=lambda st: (st.n_accepted, st.n_draft))  # the step that accepted the most
before = sum(len(x.committed) for x in trace.steps[:st.index])
root_id = (list(trace.prompt_ids) + trace.output_ids)[len(trace.prompt_ids) + before - 1]
node_texts = single_texts(run.target, st.tokens)
root_text, bonus_text = single_texts(run.target, [root_id, st.bonus_token])
P.tree_figure(st, node_texts, root_text=root_text, bonus_text=bonus_text).show()
pd.DataFrame({"node": range(st.n_draft), "token": [P.display_token(t) for t in node_texts],
              "parent": st.parents, "depth": st.node_depths(), "q": st.q, "p": st.p,
              "accepted": [i in st.accepted for i in range(st.n_draft)]}).style.format(precision=3)

# %% [markdown]
# The tree attention mask (`Draft(tokens, parents).ancestor_matrix()`, the buffer the engine
# passes to the model): row r may attend to column c. Row 0 is the root; every node sees the root
# and its ancestors, never its siblings or cousins. All rows also see the whole cached prefix
# (not drawn). Each node's position id is prefix length + depth (`Draft.position_ids`), so
# siblings share a position.

# %%
tree = Draft(list(st.tokens), list(st.parents))
mask = tree.ancestor_matrix()  # (n+1, n+1) bool
P.mask_figure(st, node_texts, mask.tolist()).show()
past_len = len(trace.prompt_ids) + before - 1  # tokens already in the target's KV cache
print("position ids:", tree.position_ids(past_len, torch.device("cpu")).tolist()[0])
