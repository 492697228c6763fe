"""PARD: a parallel draft model drafts a chain of k tokens in ONE draft forward (An et al. 2025, "PARD: Accelerating
LLM Inference with Low-Cost PARallel Draft Model Adaptation").

The draft (workbench.heads.pard: a few decoder layers over the target's embedding
and LM head, trained by `workbench train --kind pard`) keeps its own KV cache of
the committed tokens. Each step feeds it the tokens committed since its last
forward (the last accepted draft tokens and the bonus token: the root last) and
k - 1 mask tokens, in one causal forward; the root's output drafts x_{t+1} and
mask i's drafts x_{t+1+i}. Only the committed tokens' keys/values stay in its
cache, the masks' never do, so a rejected tail costs nothing to roll back. The
chain is verified by the shared verifier in one target forward.

Sampling is exact: position i's q_i is a function of the context only (its
inputs at the other block positions are the fixed mask embedding, never the
tokens drafted there), so drawing each x_{t+1+i} ~ q_i independently draws it
from its distribution given the drafted prefix too, and the chain verifier's
accept/resample rule is the standard one (workbench.methods.block's BlockDrafter
does the drawing). Under greedy each position proposes its argmax.

The draft runs eagerly on either backend (one or two small decoder layers, like
the heads); each Draft carries `forwards = 1`, which the engine records as
`Step.draft_forwards` and the Draft tree tab marks as a block drafted in one forward.
"""
from __future__ import annotations

import torch

from ..heads.pard import PardCache
from .base import DraftContext, Param, register
from .block import BlockDrafter
from .heads import TRIM_PARAM


@register
class Pard(BlockDrafter):
    """The PARD draft over the context and k - 1 mask tokens; one draft forward per block."""

    name = "pard"
    kind = "pard"
    family = "Draft model, chain"
    needs_hidden_states = False  # a draft model: it reads tokens, never the target's hidden states
    label = "PARD parallel draft model (k tokens per draft forward)"
    pays_when = ("a pard draft exists for this target (shipped for SmolLM2-135M) and guesses the next few tokens "
                 "well: the whole block costs one forward of a one- or two-layer draft")
    description = ("PARD: a small draft model trained with mask tokens reads the context followed by k - 1 masks "
                   "and drafts all k tokens in one forward (its own KV cache keeps the committed tokens only); "
                   "verified in one target pass. Target-independent drafting; lossless.")
    params = (Param("head", "str", "", "pard draft name (see `workbench heads --kind pard`) or directory; empty: "
                    "the default pard draft for the target"),
              TRIM_PARAM,
              Param("block", "int", 0, "tokens drafted per step, k (k - 1 masks), at most the draft was trained "
                    "for (0: all of them)", 0, 16))

    def block_size(self) -> int:
        return self.head.block

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.cache = PardCache(self.head, self.embed)

    def ready(self) -> bool:
        return True  # drafts from tokens alone, from the first step on

    def block_logits(self, ctx: DraftContext, k: int) -> torch.Tensor:
        return self.lm.logits(self.cache.block(ctx.tokens, k))  # (k, rows)
