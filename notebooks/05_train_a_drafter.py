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
# # 05 · Train a drafter: EAGLE and Medusa heads, vocabulary trimming, a distilled draft
#
# A **head** is a small module that drafts from the target's *own* final hidden states, reusing
# the target's token embedding and LM head (neither is stored with the head), so it costs a few
# small matmuls instead of a draft model's forward. **Medusa** puts K residual blocks on the last
# hidden state; block k guesses the token k+1 places ahead. **Hydra** is Medusa whose heads also
# read the tokens drafted before theirs. **EAGLE** is one decoder layer that predicts the target's
# *next hidden state* from (feature, token) and drafts on its own predictions, as a chain or a
# dynamic tree. The target verifies every draft as usual, so all three stay lossless. With
# `fuse=True` a head also reads a low and a middle layer of the target (EAGLE-3's *fused features*)
# and learns how much of them to add to the final hidden state (the EAGLE head below does).
#
# `workbench train` trains them by self-distillation, in four stages: **generate** (the target
# answers prompts), **features** (one teacher-forced forward per answer: hidden states and the
# target's argmax), **train**, **evaluate** (held-out top-1/top-5, then real decoding). Here we
# run it from Python with small settings: on `tiny-random` (what the test suite uses) the whole
# notebook takes under a minute on a 2-core CPU; on the embedded SmolLM2-135M expect several minutes.
# Everything goes to a temporary folder and a temporary training store, so nothing lands in your
# heads folder; the decoding runs are logged to the run store like every notebook's.

# %% tags=["parameters"]
import os

# The one switch: the embedded SmolLM2-135M by default; the test suite uses "tiny-random".
MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")
TOKENS = int(os.environ.get("WORKBENCH_NOTEBOOK_TOKENS", "48"))  # new tokens per decoding run
SAMPLES = int(os.environ.get("WORKBENCH_NOTEBOOK_TRAIN_SAMPLES", "24"))  # responses the target writes
STEPS = int(os.environ.get("WORKBENCH_NOTEBOOK_TRAIN_STEPS", "150"))  # optimiser steps per drafter
GEN_TOKENS = 48  # tokens per training response

# %%
import json
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import workbench
except ModuleNotFoundError:  # not installed (pip install -e .): use the checkout this notebook lives in
    sys.path.insert(0, str(Path.cwd().parent))
    import workbench

import pandas as pd
from IPython.display import HTML, Markdown, display

from store import RunStore
from ui import presenters as P
from workbench import SamplingConfig, load_model
from workbench.metrics import acceptance_by_position
from workbench.tokens import texts_for
from workbench.train import TrainConfig, read_prompts, train

WORK = Path(tempfile.mkdtemp(prefix="workbench-05-"))  # heads, drafts and checkpoints go here
TRAIN_DB = str(WORK / "trainings.sqlite")  # the training records (the app's Train tab reads your real store)
target = load_model(MODEL)
print(f"target {target.spec}: vocabulary {target.vocab_size:,}; writing to {WORK}")

# %% [markdown]
# ## Train an EAGLE head and a Medusa head
#
# `TrainConfig` holds what `workbench train` takes as flags. `progress` receives
# `(stage, done, total, message)` on every item with the ETA in the message; this one prints a line
# at every quarter of a stage. Each training generates its own data (the first `SAMPLES` prompts of
# the shipped prompt set, `workbench/suites/train_prompts.jsonl`), holds out 10% of the responses
# for evaluation, and records itself in the training store (`db=`). The Medusa head also trains on
# `SELF_PROMPTS` instructions the target wrote itself (`self_prompts`, `--self-prompts` on the command
# line; Magpie): given its chat template up to where a user's message starts, a chat model writes a
# plausible user message, which it then answers. More data with no prompt file to write.

# %%
def printer(name):
    last = {}

    def progress(stage, done, total, message):
        quarter = 4 * done // max(total, 1)
        if quarter > last.get(stage, 0):
            last[stage] = quarter
            print(f"{name:<7} {stage:<9} {done:>4}/{total:<4} {message}")

    return progress


def config(kind, **kw):
    # lr: 3e-3 rather than the default 1e-3, for a run this short
    return TrainConfig(kind=kind, target=MODEL, samples=SAMPLES, max_new_tokens=GEN_TOKENS, steps=STEPS, lr=3e-3,
                       out=str(WORK / kind), **kw)


SELF_PROMPTS = 8
results = {}
for kind in ("eagle", "medusa"):
    results[kind] = train(config(kind, fuse=kind == "eagle", self_prompts=SELF_PROMPTS if kind == "medusa" else 0),
                          progress=printer(kind), quiet=True, db=TRAIN_DB)
    print(f"{kind}: saved to {results[kind].out_dir}\n")

# %% [markdown]
# The instructions the target wrote for itself (kept with the training data, in
# `training/self_prompts.json`; the tiny random model writes noise):

