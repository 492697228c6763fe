"""Sampled draft trees: multi-candidate (SpecInfer / multi-draft) and recursive (RSD).

Both are exact under sampling because every node records the distribution it
was drawn from given its earlier siblings (q_dist), which the shared recursive
rejection rule needs:

- multi_candidate (Miao et al. 2024 "SpecInfer"; Yang et al. 2024 "multi-candidate
  speculative decoding"): k draft sequences drawn independently from the draft
  model, verified together in one target pass as k branches under the root.
  The k first tokens are i.i.d. from q, so they are tried in turn with
  multi-step speculative sampling; below the first token each branch is a
  chain. (SpecTr's optimal-transport coupling would accept a little more often;
  the independent-candidates rule used here is its simplest exact member.)
  Under greedy the k branches start from the draft's k best first tokens.
- recursive (Jeon et al. 2024, "Recursive Speculative Decoding"): at every node
  the children are drawn *without replacement* (Gumbel-top-k), so siblings are
  distinct; sibling i's q is the draft distribution with the earlier siblings
  removed and renormalised. Under greedy the children are the top-k.
"""
from __future__ import annotations

import torch

from ..config import ConfigError
from ..sampling import logits_to_probs
from ..draft import Draft
from .base import DraftContext, Param, register
from .draft_model import DraftTreeSession
from .top_k_trees import TopKTreeDrafter


def _draft_dist(logits: torch.Tensor, drafter) -> torch.Tensor:
    """The distribution the drafter samples from: the same warping as the target's."""
    return logits_to_probs(logits, drafter.env.sampling)  # (V,)


def _finish(session: DraftTreeSession, q_token: list[float], rows: list[torch.Tensor] | None) -> Draft:
    return Draft(list(session.tokens), list(session.parents), q_token,
                 torch.stack(rows) if rows else None)


@register
class MultiCandidate(TopKTreeDrafter):
    name = "multi_candidate"
    label = "Multi-candidate speculative (k drafts)"
    family = "Draft model, tree"
    pays_when = ("sampling (temperature > 0) with a cheap draft: several independent drafts raise the chance "
                 "that one is accepted")
    description = "k independent draft sequences verified together in one target pass (SpecInfer-style). Lossless."
    params = (
        Param("k", "int", 3, "number of candidate sequences", 1, 16),
        Param("gamma", "int", 4, "length of each candidate", 1, 32),
    )

    def propose(self, ctx: DraftContext) -> Draft | None:
        gamma = min(self.params["gamma"], ctx.max_tokens)
        if gamma <= 0:
            return None
        k, greedy = self.params["k"], self.env.sampling.greedy
        session = DraftTreeSession(self.runner, ctx.tokens)
        q_token: list[float] = []
        rows: list[torch.Tensor] = []
        try:
            if greedy:
                firsts, first_q = self.topk(session.root_logits, k)
            else:
                q = _draft_dist(session.root_logits, self)
                firsts = torch.multinomial(q, k, replacement=True, generator=self.env.generator).tolist()
                first_q = [float(q[t]) for t in firsts]
                rows.extend([q] * k)
            leaves = [session.add(t, -1) for t in firsts]
            q_token.extend(first_q)
            for _ in range(gamma - 1):
                logits = session.feed(leaves)  # (k, V): one draft forward extends every branch
                new = []
                for leaf, lg in zip(leaves, logits):
                    if greedy:
                        probs = lg.float().softmax(-1)
                        t = int(probs.argmax())
                        q_token.append(float(probs[t]))
                    else:
                        probs = _draft_dist(lg, self)
                        t = int(torch.multinomial(probs, 1, generator=self.env.generator))
                        q_token.append(float(probs[t]))
                    rows.append(probs)
                    new.append(session.add(t, leaf))
                leaves = new
            return _finish(session, q_token, None if greedy else rows)
        finally:
            session.close()


def parse_branching(text: str) -> list[int]:
    try:
        ks = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        ks = []
    if not ks or any(k < 1 or k > 16 for k in ks):
        raise ConfigError(f"branching must be comma-separated integers in [1, 16], one per depth, got {text!r}")
    return ks


@register
class Recursive(TopKTreeDrafter):
    name = "recursive"
    label = "Recursive speculative decoding (RSD)"
    family = "Draft model, tree"
    pays_when = ("sampling with a cheap draft: children drawn without replacement cover more of the target's "
                 "choices than independent drafts of the same width")
    description = ("Tree drafted by sampling children without replacement (Gumbel-top-k), verified by recursive "
                   "rejection sampling. Lossless.")
    params = (
        Param("branching", "str", "3,2,1,1", "children per node at each depth, e.g. 3,2,1,1",
              check=parse_branching),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.branching = parse_branching(self.params["branching"])

    def _children(self, logits: torch.Tensor, k: int) -> tuple[list[int], list[float], list[torch.Tensor]]:
        """k distinct children and, for each, the distribution it was drawn from."""
        if self.env.sampling.greedy:
            idx, qs = self.topk(logits, k)
            return idx, qs, []
        q = _draft_dist(logits, self)
        k = min(k, int((q > 0).sum()))
        # Gumbel-top-k: the k largest log q + Gumbel noise are a sequential sample without replacement
        u = torch.rand(q.shape, generator=self.env.generator, device=q.device).clamp_(1e-20, 1.0)
        keys = torch.log(q) - torch.log(-torch.log(u))
        idx = torch.topk(keys, k).indices.tolist()
        rows, left = [], q.clone()
        for t in idx:
            rows.append(left / left.sum())
            left[t] = 0.0
        return idx, [float(r[t]) for r, t in zip(rows, idx)], rows

    def propose(self, ctx: DraftContext) -> Draft | None:
        depth = min(len(self.branching), ctx.max_tokens)
        if depth <= 0:
            return None
        session = DraftTreeSession(self.runner, ctx.tokens)
        q_token: list[float] = []
        rows: list[torch.Tensor] = []
        try:
            frontier = [-1]
            for level in range(depth):
                logits = [session.root_logits] if level == 0 else list(session.feed(frontier))
                nxt = []
                for par, lg in zip(frontier, logits):
                    toks, qs, dists = self._children(lg, self.branching[level])
                    for i, t in enumerate(toks):
                        nxt.append(session.add(t, par))
                        q_token.append(qs[i])
                        if dists:
                            rows.append(dists[i])
                frontier = nxt
            return _finish(session, q_token, rows or None)
        finally:
            session.close()
