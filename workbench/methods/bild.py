"""Big Little Decoder (BiLD; Kim et al. 2023, "Speculative Decoding with Big Little Decoder"): a lossy cascade.

The small model (the run's draft model: a bf16/int8 copy or a distilled model) decodes on its own while it
is confident, and hands over to the target when it is not:

- fallback policy: the small model keeps generating while its top probability max q is at least
  `fallback`; the first token it is unsure of is not kept, the target takes over there;
- rollback policy: the target reads the small model's tokens since the last hand-over in one forward
  (non-autoregressively, as BiLD's large model does at a fallback) and rolls back from the first token x
  it disagrees with beyond the bound: d = -log p(x) > `rollback` (the cross-entropy of the small model's
  token under the target's prediction), i.e. it keeps the prefix whose tokens have p(x) > exp(-rollback)
  or are its own argmax; then it adds its own token, as at every fallback.

In the workbench this is the one decode loop with a confidence-sized chain (workbench.methods.draft_model's
draft_chain with min_confidence) and the rollback bound as the shared verifier's acceptance rule (typical
acceptance with eps = exp(-rollback) and no entropy term; `verify_rule`), so the same verifier judges it.

What it approximates: the target's own decoding. The knob's two ends: fallback 1 hands every token to the
target (plain decoding, token for token); fallback 0 with an unbounded rollback (100 nats) and max_draft 0
keeps every small-model token after the first (the small model alone; the target's prefill, which reads the
prompt, gives the first token). rollback 0 keeps only tokens the target agrees with: lossless speculative
decoding whose draft length is set by the small model's confidence. Under sampling the
small model samples (its distribution is the draft's q), and a token is kept when the rejection test accepts
it or the rollback bound admits it (workbench.verify).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..config import MAX_DELTA, AcceptanceConfig
from ..draft import Draft
from .base import DraftContext, Drafter, Param, register
from .draft_model import DraftModelRunner


@register
class BiLD(Drafter):
    name = "bild"
    label = "Big Little Decoder (cascade)"
    family = "Draft model, chain"
    pays_when = ("the small model is right most of the time and knows when it is not: the target runs only at "
                 "its fallbacks, over all the small model's tokens since the last one")
    description = ("The small (draft) model decodes alone while confident and falls back to the target when "
                   "not; the target rolls back the small model's tokens it disagrees with beyond a bound. LOSSY.")
    lossless = False
    needs_draft_model = True
    params = (
        Param("fallback", "float", 0.6, "hand over to the target when the small model's top probability falls "
              "below this (1: the target alone)", 0.0, 1.0),
        Param("rollback", "float", 2.0, "roll back from the first small-model token x with -log p_target(x) "
              "above this, in nats (0: only tokens the target agrees with, lossless; 100: never)", 0.0, 100.0),
        Param("max_draft", "int", 32, "at most this many small-model tokens between two target forwards "
              "(0: up to the token budget)", 0, 512),
    )

    @classmethod
    def verify_rule(cls, params: dict[str, Any]) -> AcceptanceConfig:
        """Keep x when p(x) > exp(-rollback) (or x is the target's argmax): typical acceptance with no entropy term."""
        return AcceptanceConfig("typical", eps=math.exp(-params["rollback"]), delta=MAX_DELTA)

    def begin(self, prompt_ids: list[int]) -> None:
        self.runner = DraftModelRunner(self.env)

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        most = ctx.max_tokens + 1  # the rest of the budget: with nothing rolled back the target's token is cut
        n = min(self.params["max_draft"] or most, most)
        if n <= 0:
            return None
        return self.runner.draft_chain(ctx.tokens, n, self.env.sampling, self.env.generator,
                                       min_confidence=self.params["fallback"])
