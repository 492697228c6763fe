"""Presenters: pure functions from a Trace (and plain token strings) to figures, HTML and tables.

Every view in the app is drawn here, so a notebook can draw the same pictures
from a Trace without Gradio: ``token_html(trace, texts)`` for the coloured
output, ``tree_figure(step, ...)`` for one step's draft tree,
``latency_figure(trace)`` and friends for timings, ``token_diff_html`` to
compare two outputs, ``cost_figure(rows)`` for the measured cost of a forward
over n tokens per model and backend, ``loss_figure(training)`` and
``accuracy_figure(training)`` for a stored training of drafter heads (a plain
dict). Nothing here imports gradio, torch or the store; a tokenizer never comes
in, only the strings it produced (one per token).

Token origins (the colours of the output view):
- ``draft``: a draft token the target accepted;
- ``bonus``: the target's own token after the whole draft path was accepted;
- ``correction``: the target's own token replacing a rejected draft token;
- ``plain``: the target's own token in a step with no draft (prefill, plain decoding).

The package is one module per view (base, tokens, tree, latency, history, costs,
train, speedup: how far a speedup can be trusted, choices: the Playground's pickers, notes: what a run
says about itself, quality: the lossless/lossy badge, the quality card and the speed-quality Pareto plot);
every public name is re-exported here, so callers write ``from ui import presenters as P``.
"""
from .base import *  # noqa: F401,F403
from .choices import *  # noqa: F401,F403
from .costs import *  # noqa: F401,F403
from .history import *  # noqa: F401,F403
from .latency import *  # noqa: F401,F403
from .notes import *  # noqa: F401,F403
from .quality import *  # noqa: F401,F403
from .speedup import *  # noqa: F401,F403
from .tokens import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
from .tree import *  # noqa: F401,F403
