"""Draft-tree methods that expand the draft model's top-k: static, dynamic (EAGLE-2), OPT-Tree.

All three propose *deterministic* top-k children, so verification under sampling
treats every node as a one-hot proposal (recursive rejection over siblings in
rank order), which is exact; under greedy the longest argmax path wins.

- tree_static  (Medusa-style "choices"; Cai et al. 2024): a fixed tree given as
  paths over child ranks, e.g. [[0], [1], [0, 0]] = best child, second child,
  best grandchild under the best child.
- tree_dynamic (EAGLE-2; Li et al. 2024): level by level, expand the top_k most
  confident frontier nodes (by cumulative draft probability) into top_k
  children each; after `depth` levels keep the best `total_tokens` nodes.
- opt_tree (OPT-Tree; Wang et al. 2024): best-first growth that maximises the
  expected acceptance length sum_node prod_path q under a node budget; since a
  child's cumulative probability never exceeds its parent's, the best n nodes
  always form a tree. Stops early when the next node's value drops below
  `threshold` (the adaptive size of the paper).

Only the nodes that get expanded are fed to the draft model (a leaf needs no
draft forward: nothing hangs under it), so a level of tree_dynamic costs a
forward over its top_k expanded nodes, not over all top_k^2 candidates.
"""
from __future__ import annotations

import collections
import heapq
import json
import time

import torch

from ..config import ConfigError
from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, register
from .draft_model import DraftModelRunner, DraftTreeSession
from .sizing import SizingLog, tree_reason

NAMED_TREES: dict[str, list[list[int]]] = {
    # 4-deep chain: ordinary speculative decoding expressed as a tree
    "chain4": [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]],
    # two candidates at every level, 3 deep (binary tree, 14 nodes)
    "binary3": [[a] for a in range(2)] + [[a, b] for a in range(2) for b in range(2)]
    + [[a, b, c] for a in range(2) for b in range(2) for c in range(2)],
    # wide first level, then chains under the best two (13 nodes)
    "wide": [[0], [1], [2], [3], [4], [0, 0], [1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0, 0], [0, 1], [2, 0],
             [0, 0, 0, 0, 0]],
    # a Medusa-style sparse tree: most nodes under the best path (16 nodes)
    "medusa16": [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0],
                 [2, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
}


def parse_paths(text: str) -> list[list[int]]:
    """A tree as JSON paths over child ranks; every path's prefix must be in the tree too."""
    try:
        paths = json.loads(text)
        paths = [[int(r) for r in p] for p in paths]
    except (ValueError, TypeError):
        raise ConfigError(f"tree paths must be a JSON list of lists of ranks, e.g. [[0],[1],[0,0]]; got {text!r}")
    have = {()}
    for p in sorted(paths, key=len):
        if not p or any(r < 0 for r in p) or tuple(p[:-1]) not in have:
            raise ConfigError(f"tree path {p} has no parent path {p[:-1]} in the tree")
        have.add(tuple(p))
    return sorted(paths, key=lambda p: (len(p), p))


