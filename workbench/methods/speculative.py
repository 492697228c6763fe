"""Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft model proposes γ tokens autoregressively; the target verifies them in
one forward pass with the shared rejection rule (workbench.verify). Under
greedy decoding the output is token-identical to plain greedy; under sampling
it is distributed exactly as the target's.

schedule="adaptive" follows transformers' heuristic: γ += 2 after a fully
accepted draft, γ -= 1 (to at least 1) otherwise.
"""
from __future__ import annotations

import torch

from ..tree import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, register
from .draft_model import DraftModelRunner


@register
class Speculative(Drafter):
    name = "speculative"
    label = "Speculative decoding (draft model)"
    description = ("A smaller (or lower-precision) draft model proposes γ tokens; the target verifies them "
                   "in one forward pass. Lossless.")
    needs_draft_model = True
    params = (
        Param("gamma", "int", 4, "draft length γ: tokens drafted per step (initial value when adaptive)", 1, 64),
        Param("schedule", "choice", "fixed", "fixed γ, or adapt γ to how many drafts get accepted",
              choices=("fixed", "adaptive")),
        Param("max_gamma", "int", 16, "upper bound on γ for the adaptive schedule", 1, 64),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.runner = DraftModelRunner(self.env)
        self.gamma = self.params["gamma"]

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        g = min(self.gamma, ctx.max_tokens)
        if g <= 0:
            return None
        return self.runner.draft_chain(ctx.tokens, g, self.env.sampling, self.env.generator)

    def observe(self, fb: StepFeedback) -> None:
        if self.params["schedule"] != "adaptive" or fb.draft is None:
            return
        if len(fb.accepted) == len(fb.draft):
            self.gamma = min(self.gamma + 2, self.params["max_gamma"])
        else:
            self.gamma = max(1, self.gamma - 1)
