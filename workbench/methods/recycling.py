"""Token Recycling (Luo et al. 2024, "Turning Trash into Treasure: Accelerating Inference of Large
Language Models with Token Recycling"): draft from the target's own earlier predictions, kept per token.

Every verification forward computes the target's prediction at every row of the draft, and the
rows of rejected nodes are thrown away with them. Token Recycling keeps those predictions: an
adjacency table maps each token id to candidate next tokens, refreshed from the target's outputs
after every forward, and each step a draft tree is read off the table from the last committed
token. No draft model, no training; the engine verifies the tree in one forward, so the method is
lossless (under sampling the tree is a deterministic proposal, verified as one-hot q).

What is kept from the paper: the adjacency table of candidate tokens per token, refreshed from the
target's own predictions at every verified row (accepted or not: the "trash" is recycled), and a
draft tree expanded from it, each node's children being its token's candidates, starting at the last
committed token; no draft model.

What differs here:
- The paper refreshes a token's row with the top-k tokens of the target's full logits at that
  position. The engine hands a drafter only the argmax of each verified row (`wants_target_argmax`,
  `observe_target`: row 0 is the root's, row i + 1 node i's), so a token's candidates are collected
  over steps instead: the `branches` most recent distinct argmax predictions after it, newest first.
- The table starts from the prompt's own bigrams (what followed each token in the prompt): the
  engine's prefill keeps only its last row, so the target's predictions over the prompt never reach
  a drafter. The table lives for one run.
- The paper builds the tree breadth first (a BFS-like walk over the matrix). Here it grows best
  first by the estimated chance of reaching each node: the product, along its path, of how often
  the rank-r candidate of a reached node has been the accepted one in this run (learned online, as
  Sequoia's positional acceptance). Reliable first candidates draft deep chains, unreliable ones a
  wider, shallower tree; at most `depth` levels and `max_nodes` nodes.
- With `sizing=cost` (the default) only the share of the tree whose expected accepted tokens pay
  for its verification on this machine is verified (top_k_trees.TreeBudget, as tree_dynamic and the
  heads do), which on a CPU, where a wide forward costs more, is often a plain step.
"""
from __future__ import annotations

import heapq
import time

from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, register
from .model_free import TrieDraft
from .top_k_trees import SIZING_PARAM, CandidateTree, tree_budget

PRIOR_WEIGHT = 2.0  # pseudo-tries of a rank's acceptance before any data; the prior rate is 1 / (rank + 2)


class SuccessorTable:
    """Token id -> its most recent distinct successor guesses, newest first (at most `width`)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: dict[int, list[int]] = {}

    def add(self, token: int, successor: int) -> None:
        row = self.rows.setdefault(token, [])
        if successor in row:
            row.remove(successor)
        row.insert(0, successor)
        del row[self.width:]

    def get(self, token: int) -> list[int]:
        return self.rows.get(token, [])


@register
class Recycling(Drafter):
    name = "recycling"
    label = "Token Recycling (adjacency table)"
    family = "Without a draft model"
    pays_when = ("the target's own earlier predictions recur in the text: drafting is a table lookup, no model")
    description = ("Keeps, per token, the target's own recent next-token predictions from every verification "
                   "forward (accepted rows or not) and drafts a small tree from them after the last token. "
                   "No draft model. Lossless.")
    tree = True
    wants_target_argmax = True
    params = (
        Param("depth", "int", 6, "deepest level of the draft tree", 1, 16),
        Param("branches", "int", 4, "candidate next tokens kept per token (children per node)", 1, 8),
        Param("max_nodes", "int", 32, "nodes in the draft tree (with sizing=cost: at most)", 1, 64),
        SIZING_PARAM,
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.table = SuccessorTable(self.params["branches"])
        for token, successor in zip(prompt_ids, prompt_ids[1:]):
            self.table.add(token, successor)
        self.hits = [0] * self.params["branches"]  # per child rank: accepted, of ...
        self.tries = [0] * self.params["branches"]  # ... verified with its parent reached
        self.budget = tree_budget(self, self.params["max_nodes"])
        self.root = -1  # the last committed token when the pending draft was proposed
        self.ranks: list[int] = []  # each node's rank among its parent token's candidates, in the pending draft

    def rate(self, rank: int) -> float:
        """Estimated chance that the rank-`rank` candidate of a reached node is the accepted one."""
        prior = 1.0 / (rank + 2)
        return (self.hits[rank] + PRIOR_WEIGHT * prior) / (self.tries[rank] + PRIOR_WEIGHT)

    def propose(self, ctx: DraftContext) -> Draft | None:
        self.root, self.ranks = ctx.tokens[-1], []
        depth = min(self.params["depth"], ctx.max_tokens)
        if depth <= 0:
            return None
        if self.budget is not None:
            depth = self.budget.depth(depth)
        started = time.perf_counter()
        # best first by the chance of reaching a node; a child's chance is below its parent's, so parents
        # come first and any top n of the nodes is a tree
        tree = CandidateTree(None)  # nodes with their path scores; no draft model to expand
        ranks: list[int] = []
        heap = [(-self.rate(r), r, -1, tok, r) for r, tok in enumerate(self.table.get(self.root))]
        heapq.heapify(heap)
        order = len(heap)  # tie-break: insertion order
        while heap and len(tree.tokens) < self.params["max_nodes"]:
            _, _, parent, token, rank = heapq.heappop(heap)
            node = tree.add(token, parent, self.rate(rank))  # its score: the product of rates along the path
            ranks.append(rank)
            if tree.depth[node] < depth:
                for r, tok in enumerate(self.table.get(token)):
                    heapq.heappush(heap, (-tree.score[node] * self.rate(r), order, node, tok, r))
                    order += 1
        keep = list(range(len(tree.tokens)))
        if self.budget is not None:
            keep = self.budget.cut(tree, keep, time.perf_counter() - started)
        if not keep:
            return None
        trie, node_of = TrieDraft(), {-1: -1}
        for n in keep:  # creation order: parents first
            node_of[n] = trie.add(node_of[tree.parents[n]], tree.tokens[n])
        self.ranks = [ranks[n] for n in keep]
        return trie.draft()

    def observe_target(self, argmax_rows: list[int], draft: Draft | None) -> None:
        # row 0 follows the root, row i + 1 follows node i: what the target itself puts after each token
        tokens = [self.root] + (draft.tokens if draft is not None else [])
        for token, successor in zip(tokens, argmax_rows):
            self.table.add(token, successor)

    def observe(self, fb: StepFeedback) -> None:
        if self.budget is not None:
            self.budget.observe(fb.draft, fb.accepted)
        if fb.draft is None or len(fb.draft) != len(self.ranks):
            return
        reached = {-1, *fb.accepted}
        for node, parent in enumerate(fb.draft.parents):
            if parent in reached:  # this node was verified with its parent accepted: a try of its rank
                self.tries[self.ranks[node]] += 1
                self.hits[self.ranks[node]] += node in reached