class CandidateTree:
    """Draft-tree nodes proposed so far; a node enters the draft model only when it is expanded.

    Node ids are creation order. `expand(nodes)` feeds exactly `nodes` (those not
    fed yet) to the draft session and returns the draft logits after each; -1 is
    the root, whose logits the session already has. `draft(keep)` is the Draft
    made of `keep` and its ancestors, renumbered in creation order.
    """

    def __init__(self, session: DraftTreeSession) -> None:
        self.session = session
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.q: list[float] = []  # the draft's probability of each node's token
        self.score: list[float] = []  # the draft's probability of each node's whole path from the root
        self.slot: dict[int, int] = {-1: -1}  # node -> its index in the draft session, once expanded

    def add(self, token: int, parent: int, q: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
        self.q.append(q)
        self.score.append(q if parent < 0 else self.score[parent] * q)
        return len(self.tokens) - 1

    def expand(self, nodes: list[int]) -> list[torch.Tensor]:
        """Draft logits (V,) after each of `nodes`: the distribution of its children."""
        for n in sorted(set(nodes) - self.slot.keys()):  # parents before children, as the session needs
            self.slot[n] = self.session.add(self.tokens[n], self.slot[self.parents[n]])
        fed = [self.slot[n] for n in nodes if n >= 0]
        rows = iter(self.session.feed(fed)) if fed else iter(())  # (len(fed), V)
        return [self.session.root_logits if n < 0 else next(rows) for n in nodes]

    def draft(self, keep: list[int], budget: "TreeBudget | None" = None, started: float = 0.0) -> Draft | None:
        """The Draft of `keep` (and its ancestors); with a budget, of the share of it that pays for its
        verification (None: none does), `started` being when drafting began (time.perf_counter())."""
        if budget is not None:
            keep = budget.cut(self, keep, time.perf_counter() - started)
        if not keep:
            return None
        keep = _close_under_ancestors(self.parents, keep)
        new_index = {old: new for new, old in enumerate(keep)}
        parents = [-1 if self.parents[i] < 0 else new_index[self.parents[i]] for i in keep]
        return Draft([self.tokens[i] for i in keep], parents, [self.q[i] for i in keep])


def grow_from_paths(session, paths: list[list[int]], max_tokens: int, topk,
                    budget: "TreeBudget | None" = None) -> Draft | None:
    """Expand top-k along rank paths, one forward per level.

    session: a tree session (DraftTreeSession, or a head's: root_logits, add, feed, close), closed here;
    topk(logits, k) -> (tokens, probs) ranks a node's children; budget: keep only the nodes that pay
    for their verification (TreeBudget), else all.
    """
    started = time.perf_counter()
    tree = CandidateTree(session)
    node_of: dict[tuple[int, ...], int] = {(): -1}
    if budget is not None:
        max_tokens = budget.depth(max_tokens)
    try:
        by_depth: dict[int, list[list[int]]] = {}
        for path in sorted(paths, key=lambda p: (len(p), p)):  # siblings in rank order
            if len(path) <= max_tokens:
                by_depth.setdefault(len(path), []).append(path)
        for depth in sorted(by_depth):
            parents = sorted({node_of[tuple(p[:-1])] for p in by_depth[depth]})
            logits = dict(zip(parents, tree.expand(parents)))
            need = {par: 1 + max(p[-1] for p in by_depth[depth] if node_of[tuple(p[:-1])] == par)
                    for par in parents}
            ranked = {par: topk(logits[par], need[par]) for par in parents}
            for path in by_depth[depth]:
                par = node_of[tuple(path[:-1])]
                toks, probs = ranked[par]
                node_of[tuple(path)] = tree.add(toks[path[-1]], par, probs[path[-1]])
        return tree.draft(list(range(len(tree.tokens))), budget, started)
    finally:
        session.close()


def grow_dynamic(session, depth: int, top_k: int, total: int, topk,
                 budget: "TreeBudget | None" = None) -> Draft | None:
    """EAGLE-2's expansion: level by level, expand the top_k frontier nodes by cumulative draft probability
    into top_k children each; keep the best `total` nodes (with a budget, at most that many).
    session/topk/budget as in grow_from_paths."""
    started = time.perf_counter()
    tree = CandidateTree(session)
    score = tree.score
    if budget is not None:
        depth = budget.depth(depth)
    try:
        frontier = [-1]
        for _ in range(depth):
            children = []
            for par, lg in zip(frontier, tree.expand(frontier)):  # one draft forward over the frontier
                toks, probs = topk(lg, top_k)
                for t, q in zip(toks, probs):
                    children.append(tree.add(t, par, q))
            frontier = sorted(children, key=lambda n: -score[n])[:top_k]  # the nodes the next level expands
        keep = sorted(range(len(score)), key=lambda n: -score[n])[:total]
        return tree.draft(keep, budget, started)
    finally:
        session.close()


class TreeBudget:
    """How many of a draft tree's nodes to verify: the count that pays for its verification here, learned
    online (the tree counterpart of model_free.DraftGate).

    A node's score v is its path's draft probability, the draft's own estimate of the chance that the target
    accepts the whole path; verifying nodes 1..n (ranked by v; a child never outranks its parent, so any
    top n is a tree) then yields in expectation

        E(n) = 1 + sum_{i<=n} min(1, s_d(i) v_i)      tokens (the bonus included),

    where s_d corrects the draft's over- or under-confidence at depth d, learned from the verified steps:
    s_d = (accepted_d + PRIOR) / (predicted_d + PRIOR), accepted_d counting the steps whose accepted path
    reached depth d and predicted_d the scores of the nodes verified there. The step costs r(n) + D
    one-token forwards: r(n) = t(n + 1) / t(1) from the target's measured cost profile on this backend
    (workbench.backend.profile; on the compiled backend it steps up past each static size), and D the
    drafting just done. `cut` keeps the n <= len(keep) that maximises E(n) / (r(n) + D), and nothing (a
    plain step) unless that beats 1 / (1 + D) by MARGIN.

    Drafting deeper than what gets kept is wasted, so `depth` lets a tree grow one level past the deepest
    node kept over the last RECENT steps (at least one level): the depth follows what pays. A cut to nothing
    tells the run's SizingLog why (workbench.methods.sizing).
    """

    POSITIONS = 16  # s_d kept for d = 1..POSITIONS; deeper nodes share the last
    PRIOR = 2.0  # pseudo-counts: calibrated until data arrive
    MARGIN = 0.02
    RECENT = 8

    def __init__(self, ratios: list[float], one_s: float, log: SizingLog | None = None) -> None:
        """ratios[k] = r(k) for k = 0..most; one_s = t(1) in seconds; log: where a cut to nothing says why."""
        self.ratios, self.one_s, self.log = ratios, one_s, log
        self.accepted = [0.0] * self.POSITIONS
        self.predicted = [0.0] * self.POSITIONS
        self.pending: list[tuple[int, float]] = []  # (depth, score) of each node of the last draft
        self.kept_depth: collections.deque[int] = collections.deque(maxlen=self.RECENT)  # deepest kept, per cut

    @classmethod
    def for_run(cls, env, most: int) -> "TreeBudget":
        """A budget for trees of at most `most` nodes, reading the run's target's cost profile on its backend
        (measured once per machine, cached)."""
        return cls(*env.costs.forward_ratios(env.target, env.backend, most), log=env.sizing)

    def depth(self, most: int) -> int:
        """How deep to draft this step: one level past the deepest node kept recently, at most `most`."""
        return min(most, 1 + max(self.kept_depth)) if self.kept_depth else most

    def scale(self, depth: int) -> float:
        d = min(depth, self.POSITIONS) - 1
        return (self.accepted[d] + self.PRIOR) / (self.predicted[d] + self.PRIOR)

    def cut(self, tree: CandidateTree, keep: list[int], draft_s: float) -> list[int]:
        """The best share of `keep` to verify, in creation order (the Draft's: any top n is a tree, so it
        is the draft as it stands); [] for a plain step."""
        ranked = sorted(keep, key=lambda n: -tree.score[n])[: len(self.ratios) - 1]
        draft_x = draft_s / self.one_s
        best, best_n, expected = (1.0 + self.MARGIN) / (1.0 + draft_x), 0, [1.0]
        for n, node in enumerate(ranked, start=1):
            expected.append(expected[-1] + min(1.0, self.scale(tree.depth[node]) * tree.score[node]))
            value = expected[n] / (self.ratios[n] + draft_x)
            if value > best:
                best, best_n = value, n
        if best_n == 0 and ranked and self.log is not None:
            self.log.decline(*tree_reason(self.ratios, expected, draft_x, self.MARGIN))
        kept = sorted(ranked[:best_n])
        self.pending = [(tree.depth[n], tree.score[n]) for n in kept]
        self.kept_depth.append(max((tree.depth[n] for n in kept), default=0))
        return kept

    def observe(self, draft: Draft | None, accepted: list[int]) -> None:
        """Learn from the verified draft (the one the last `cut` made) and which of its nodes were accepted."""
        if draft is None or len(draft) != len(self.pending):
            self.pending = []
            return
        reached = len(accepted)  # the accepted nodes are one path: depths 1..len(accepted)
        for depth, score in self.pending:
            self.predicted[min(depth, self.POSITIONS) - 1] += score
        for d in range(1, min(reached, self.POSITIONS) + 1):
            self.accepted[d - 1] += 1.0
        for d in range(self.POSITIONS + 1, reached + 1):
            self.accepted[-1] += 1.0
        self.pending = []


SIZING_PARAM = Param("sizing", "choice", "cost", "how many of the tree's nodes to verify: `cost` the count that "
                     "pays for its verification on this machine (expected accepted tokens per unit of cost, "
                     "learned during the run), `fixed` all of them", choices=("cost", "fixed"))


def tree_budget(drafter: Drafter, most: int) -> "TreeBudget | None":
    """The run's TreeBudget when the drafter's `sizing` is `cost`."""
    return TreeBudget.for_run(drafter.env, most) if drafter.params["sizing"] == "cost" else None


class TopKTreeDrafter(Drafter):
    """Shared set-up of the draft-model tree methods."""

    needs_draft_model = True
    tree = True

    def begin(self, prompt_ids: list[int]) -> None:
        self.runner = DraftModelRunner(self.env)

    @staticmethod
    def topk(logits: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        probs = logits.float().softmax(-1)  # (V,)
        vals, idx = torch.topk(probs, k)
        return idx.tolist(), vals.tolist()


@register
class TreeStatic(TopKTreeDrafter):
    name = "tree_static"
    label = "Static draft tree (Medusa-style choices)"
    family = "Draft model, tree"
    pays_when = ("verifying many tokens costs about what one does (a GPU) and the draft's top-ranked "
                 "alternatives are often right")
    description = "A fixed tree of draft top-k ranks, verified in one target pass with tree attention. Lossless."
    params = (
        Param("tree", "choice", "medusa16", "named tree shape", choices=tuple(NAMED_TREES)),
        Param("paths", "str", "", "custom tree as JSON paths over child ranks (overrides `tree`), e.g. [[0],[1],[0,0]]",
              check=lambda text: parse_paths(text) if text else None),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.paths = parse_paths(self.params["paths"]) if self.params["paths"] else NAMED_TREES[self.params["tree"]]

    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0:
            return None
        return grow_from_paths(DraftTreeSession(self.runner, ctx.tokens), self.paths, ctx.max_tokens, self.topk)


@register
class TreeDynamic(TopKTreeDrafter):
    name = "tree_dynamic"
    label = "Dynamic draft tree (EAGLE-2 style)"
    family = "Draft model, tree"
    pays_when = ("a static tree would, and the draft's confidence tracks what gets accepted; sizing=cost trims"
                 " the tree to what this machine verifies cheaply")
    description = ("Expands the most confident nodes by cumulative draft probability, level by level, then keeps "
                   "the best `total_tokens` nodes. Lossless.")
    params = (
        Param("depth", "int", 4, "levels to expand", 1, 16),
        Param("top_k", "int", 4, "children per expanded node, and nodes expanded per level", 1, 16),
        Param("total_tokens", "int", 16, "nodes kept for verification (with sizing=cost: at most)", 1, 128),
        SIZING_PARAM,
    )

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.budget = tree_budget(self, self.params["total_tokens"])

    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0:
            return None
        return grow_dynamic(DraftTreeSession(self.runner, ctx.tokens), min(self.params["depth"], ctx.max_tokens),
                            self.params["top_k"], self.params["total_tokens"], self.topk, self.budget)

    def observe(self, fb: StepFeedback) -> None:
        if self.budget is not None:
            self.budget.observe(fb.draft, fb.accepted)


@register
class OptTree(TopKTreeDrafter):
    name = "opt_tree"
    label = "OPT-Tree (max expected acceptance)"
    family = "Draft model, tree"
    pays_when = ("a wide verification is cheap (a GPU): it spends a node budget where the draft is likely "
                 "right")
    description = ("Best-first growth of the tree that maximises expected accepted length (sum of path "
                   "probabilities) for a node budget; stops early when nodes get unlikely. Lossless.")
    params = (
        Param("nodes", "int", 16, "node budget", 1, 128),
        Param("max_depth", "int", 8, "deepest level drafted", 1, 32),
        Param("width", "int", 4, "nodes expanded per draft forward (and children considered per node)", 1, 16),
        Param("threshold", "float", 0.0, "stop when the best candidate's path probability falls below this", 0.0, 1.0),
    )

    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0:
            return None
        width, budget = self.params["width"], self.params["nodes"]
        max_depth = min(self.params["max_depth"], ctx.max_tokens)
        session = DraftTreeSession(self.runner, ctx.tokens)
        tree = CandidateTree(session)
        heap: list[tuple[float, int, int, float]] = []  # (-value, token, parent, q)
        try:
            def push_children(par: int, logits: torch.Tensor, base: float) -> None:
                toks, probs = self.topk(logits, width)
                for t, q in zip(toks, probs):
                    heapq.heappush(heap, (-base * q, t, par, q))

            push_children(-1, session.root_logits, 1.0)
            value: list[float] = []  # path probability of each node
            while heap and len(tree.tokens) < budget:
                batch = []
                while heap and len(batch) < width and len(tree.tokens) < budget:
                    neg, t, par, q = heapq.heappop(heap)
                    if -neg < self.params["threshold"]:
                        heap.clear()
                        break
                    batch.append(tree.add(t, par, q))
                    value.append(-neg)
                expand = [n for n in batch if tree.depth[n] < max_depth]
                if expand and len(tree.tokens) < budget:
                    for node, logits in zip(expand, tree.expand(expand)):  # one draft forward over `expand`
                        push_children(node, logits, value[node])
            if not tree.tokens:
                return None
            return tree.draft(list(range(len(tree.tokens))))
        finally:
            session.close()


def _close_under_ancestors(parents: list[int], keep: list[int]) -> list[int]:
    """`keep` plus every ancestor of its nodes, sorted."""
    out = set()
    for n in keep:
        while n >= 0 and n not in out:
            out.add(n)
            n = parents[n]
    return sorted(out)
