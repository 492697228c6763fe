"""Sequoia-style tree sizing (Chen et al. 2024): pick the tree from measured acceptance and cost.

Two measurements drive the choice:
- the *positional acceptance vector* p_r: how often the draft's rank-r child is
  the one the target accepts, learned online from every verified step (with a
  weak prior until data arrive);
- the *cost profile* t(n): seconds for one target forward over n new tokens
  (and the same for the draft model) on the run's backend, measured once per
  machine (workbench.backend.profile; `workbench profile` prints it).

The best tree of every size m is found by dynamic programming over the
acceptance vector, V(m) = max over child sizes s_r of sum_r p_r (1 + V(s_r - 1)),
and the size actually drafted maximises tokens per second:
    (1 + V(m)) / (t_target(m + 1) + sum over levels of t_draft(level width)).
When the empty tree (a plain step, 1 / t_target(1)) wins, the plan says why, and every
plain step tells the run (workbench.methods.sizing).
"""
from __future__ import annotations

from ..backend.profile import interpolate
from ..draft import Draft
from .base import DraftContext, Param, StepFeedback, register
from .draft_model import DraftTreeSession
from .sizing import verify_cost
from .top_k_trees import TopKTreeDrafter, grow_from_paths


PRIOR = (0.55, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01)  # rank-r acceptance before any data
PRIOR_WEIGHT = 8.0  # pseudo-visits of the prior


def best_trees(p: list[float], max_nodes: int) -> tuple[list[float], list[list[list[int]]]]:
    """For m = 0..max_nodes: expected accepted tokens V(m) of the best m-node tree, and its rank paths.

    H[i][j] = best value of a node's children of rank >= i holding j nodes in all:
        H[i][j] = max(0, max_s p_i (1 + V(s - 1)) + H[i + 1][j - s])   (children take contiguous ranks)
    and V(m) = H[0][m]. Filling j = 1, 2, ... in order keeps every V it reads final.
    """
    K = len(p)
    V = [0.0] * (max_nodes + 1)
    H = [[0.0] * (max_nodes + 1) for _ in range(K + 1)]  # row K: no ranks left
    pick = [[0] * (max_nodes + 1) for _ in range(K)]  # size of the rank-i child's subtree (0 = none)
    for j in range(1, max_nodes + 1):
        for i in range(K - 1, -1, -1):
            best, arg = 0.0, 0
            for s in range(1, j + 1):
                val = p[i] * (1 + V[s - 1]) + H[i + 1][j - s]
                if val > best:
                    best, arg = val, s
            H[i][j], pick[i][j] = best, arg
        V[j] = H[0][j]

    def shape(j: int, i: int, prefix: tuple[int, ...]) -> list[list[int]]:
        if i >= K or j <= 0 or pick[i][j] == 0:
            return []
        s = pick[i][j]
        node = prefix + (i,)
        return [list(node)] + shape(s - 1, 0, node) + shape(j - s, i + 1, prefix)

    return V, [shape(m, 0, ()) for m in range(max_nodes + 1)]


EXPLORE_NODES = 2


