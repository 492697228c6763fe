"""The draft-model tree methods against their definitions, and what they feed the draft model.

tree_dynamic is recomputed step by step from plain (cache-free) forwards of the draft
model, following EAGLE-2's rule: expand the top_k frontier nodes by cumulative draft
probability into top_k children each, keep the best total_tokens nodes. Only the
expanded nodes may be fed to the draft model: top_k per level, not top_k^2.
"""
import pytest
import torch

from workbench.config import DecodeConfig
from workbench.engine import generate

from .helpers import FlatCosts
from workbench.methods.top_k_trees import NAMED_TREES

PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
NEW = 24


class FedNodes:
    """Counts the tokens a model sees in tree forwards (those given a 4D attention mask)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            self.n += kwargs["input_ids"].shape[1]


@pytest.fixture
def fed(tiny_other):
    counter = FedNodes(tiny_other.model)
    yield counter
    counter.handle.remove()


def _eagle2_reference(model, context, k, depth, total, max_tokens):
    """(tokens, parents, q) of EAGLE-2's tree, every node's children from a plain forward of its path."""
    tokens, parents, q, score = [], [], [], []

    def path(node):
        out = []
        while node >= 0:
            out.append(tokens[node])
            node = parents[node]
        return out[::-1]

    frontier = [-1]
    for _ in range(min(depth, max_tokens)):
        children = []
        for par in frontier:
            logits = model(input_ids=torch.tensor([context + path(par)])).logits[0, -1]
            vals, idx = torch.topk(logits.float().softmax(-1), k)
            for t, v in zip(idx.tolist(), vals.tolist()):
                tokens.append(t)
                parents.append(par)
                q.append(v)
                score.append((1.0 if par < 0 else score[par]) * v)
                children.append(len(tokens) - 1)
        frontier = sorted(children, key=lambda n: -score[n])[:k]
    keep = set()
    for n in sorted(range(len(score)), key=lambda n: -score[n])[:total]:
        while n >= 0 and n not in keep:
            keep.add(n)
            n = parents[n]
    keep = sorted(keep)
    new = {old: i for i, old in enumerate(keep)}
    return ([tokens[i] for i in keep], [-1 if parents[i] < 0 else new[parents[i]] for i in keep],
            [q[i] for i in keep])


def _decode_steps(out):
    """(context before the step, tokens the step could still draft, step) for every decode step."""
    context = list(PROMPT) + out.trace.steps[0].committed
    for st in out.trace.steps[1:]:
        yield list(context), NEW - (len(context) - len(PROMPT)) - 1, st
        context += st.committed


@pytest.mark.parametrize("k, depth, total", [(4, 4, 16), (3, 5, 10), (2, 3, 20)])
def test_tree_dynamic_is_eagle2_and_feeds_top_k_per_level(tiny, tiny_other, fed, k, depth, total):
    out = generate(tiny, "tree_dynamic", PROMPT, draft=tiny_other,
                   params={"top_k": k, "depth": depth, "total_tokens": total, "sizing": "fixed"},
                   decode=DecodeConfig(max_new_tokens=NEW))
    expected_fed = 0
    with torch.inference_mode():
        for context, max_tokens, st in _decode_steps(out):
            if max_tokens <= 0:
                assert not st.tokens
                continue
            tokens, parents, q = _eagle2_reference(tiny_other.model, context, k, depth, total, max_tokens)
            assert (st.tokens, st.parents) == (tokens, parents)
            assert st.q == pytest.approx(q, abs=1e-4)
            expected_fed += (min(depth, max_tokens) - 1) * k  # the frontier of every level but the last
    assert fed.n == expected_fed


def test_tree_static_feeds_only_nodes_with_children(tiny, tiny_other, fed):
    paths = NAMED_TREES["medusa16"]
    out = generate(tiny, "tree_static", PROMPT, draft=tiny_other, params={"tree": "medusa16"},
                   decode=DecodeConfig(max_new_tokens=NEW))
    expected_fed = 0
    for _, max_tokens, st in _decode_steps(out):
        kept = {tuple(p) for p in paths if len(p) <= max_tokens}
        assert len(st.tokens) == len(kept)
        expected_fed += len({p[:-1] for p in kept if len(p) > 1})  # inner nodes; the root needs no feed
    assert fed.n == expected_fed


# ---------------------------------------------------------------- tree sizing by cost (TreeBudget)

def _scored_tree():
    """A candidate tree with known path probabilities: 0.9 -> 0.72 -> 0.36, 0.9 -> 0.09, and 0.05, 0.02."""
    from workbench.methods.top_k_trees import CandidateTree

    tree = CandidateTree(session=None)  # nodes are only added: nothing is fed to a session
    a = tree.add(1, -1, 0.9)
    b = tree.add(2, a, 0.8)
    tree.add(3, b, 0.5)
    tree.add(4, a, 0.1)
    tree.add(5, -1, 0.05)
    tree.add(6, -1, 0.02)
    return tree


def _best_n(scores, ratios, margin):
    """Brute force: the n maximising (1 + sum of the n best scores) / r(n), 0 unless it beats 1 by the margin."""
    ranked = sorted(scores, reverse=True)
    values = [(1 + sum(ranked[:n])) / ratios[n] for n in range(len(ranked) + 1)]
    n = max(range(1, len(values)), key=lambda k: values[k])
    return n if values[n] > 1 + margin else 0


@pytest.mark.parametrize("ratios", [
    [1.0] * 7,                          # flat (a GPU): every node with a chance is worth verifying
    [1.0 + 0.15 * k for k in range(7)],  # a CPU's slope: the likely nodes only
    [1.0 + 0.95 * k for k in range(7)],  # nothing pays: a plain step
    [1.0, 1.05, 1.1, 1.6, 1.6, 1.6, 1.6],  # a step up past two nodes (a static graph's size)
])
def test_tree_budget_keeps_the_share_that_pays_for_its_verification(ratios):
    from workbench.methods.top_k_trees import TreeBudget

    tree = _scored_tree()
    budget = TreeBudget(ratios, one_s=1.0)
    kept = budget.cut(tree, list(range(6)), draft_s=0.0)
    n = _best_n(tree.score, ratios, TreeBudget.MARGIN)
    assert len(kept) == n
    assert sorted(tree.score[i] for i in kept) == sorted(tree.score, reverse=True)[:n][::-1]
    for i in kept:  # a tree: every kept node's parent is kept
        assert tree.parents[i] < 0 or tree.parents[i] in kept


def test_tree_budget_learns_how_deep_its_drafts_are_accepted():
    from workbench.methods.top_k_trees import TreeBudget
    from workbench.draft import Draft

    ratios = [1.0 + 0.1 * k for k in range(7)]
    tree = _scored_tree()
    budget = TreeBudget(ratios, one_s=1.0)
    first = budget.cut(tree, list(range(6)), draft_s=0.0)
    assert {tree.depth[i] for i in first} >= {1, 2, 3}  # trusting the draft: the likely path in full
    draft = tree.draft(first)
    for _ in range(30):  # the target takes the first token and never the second
        budget.pending = [(tree.depth[i], tree.score[i]) for i in sorted(first)]
        budget.observe(draft, [0])
    assert budget.scale(1) > 1.0 and budget.scale(2) < 0.1 and budget.scale(3) < 0.2
    later = budget.cut(tree, list(range(6)), draft_s=0.0)
    assert [tree.depth[i] for i in later] == [1]  # the node that keeps being accepted, nothing under it
    assert budget.depth(5) == 4  # a recent cut kept depth 3: drafting may go one deeper
    for _ in range(TreeBudget.RECENT):
        budget.cut(tree, list(range(6)), draft_s=0.0)
    assert budget.depth(5) == 2 and budget.depth(1) == 1  # only depth 1 kept lately: draft two levels


def test_tree_budget_counts_the_drafting_already_spent():
    """Drafting is paid either way; a slow draft makes a longer verification worth more than a plain step."""
    from workbench.methods.top_k_trees import TreeBudget

    ratios = [1.0 + 0.8 * k for k in range(7)]
    tree = _scored_tree()
    assert TreeBudget(ratios, one_s=1.0).cut(tree, list(range(6)), draft_s=0.0) == [0]
    assert len(TreeBudget(ratios, one_s=1.0).cut(tree, list(range(6)), draft_s=2.0)) == 2


@pytest.mark.parametrize("method, params", [("eagle", {}), ("medusa", {}), ("hydra", {}),
                                            ("tree_dynamic", {"depth": 3})])
def test_cost_sizing_verifies_fewer_nodes_where_they_cost_more(tiny, tiny_other, method, params):
    """The same trees, cut on a steep cost profile, kept whole on a flat one; lossless either way."""
    draft = tiny_other if method == "tree_dynamic" else None
    ref = generate(tiny, "autoregressive", PROMPT, decode=DecodeConfig(max_new_tokens=NEW))
    sizes = {}
    for name, verify_x in (("flat", 0.0), ("steep", 0.3)):
        out = generate(tiny, method, PROMPT, draft=draft, params=params, decode=DecodeConfig(max_new_tokens=NEW),
                       costs=FlatCosts(draft_scale=1.0, verify_x=verify_x))
        assert out.output_ids == ref.output_ids
        sizes[name] = [len(st.tokens) for st in out.trace.steps[1:]]
    fixed = generate(tiny, method, PROMPT, draft=draft, params={**params, "sizing": "fixed"},
                     decode=DecodeConfig(max_new_tokens=NEW))
    assert out.output_ids == fixed.output_ids
    assert max(sizes["flat"]) == max(len(st.tokens) for st in fixed.trace.steps[1:])
    assert sum(sizes["steep"]) < sum(sizes["flat"])
