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
from workbench.methods.trees import NAMED_TREES

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
                   params={"top_k": k, "depth": depth, "total_tokens": total},
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
