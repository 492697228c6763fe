"""The advisor: which decoding method to use for a target on this machine, and why (`workbench advise`).

Given a target, the drafters at hand, the user's prompts and a time budget, it reads this machine's cost
profile, probes every applicable method on part of the prompts, predicts each configuration's speedup
with an interval, verifies the top few against plain decoding on the other prompts, and explains the
answer in numbers; the advice is stored with its two benchmarks and the command that reproduces it.
docs/advisor.md says how.

Modules, one concept each: configs (what applies), prompts (the prompts and their split), budget (time
estimates and plans), probe (the advice's benchmarks), predict (the prediction and its interval),
explain (the numbers behind the answer), whatif (other machines' profiles), request (what is asked),
core (`advise`, the phases in order), report (a stored advice as rows and text).

Importing this package is cheap: each name below loads its module on first use, so `workbench advise
--list` (report only) never imports torch.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {"AdviceError": "configs", "Config": "configs", "candidate_methods": "configs",
         "draft_suggestions": "configs", "advise": "core", "AdviceRequest": "request",
         "advice_text": "report", "ranking_rows": "report", "verification_rows": "report", "list_rows": "report"}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = sorted(_LAZY)
