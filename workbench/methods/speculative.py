"""Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft model proposes γ tokens autoregressively; the target verifies them in
one forward pass with the shared rejection rule (workbench.verify). Under
greedy decoding the output is token-identical to plain greedy; under sampling
it is distributed exactly as the target's.

How γ is chosen each step:

- gamma = N (default 4) with schedule=fixed: always N tokens.
- gamma = 0: the γ that commits the most tokens per unit of time
  on this machine. Drafting a token costs c one-token target forwards (c = the
  draft's one-token forward time over the target's, from both models' measured
  cost profiles on the run's backend) and verifying γ tokens costs r(γ) (the
  target's profile); the acceptance of each draft position is learned during
  the run (model_free.DraftGate). γ = argmax E(γ) / (r(γ) + γ c) up to
  `max_gamma`, and no draft at all (a plain step) when none beats it: a draft
  as slow as the target is then left alone instead of making the run slower
  than plain decoding. The choice reads only earlier steps, so it is lossless.
- schedule=adaptive: transformers' heuristic, from gamma (4 when 0): γ += 2
  after a fully accepted draft, γ -= 1 (to at least 1) otherwise.
"""
from __future__ import annotations

import torch

from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, register
from .draft_model import DraftModelRunner
from .model_free import DraftGate


@register
class Speculative(Drafter):
    name = "speculative"
    label = "Speculative decoding (draft model)"
    family = "Draft model, chain"
    pays_when = ("a draft model costs much less per token than the target (cost ratio c small) and agrees with"
                 " it often (α high); gamma=0 sizes each draft from this machine's measured costs")
    description = ("A smaller (or lower-precision) draft model proposes γ tokens; the target verifies them "
                   "in one forward pass. Lossless.")
    needs_draft_model = True
    params = (
        Param("gamma", "int", 4, "draft length γ: tokens drafted per step; 0: chosen each step to pay most on "
              "this machine (measured costs and the acceptance so far; no draft when drafting does not pay)",
              0, 64),
        Param("schedule", "choice", "fixed", "fixed γ, or adapt γ to how many drafts get accepted (transformers' "
              "heuristic, from γ, or 4 when γ is 0)", choices=("fixed", "adaptive")),
        Param("max_gamma", "int", 16, "upper bound on γ when it is chosen by cost or adapted", 1, 64),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.runner = DraftModelRunner(self.env)
        adaptive = self.params["schedule"] == "adaptive"
        self.gamma = self.params["gamma"] or (4 if adaptive else 0)
        self.gate = None
        if self.gamma == 0:  # chosen by cost
            most, costs = self.params["max_gamma"], self.env.costs
            ratios, t_target = costs.forward_ratios(self.env.target, self.env.backend, most)
            c = costs.seconds(self.env.draft, self.env.backend, 1) / t_target  # both one-token forwards
            self.gate = DraftGate(ratios, most, draft_cost=c, log=self.env.sizing)

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        g = min(self.gamma, ctx.max_tokens)
        if self.gate is not None:
            g = self.gate.length((), min(self.params["max_gamma"], ctx.max_tokens))
        if g <= 0:
            return None
        return self.runner.draft_chain(ctx.tokens, g, self.env.sampling, self.env.generator)

    def observe(self, fb: StepFeedback) -> None:
        if fb.draft is None:
            return
        if self.gate is not None:
            self.gate.update((), len(fb.draft), len(fb.accepted))
        elif self.params["schedule"] == "adaptive":
            if len(fb.accepted) == len(fb.draft):
                self.gamma = min(self.gamma + 2, self.params["max_gamma"])
            else:
                self.gamma = max(1, self.gamma - 1)