# %%
own = json.loads((WORK / "medusa" / "training" / "self_prompts.json").read_text())
for text in own[:5]:
    print("-", " ".join(text.split())[:160])

# %% [markdown]
# Where the time went (`TrainResult.timings`, seconds): generating the responses and the
# teacher-forced features, the optimiser steps, and the serving evaluation.

# %%
pd.DataFrame({k: r.timings for k, r in results.items()}).T.style.format(precision=1)

# %% [markdown]
# ## What the store recorded
#
# Each training is a record in the store (`RunStore.get_training`): settings, data sizes, loss
# curves, held-out accuracy, timings. The app's **Train** tab draws it with these same presenters.
# EAGLE's loss is its feature regression (smooth-L1 to the next hidden state) plus 0.1 × the
# cross-entropy of the token it implies; Medusa's sums each head's cross-entropy with weights
# 0.8^k.

# %%
trainings = RunStore(TRAIN_DB)
display(P.trainings_frame(trainings.list_trainings()))
records = {k: trainings.get_training(r.training_id) for k, r in results.items()}
for kind, rec in records.items():
    display(Markdown(P.training_summary(rec)))
    P.loss_figure(rec).show()
    P.accuracy_figure(rec).show()

# %% [markdown]
# The accuracy bars: **top-1** is how often the drafter's best guess is the target's own next
# token on the held-out responses, **top-5** how often it is among its five best. EAGLE has one
# position (each drafted token comes from the same layer); Medusa one per head: head k guesses
# k+1 tokens ahead from the same hidden state, so it falls off with k. `serving.alpha_by_position`
# is what decoding saw on a few held-out prompts (below). The numbers behind the figures:

# %%
display(Markdown(P.training_details(records["eagle"])))

# %% [markdown]
# ## Decode with the trained heads
#
# The methods `eagle` and `medusa` take the head as a parameter: a directory, or a name from
# `workbench heads`. Greedy decoding, so each must reproduce plain decoding token for token; τ
# says how many tokens one target forward committed. Two prompts: one the target answered for the
# training data (unless its response landed among the 10% held out), one it never saw (the last of
# the shipped set).

# %%
prompts = read_prompts(None)  # the shipped training prompts
PROMPTS = {"training prompt": prompts[1], "new prompt": prompts[-1]}
GREEDY = SamplingConfig(temperature=0.0)
METHODS = {
    "autoregressive": {},
    "eagle": {"head": results["eagle"].out_dir},  # the dynamic tree (mode="tree")
    "eagle chain": {"head": results["eagle"].out_dir, "mode": "chain"},
    "medusa": {"head": results["medusa"].out_dir},  # the static tree "medusa16"
}

runs, rows = {}, []
for which, prompt in PROMPTS.items():
    for label, params in METHODS.items():
        r = workbench.run(label.split()[0], prompt, target=MODEL, params=params, sampling=GREEDY,
                          max_new_tokens=TOKENS, source="notebook")
        runs[which, label] = r
        s, base = r.summary, runs[which, "autoregressive"].summary
        alpha = acceptance_by_position(r.trace.steps)
        rows.append({"prompt": which, "method": label, "τ": s.mean_accepted_tokens, "α": s.acceptance_rate,
                     "α per position": " · ".join(f"{a:.2f}" for a in alpha[:5]),
                     "tok/s": s.tokens_per_s, "speedup": P.speedup(s.tokens_per_s, base.tokens_per_s),
                     "same as plain": r.output_ids == runs[which, "autoregressive"].output_ids})
pd.DataFrame(rows).style.format(precision=2, na_rep="—")

# %% [markdown]
# One run token by token (green: accepted draft tokens; blue: the bonus token after a fully
# accepted draft; orange: the target's correction), and its acceptance by draft position:

# %%
r = runs["training prompt", "eagle"]
display(HTML(P.legend_html()))
display(HTML(P.token_html(r.trace, texts_for(r.target, r.output_ids))))
P.acceptance_position_figure(r.trace).show()

# %% [markdown]
# ### Why serving acceptance is not the held-out accuracy
#
# * **Teacher forcing vs drafting on its own.** Held-out top-1 scores each guess from the target's
#   true hidden state. In decoding, EAGLE's second and later tokens come from features it
#   *predicted* itself, so errors compound with depth; a Medusa head k still reads the true state
#   but guesses k+1 tokens ahead.
# * **A tree gives several chances.** The `eagle` tree and `medusa16` verify several candidates
#   per position, so a position is accepted when *any* of them is the target's token: closer to
#   top-k accuracy than top-1 (compare `eagle` with `eagle chain`).
# * **α is conditional.** α at position k counts only steps that accepted everything before k.
# * **The text itself.** Held-out accuracy is measured on responses the head never saw, like the
#   new prompt here. A random tiny model's text is close to noise, so on new text a head learns
#   next to nothing (top-1 of a few percent, τ near 1); on a training prompt it recalls the
#   response it was trained on and its drafts get accepted (τ above 1). SmolLM2's text is far
#   more predictable, so a head trained on enough of it drafts on new prompts too.
# * **Few prompts, few tokens.** Both numbers here come from a handful of responses; treat them as
#   a rough look, and `workbench bench` for numbers to quote.

