"""A draft model with its own KV cache, kept in step with the committed tokens.

Shared by every method that drafts with a small model. The cache (a backend
session opened through the drafter's env, so the draft runs on the run's backend)
holds a prefix of the context; `logits_after(context)` feeds whatever is missing
and returns the next-token logits, and `rollback(n)` forgets everything past
position n (rejected draft tokens) without recomputing what was accepted.
"""
from __future__ import annotations

import torch

from .. import tree_shape
from ..sampling import logits_to_probs
from ..draft import Draft


class DraftModelRunner:
    def __init__(self, env, loaded=None, backend: str | None = None) -> None:
        """env: the drafter's DrafterEnv; loaded: the draft LoadedModel (default env.draft)."""
        self.loaded = loaded if loaded is not None else env.draft
        self.model = self.loaded.model
        self.device = self.loaded.device
        self.session = env.session(self.loaded, backend)
        self.tokens: list[int] = []  # tokens whose keys/values are in the cache

    @torch.inference_mode()
    def logits_after(self, context: list[int]) -> torch.Tensor:
        """(V,) logits for the token after `context`; feeds the uncached suffix."""
        n = self._common_prefix(context)
        if n == len(context):  # everything cached: recompute the last position
            n -= 1
        self.rollback(n)
        ids = torch.tensor([context[n:]], device=self.device)  # (1, T_new)
        logits = self.session.forward(ids, keep=1)
        self.tokens = list(context)
        return logits[-1]  # (V,)

    @torch.inference_mode()
    def logits_along(self, context: list[int], proposal: list[int]) -> torch.Tensor:
        """(1 + len(proposal), V) logits after context and after each proposed token, in one forward."""
        self._ensure_prefix(context[:-1])
        ids = torch.tensor([[context[-1]] + proposal], device=self.device)
        logits = self.session.forward(ids)
        self.tokens = list(context) + list(proposal)
        return logits

    @torch.inference_mode()
    def draft_chain(self, context: list[int], n: int, sampling, generator: torch.Generator | None,
                    min_confidence: float = 0.0) -> Draft | None:
        """Up to n tokens drawn from the draft one by one after `context` (argmax under greedy).

        q of each token is the distribution it was drawn from (temperature 1 softmax under greedy,
        for display); drafting stops early when the draft's top probability falls below
        `min_confidence` (the draft is unsure: the target takes it from there).
        """
        tokens: list[int] = []
        q: list[float] = []
        dists: list[torch.Tensor] = []
        logits = self.logits_after(context)  # (V,)
        while len(tokens) < n:
            probs = logits.float().softmax(-1) if sampling.greedy else logits_to_probs(logits, sampling)  # (V,)
            if min_confidence > 0 and float(probs.max()) < min_confidence:
                break
            tok = int(probs.argmax()) if sampling.greedy else int(torch.multinomial(probs, 1, generator=generator))
            tokens.append(tok)
            q.append(float(probs[tok]))
            if not sampling.greedy:
                dists.append(probs)
            if len(tokens) < n:
                logits = self.logits_after(context + tokens)
        if not tokens:
            return None
        return Draft.chain(tokens, q, torch.stack(dists) if dists else None)  # q_dist: (len, V) when sampling

    def _ensure_prefix(self, prefix: list[int]) -> None:
        n = self._common_prefix(prefix)
        self.rollback(n)
        if n < len(prefix):
            ids = torch.tensor([prefix[n:]], device=self.device)
            self.session.forward(ids, keep=1)
            self.tokens = list(prefix)

    def _common_prefix(self, context: list[int]) -> int:
        n = min(len(self.tokens), len(context))
        for i in range(n):
            if self.tokens[i] != context[i]:
                return i
        return n

    def rollback(self, n: int) -> None:
        if n < len(self.tokens) or self.session.length > n:
            self.session.crop(n)
            self.tokens = self.tokens[:n]


class DraftTreeSession:
    """Grow a draft tree with the draft model, one forward per batch of new nodes.

    The draft cache holds the context; node i's keys/values sit at cache slot
    len(context) + i, so nodes must be fed in index order (parents first).
    `feed(nodes)` returns the draft logits at those nodes (their children's
    distribution); `close()` drops every tree entry again.
    """

    def __init__(self, runner: DraftModelRunner, context: list[int]) -> None:
        self.runner = runner
        self.base = len(context)
        self.root_logits = runner.logits_after(context)  # (V,) distribution of the root's children
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.fed = 0  # nodes [0, fed) are in the cache
        self._logits: dict[int, torch.Tensor] = {}  # node -> draft logits after it

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
        return len(self.tokens) - 1

    @torch.inference_mode()
    def feed(self, nodes: list[int]) -> torch.Tensor:
        """Draft logits (len(nodes), V) after each node; feeds every node up to max(nodes)."""
        upto = max(nodes) + 1
        new = list(range(self.fed, upto))
        if new:
            block = torch.zeros(len(new), upto, dtype=torch.bool)  # visibility of tree nodes [0, upto)
            for r, i in enumerate(new):
                block[r, tree_shape.path_to(self.parents, i)] = True  # the node and its ancestors
            pos = torch.tensor([[self.base - 1 + self.depth[i] for i in new]], device=self.runner.device)
            ids = torch.tensor([[self.tokens[i] for i in new]], device=self.runner.device)
            logits = self.runner.session.forward(ids, positions=pos, block=block.to(self.runner.device))
            for r, i in enumerate(new):
                self._logits[i] = logits[r]
            self.fed = upto
        return torch.stack([self._logits[i] for i in nodes])

    def close(self) -> None:
        self.runner.rollback(self.base)
        self._logits = {}