@register
class Sequoia(TopKTreeDrafter):
    name = "sequoia"
    label = "Sequoia-sized tree (hardware-aware)"
    family = "Draft model, tree"
    pays_when = ("some tree pays here: it plans the tree from the measured acceptance per rank and this "
                 "machine's verification cost, and takes plain steps when none does")
    description = ("Chooses the tree shape and size from the measured acceptance per child rank and the measured "
                   "cost of verifying n tokens on this hardware. Lossless.")
    params = (
        Param("max_nodes", "int", 24, "largest tree considered", 1, 63),
        Param("max_branch", "int", 4, "most children per node", 1, 8),
        Param("replan_every", "int", 8, "steps between re-planning the tree from new acceptance data", 1, 1000),
        Param("explore_every", "int", 16, "while the plan is the empty tree (plain decoding), draft a small tree "
              "every this many steps, so the acceptance estimate keeps learning (0 = never)", 0, 10000),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.target_cost = self.env.costs.profile(self.env.target, self.env.backend)
        self.draft_cost = self.env.costs.profile(self.env.draft, self.env.backend)
        K = self.params["max_branch"]
        self.hits = [PRIOR[r] * PRIOR_WEIGHT for r in range(K)]
        self.visits = [PRIOR_WEIGHT] * K
        self.steps = 0
        self._plan()

    def acceptance_vector(self) -> list[float]:
        return [h / v for h, v in zip(self.hits, self.visits)]

    def _plan(self) -> None:
        V, shapes = best_trees(self.acceptance_vector(), self.params["max_nodes"])
        best, best_m = 0.0, 0
        cost_x = [1.0]  # a step's cost in one-token target forwards, per tree size
        one = interpolate(self.target_cost, 1)
        for m in range(0, self.params["max_nodes"] + 1):
            widths: dict[int, int] = {}
            for path in shapes[m]:
                widths[len(path) - 1] = widths.get(len(path) - 1, 0) + 1
            # one draft forward per level, over the parents of that level's nodes (root level is free)
            draft_s = sum(interpolate(self.draft_cost, w) for d, w in widths.items() if d > 0) + \
                interpolate(self.draft_cost, 1)
            rate = (1 + V[m]) / (interpolate(self.target_cost, m + 1) + (draft_s if m else 0.0))
            if m:
                cost_x.append((interpolate(self.target_cost, m + 1) + draft_s) / one)
            if rate > best:
                best, best_m = rate, m
        self.plain_reason = self._why_plain(V, cost_x) if best_m == 0 else None
        self.paths = shapes[best_m]
        # the tree drafted now and then while the plan is empty: the best tree of EXPLORE_NODES nodes
        self.explore_paths = shapes[min(EXPLORE_NODES, self.params["max_nodes"])]

    def _why_plain(self, V: list[float], cost_x: list[float]) -> tuple[str, str]:
        """(kind, reason) of a plan to draft nothing: no m-node tree's 1 + V(m) tokens beat one token for its
        cost_x[m] one-token forwards (kind "cost" when not even 1 + m, every node accepted, would)."""
        ratios = [interpolate(self.target_cost, k + 1) / interpolate(self.target_cost, 1) for k in range(2)]
        head = f"{verify_cost(ratios)} and drafting a one-node tree costs {cost_x[1] - ratios[1]:.2f}x"
        if all(1 + m <= cost_x[m] for m in range(1, len(cost_x))):
            return "cost", f"{head}, so drafting cannot pay"
        m = max(range(1, len(cost_x)), key=lambda m: (1 + V[m]) / cost_x[m])
        return "acceptance", (f"{head}; at the acceptance learned so far the best {m}-node tree was expected to "
                              f"commit {1 + V[m]:.2f} tokens for {cost_x[m]:.1f}x the cost of one, which does not pay")

    def propose(self, ctx: DraftContext) -> Draft | None:
        """The planned tree (its size is the step's draft size in the Trace); now and then a small one."""
        paths = self.paths
        every = self.params["explore_every"]
        if not paths and every and self.steps % every == every - 1:
            paths = self.explore_paths
        if not paths and self.plain_reason is not None:
            self.env.sizing.decline(*self.plain_reason)
        if not paths or ctx.max_tokens <= 0:
            return None
        return grow_from_paths(DraftTreeSession(self.runner, ctx.tokens), paths, ctx.max_tokens, self.topk)

    def observe(self, fb: StepFeedback) -> None:
        d = fb.draft
        if d is not None:
            self._score(d, list(fb.accepted))
        self.steps += 1  # every step counts, drafted or not, so an empty plan is re-planned too
        if self.steps % self.params["replan_every"] == 0:
            self._plan()

    def _score(self, d: Draft, accepted: list[int]) -> None:
        """Walk the visited nodes: at each, its children were ranks 0..c-1; the accepted one (if any) scores."""
        node = -1
        while True:
            kids = d.children.get(node, [])
            nxt = accepted.pop(0) if accepted else None
            for r, c in enumerate(kids[: len(self.visits)]):
                self.visits[r] += 1
                if c == nxt:
                    self.hits[r] += 1
            if nxt is None:
                break
            node = nxt
