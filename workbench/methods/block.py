"""Block drafters: a whole chain of k tokens drafted in ONE drafter forward, verified in one target forward.

Every other drafter here pays one drafter forward per drafted token (or per tree
level); on a small target that cost, not only the guesses' accuracy, decides
whether speculation pays. These draft the block at once:

- blockwise  (Stern et al. 2018, "Blockwise Parallel Decoding for Deep
             Autoregressive Models"): k independent heads on the target's last
             hidden state, head i predicting position t + 1 + i; the block is
             their top-1 chain (Medusa's heads are exactly such heads: Medusa
             verifies a tree of their top-k, blockwise their single best chain,
             so blockwise reuses the Medusa heads and their shipped weights).
- dflash     (Chen et al. 2025, DFlash): a small transformer over the target's
             fused features of the last committed positions, the root token and
             k mask slots with non-causal attention, denoising the block in one
             forward (workbench.heads.block).
- pard       (An et al. 2025, PARD): a small draft LM over the context and k - 1
             mask tokens, with its own KV cache (workbench.methods.pard).

Sampling is exact for all of them: block position i's distribution q_i depends on the
context only (never on the tokens drawn at the other positions), so drawing each
token from its own q_i draws it from its distribution given the drafted prefix
too, and the shared chain verifier's accept/resample rule is the standard one.
Under greedy each position proposes its argmax (a deterministic proposal).

Each Draft carries `forwards = 1`: the engine records it per step
(`Step.draft_forwards`) and the Draft tree tab marks such a block.
"""
from __future__ import annotations

from collections import deque

import torch

from ..config import ConfigError
from ..draft import Draft
from ..sampling import logits_to_probs
from .base import DraftContext, Param, StepFeedback, register
from .heads import HEAD_PARAM_HELP, TRIM_PARAM, HeadDrafter


class BlockDrafter(HeadDrafter):
    """Shared: a chain drafted from one (k, rows) block of logits, each row a position's distribution."""

    tree = False
    family = "Trained heads"

    def block_logits(self, ctx: DraftContext, k: int) -> torch.Tensor:
        """(k, rows) logits of block positions 1..k, from one head forward."""
        raise NotImplementedError

    def block_size(self) -> int:
        """The most positions the head drafts (its number of heads or mask slots)."""
        raise NotImplementedError

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.k = self.params["block"] or self.block_size()  # 0: every position the head drafts
        if self.k > self.block_size():
            raise ConfigError(f"{self.name}: block={self.params['block']} is more than the head drafts "
                              f"({self.block_size()} positions; train one with --heads {self.params['block']})")

    def ready(self) -> bool:
        """Whether a block can be drafted now (the heads: once the target's hidden state of the root is known)."""
        return self.last is not None

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0 or not self.ready():
            return None
        k = min(self.k, ctx.max_tokens)
        logits = self.block_logits(ctx, k).float()  # (k, rows)
        sampling = self.env.sampling
        if sampling.greedy:
            probs = logits.softmax(-1)  # q for display; the proposal is the argmax (one-hot for verification)
            idx = probs.argmax(-1)  # (k,)
            dists = None
        else:
            probs = logits_to_probs(logits, sampling)  # (k, rows): q_i, each a function of the context only
            idx = torch.multinomial(probs, 1, generator=self.env.generator)[:, 0]  # x_i ~ q_i, independently
            V = self.env.target.vocab_size
            dists = torch.stack([self.lm.full(p, V) for p in probs])  # (k, V)
        q = probs.gather(-1, idx[:, None])[:, 0].tolist()
        return Draft.chain(self.lm.tokens(idx), q, dists, forwards=1)


@register
class Blockwise(BlockDrafter):
    """Stern et al.'s blockwise parallel decoding over the Medusa heads: head i's best token (or a token drawn
    from head i under sampling) at block position i, all k from one call of the heads on h_t."""

    name = "blockwise"
    kind = "medusa"  # Stern et al.'s k independent heads are Medusa-1 heads; their weights are shared
    label = "Blockwise parallel decoding (independent heads, top-1 block)"
    pays_when = ("a Medusa head exists for this target and its first heads guess well: the block costs one "
                 "head forward and one narrow verification")
    description = ("Stern et al.'s blockwise parallel decoding: k independent heads on the target's last hidden "
                   "state each predict one of the next k tokens; their top-1 chain (sampled under sampling) is "
                   "drafted in one head forward and verified in one target pass. Uses the Medusa heads. Lossless.")
    params = (Param("head", "str", "", HEAD_PARAM_HELP + " (a medusa head)"), TRIM_PARAM,
              Param("block", "int", 0, "tokens drafted per step, at most the head's number of heads (0: one per head)",
                    0, 16))

    def block_size(self) -> int:
        return len(self.head.blocks)

    def block_logits(self, ctx: DraftContext, k: int) -> torch.Tensor:
        feats = self.head(self.last)[:k]  # (k, H): head i's feature for position t + 2 + i
        return self.lm.logits(feats)  # (k, rows)


@register
class DFlash(BlockDrafter):
    """The DFlash-style block head (workbench.heads.block) over the last `context` committed positions' fused
    features, the root and its mask slots: one head forward per block."""

    name = "dflash"
    kind = "dflash"
    label = "DFlash block head (one-forward block on fused features)"
    pays_when = ("a dflash head exists for this target (shipped for SmolLM2-135M): the whole block costs one "
                 "forward of a two-layer head, whatever its length")
    description = ("A small transformer reads the target's fused features of the last committed positions, the "
                   "last token and k mask slots, with non-causal attention over the block, and drafts all k "
                   "tokens in one forward (DFlash-style); verified in one target pass. Lossless.")
    params = (Param("head", "str", "", HEAD_PARAM_HELP + " (a dflash head)"), TRIM_PARAM,
              Param("block", "int", 0, "tokens drafted per step, at most the head's mask slots (0: all of them)",
                    0, 16))

    def block_size(self) -> int:
        return self.head.block

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.recent: deque[torch.Tensor] = deque(maxlen=self.head.context)  # committed features, oldest first

    @torch.inference_mode()
    def observe(self, fb: StepFeedback) -> None:
        if fb.hidden is not None:
            feats = self.head.committed(fb.hidden)  # (n, H): one per position this step committed
            self.recent.extend(feats[-self.head.context:])
            self.last = self.recent[-1]

    def block_logits(self, ctx: DraftContext, k: int) -> torch.Tensor:
        C, n = self.head.context, len(self.recent)
        ctx_feats = torch.stack(list(self.recent))  # (n, H)
        valid = None
        if n < C:  # a prompt shorter than the context window: pad in front, hidden from attention
            ctx_feats = torch.cat([ctx_feats.new_zeros(C - n, ctx_feats.shape[1]), ctx_feats])  # (C, H)
            valid = torch.arange(C, device=ctx_feats.device)[None] >= C - n  # (1, C)
        root = self.embed(torch.tensor([ctx.tokens[-1]], device=ctx_feats.device))  # (1, H)
        out = self.head(ctx_feats[None], root, valid)[0, :k]  # (k, H): all mask slots run, as in training
        return self.lm.logits(out)  # (k, rows)
