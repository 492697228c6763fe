"""Staged speculative decoding (Spector & Re 2023): speculate for the drafter too.

Stage 1: an n-gram lookup (prompt + generated text) proposes tokens for the
*draft model*, which checks them in one forward of its own, so drafting γ tokens
takes fewer draft forwards. The inner check keeps the draft exact: under greedy
it is the draft's own argmax chain; under sampling a looked-up token x is kept
with probability q(x) and otherwise the draft samples from q without x, which
draws exactly from q.
Stage 2: the draft's chain, plus its next-best alternatives for the first token
as extra branches, form a tree the target verifies in one pass.
"""
from __future__ import annotations

import torch

from ..sampling import logits_to_probs
from ..draft import Draft
from ..verify import residual
from .base import DraftContext, Param, register
from .draft_model import DraftModelRunner
from .prompt_lookup import PromptLookup
from .top_k_trees import TopKTreeDrafter


@register
class Staged(TopKTreeDrafter):
    name = "staged"
    label = "Staged speculative (n-gram -> draft model -> target)"
    family = "Draft model, tree"
    pays_when = ("the draft model is itself slow and the text repeats, so an n-gram lookup can speed up the "
                 "draft")
    description = ("An n-gram lookup speeds up the draft model, which drafts a chain plus alternative first "
                   "tokens for the target. Lossless.")
    params = (
        Param("gamma", "int", 6, "chain length drafted by the draft model", 1, 32),
        Param("branches", "int", 2, "extra alternatives for the first token (tree width at depth 1)", 0, 8),
        Param("max_ngram", "int", 3, "n-gram size of the inner lookup", 1, 8),
        Param("inner_draft", "int", 4, "tokens the lookup proposes to the draft model per inner step", 1, 16),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.runner = DraftModelRunner(self.env)
        self.lookup = PromptLookup(self.env, max_ngram=self.params["max_ngram"], min_ngram=1,
                                   num_draft=self.params["inner_draft"], cost_aware=False)
        self.lookup.begin(prompt_ids)

    def _dist(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.env.sampling
        return logits.float().softmax(-1) if cfg.greedy else logits_to_probs(logits, cfg)

    def _pick(self, q: torch.Tensor, suggested: int | None) -> tuple[int, bool]:
        """Draw from q, reusing `suggested` when the inner rule accepts it. Returns (token, used suggestion)."""
        g = self.env.generator
        if self.env.sampling.greedy:
            tok = int(q.argmax())
            return tok, tok == suggested
        if suggested is not None:
            if float(torch.rand((), generator=g, device=q.device)) < float(q[suggested]):
                return suggested, True  # deterministic proposal: accept with prob q(x)
            q = residual(q, None, suggested)  # rejected one-hot proposal: q without it
        return int(torch.multinomial(q, 1, generator=g)), False

    def propose(self, ctx: DraftContext) -> Draft | None:
        gamma = min(self.params["gamma"], ctx.max_tokens)
        if gamma <= 0:
            return None
        chain: list[int] = []
        dists: list[torch.Tensor] = []
        self.lookup.index_context(ctx.tokens)  # the committed context only; the chain is provisional
        while len(chain) < gamma:
            # stage 1: n-gram suggestions for the draft model, checked in one draft forward
            suggestion = self.lookup.match(ctx.tokens + chain, gamma - len(chain))
            rows = self.runner.logits_along(ctx.tokens + chain, suggestion)  # (1+m, V)
            for i in range(len(suggestion) + 1):
                q = self._dist(rows[i])
                tok, kept = self._pick(q, suggestion[i] if i < len(suggestion) else None)
                chain.append(tok)
                dists.append(q)
                if not kept or len(chain) >= gamma:
                    break
        # stage 2: the chain plus alternatives for its first token
        tokens, parents = list(chain), list(range(-1, len(chain) - 1))
        q_token = [float(d[t]) for d, t in zip(dists, chain)]
        rows_out = list(dists)
        alts = [t for t in torch.topk(dists[0], self.params["branches"] + 1).indices.tolist() if t != chain[0]]
        for t in alts[: self.params["branches"]]:
            tokens.append(t)
            parents.append(-1)
            q_token.append(float(dists[0][t]))
            rows_out.append(torch.nn.functional.one_hot(torch.tensor(t), dists[0].shape[-1]).to(dists[0]))
        q_dist = None if self.env.sampling.greedy else torch.stack(rows_out)
        return Draft(tokens, parents, q_token, q_dist)