# %% [markdown]
# ## Vocabulary trimming
#
# With `vocab_trim=k` the drafter may only propose the k tokens the target produced most often in
# its training responses (VocabTrim / FR-Spec): its LM head shrinks to those rows, which is most of
# a head's cost on a large vocabulary. It stays lossless (a token outside the set is never
# proposed; the target still verifies every token); what it costs is the acceptance of the rare
# tokens outside the set, which it cannot propose.

# %%
TRIM = max(16, min(8192, target.vocab_size // 4))
results["eagle trimmed"] = train(config("eagle", vocab_trim=TRIM, evaluate_prompts=0), progress=printer("trim"),
                                 quiet=True, db=TRAIN_DB)
trimmed = workbench.run("eagle", PROMPTS["training prompt"], target=MODEL,
                       params={"head": results["eagle trimmed"].out_dir}, sampling=GREEDY, max_new_tokens=TOKENS,
                       source="notebook")
plain = runs["training prompt", "autoregressive"]
rows = []
for name, r in (("eagle", runs["training prompt", "eagle"]), ("eagle trimmed", trimmed)):
    res = results[name]
    rows.append({"head": name, "vocabulary": res.card["vocab_trim"] or target.vocab_size,
                 "held-out top-1": res.accuracy["top1"][0], "held-out top-5": res.accuracy["top5"][0],
                 "τ (training prompt)": r.summary.mean_accepted_tokens,
                 "same as plain": r.output_ids == plain.output_ids})
pd.DataFrame(rows).style.format(precision=3)

# %% [markdown]
# ## A distilled draft model
#
# `kind="draft"` trains something else: a few-layer copy of the target (its embedding, LM head and
# evenly spaced layers; here one layer) by knowledge distillation to the target's next-token
# distribution. The result is an ordinary model directory, so it serves as `draft=` for
# `speculative` (and any method that takes a draft model) like any other model spec.

# %%
results["draft"] = train(config("draft", layers=1), progress=printer("draft"), quiet=True, db=TRAIN_DB)
DRAFT_DIR = results["draft"].out_dir
print(f"held-out top-1 {results['draft'].accuracy['top1'][0]:.3f}, "
      f"{results['draft'].card['params']:,} parameters ({results['draft'].card['layers']} layer)")
rows = []
for which, prompt in PROMPTS.items():
    r = workbench.run("speculative", prompt, target=MODEL, draft=DRAFT_DIR, params={"gamma": 4}, sampling=GREEDY,
                      max_new_tokens=TOKENS, source="notebook")
    base = runs[which, "autoregressive"]
    s = r.summary
    rows.append({"prompt": which, "τ": s.mean_accepted_tokens, "α": s.acceptance_rate, "tok/s": s.tokens_per_s,
                 "speedup": P.speedup(s.tokens_per_s, base.summary.tokens_per_s),
                 "same as plain": r.output_ids == base.output_ids})
pd.DataFrame(rows).style.format(precision=2, na_rep="—")

# %% [markdown]
# Every training of this notebook, as the app's Train tab lists them:

# %%
P.trainings_frame(trainings.list_trainings())

# %% [markdown]
# The heads, the draft model, their checkpoints and the training store were all written under
# `WORK`; this deletes them (the runs stay in the run store).

# %%
shutil.rmtree(WORK, ignore_errors=True)

# %% [markdown]
# ## For the real model, from a terminal
#
# ```bash
# workbench train --kind eagle --target smollm2-135m      # also --kind medusa, hydra, draft
# workbench heads                                          # the trained heads: yours and the shipped ones
# workbench run --method eagle --target smollm2-135m --prompt "Explain KV caching in two sentences."
# ```
#
# Without `--out`, a head goes to your heads folder (`$WORKBENCH_HEADS`, else `<cache>/heads`) as
# `smollm2-135m-eagle`, the name `eagle` looks for by default, so the last command uses it (heads
# for SmolLM2-135M also ship with the package; yours wins). A distilled draft goes to
# `<cache>/drafts/` and is used with `--draft DIR`. Settings: `--samples` (responses to generate,
# default 300), `--steps` (default 600), `--vocab-trim K`, `--prompts FILE.jsonl` (your own
# prompts), `--heads`/`--layers`; a training interrupted with Ctrl-C continues with `--resume`
# (same `--out`). Each training is recorded in the run store, and the app's **Train** tab shows
# it while it runs. A head is checked against its target's weights and refused for any other model.
