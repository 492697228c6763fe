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

import heapq
import json

import torch

from ..config import ConfigError
from ..tree import Draft
from .base import DraftContext, Drafter, Param, register
from .draft_model import DraftModelRunner, DraftTreeSession

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
        self.slot: dict[int, int] = {-1: -1}  # node -> its index in the draft session, once expanded

    def add(self, token: int, parent: int, q: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
        self.q.append(q)
        return len(self.tokens) - 1

    def expand(self, nodes: list[int]) -> list[torch.Tensor]:
        """Draft logits (V,) after each of `nodes`: the distribution of its children."""
        for n in sorted(set(nodes) - self.slot.keys()):  # parents before children, as the session needs
            self.slot[n] = self.session.add(self.tokens[n], self.slot[self.parents[n]])
        fed = [self.slot[n] for n in nodes if n >= 0]
        rows = iter(self.session.feed(fed)) if fed else iter(())  # (len(fed), V)
        return [self.session.root_logits if n < 0 else next(rows) for n in nodes]

    def draft(self, keep: list[int]) -> Draft:
        keep = _close_under_ancestors(self.parents, keep)
        new_index = {old: new for new, old in enumerate(keep)}
        parents = [-1 if self.parents[i] < 0 else new_index[self.parents[i]] for i in keep]
        return Draft([self.tokens[i] for i in keep], parents, [self.q[i] for i in keep])


def grow_from_paths(session, paths: list[list[int]], max_tokens: int, topk) -> Draft | None:
    """Expand top-k along rank paths, one forward per level.

    session: a tree session (DraftTreeSession, or a head's: root_logits, add, feed, close), closed here;
    topk(logits, k) -> (tokens, probs) ranks a node's children.
    """
    tree = CandidateTree(session)
    node_of: dict[tuple[int, ...], int] = {(): -1}
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
        return tree.draft(list(range(len(tree.tokens)))) if tree.tokens else None
    finally:
        session.close()


def grow_dynamic(session, depth: int, top_k: int, total: int, topk) -> Draft | None:
    """EAGLE-2's expansion: level by level, expand the top_k frontier nodes by cumulative draft probability
    into top_k children each; keep the best `total` nodes. session/topk as in grow_from_paths."""
    tree = CandidateTree(session)
    score: list[float] = []  # cumulative draft probability of each node
    try:
        frontier = [-1]
        for _ in range(depth):
            children = []
            for par, lg in zip(frontier, tree.expand(frontier)):  # one draft forward over the frontier
                toks, probs = topk(lg, top_k)
                for t, q in zip(toks, probs):
                    children.append(tree.add(t, par, q))
                    score.append((1.0 if par < 0 else score[par]) * q)
            frontier = sorted(children, key=lambda n: -score[n])[:top_k]  # the nodes the next level expands
        keep = sorted(range(len(score)), key=lambda n: -score[n])[:total]
        return tree.draft(keep) if keep else None
    finally:
        session.close()


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
    description = ("Expands the most confident nodes by cumulative draft probability, level by level, then keeps "
                   "the best `total_tokens` nodes. Lossless.")
    params = (
        Param("depth", "int", 4, "levels to expand", 1, 16),
        Param("top_k", "int", 4, "children per expanded node, and nodes expanded per level", 1, 16),
        Param("total_tokens", "int", 16, "nodes kept for verification", 1, 128),
    )

    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0:
            return None
        return grow_dynamic(DraftTreeSession(self.runner, ctx.tokens), min(self.params["depth"], ctx.max_tokens),
                            self.params["top_k"], self.params["total_tokens"], self.topk)


@register
class OptTree(TopKTreeDrafter):
    name = "opt_tree"
    label = "OPT-Tree (max expected acceptance)"
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
