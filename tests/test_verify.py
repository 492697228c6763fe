"""The shared verification rule, tested in isolation on synthetic p and q.

Each test draws many verdicts and compares the distribution of the first
committed token with the target's p (chi-square). The same harness must reject
a deliberately broken rule, so these tests can fail.
"""
import pytest
import torch

import workbench.verify as verify
from workbench.config import SamplingConfig
from workbench.sampling import logits_to_probs
from workbench.tree import Draft

from .stats import chi2_pvalue

V = 8
N = 6000


def _pq(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    return p, q


def _first_tokens(make_draft, p, seed=0):
    """Sample N verdicts; return the first committed token of each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N):
        draft = make_draft(g)
        probs = p.expand(len(draft) + 1, V)  # same p at every node: only the first level matters here
        v = verify.verify_stochastic(probs, draft, g)
        out.append(draft.tokens[v.accepted[0]] if v.accepted else v.bonus_token)
    return out


def _chain(q):
    def make(g):
        x = int(torch.multinomial(q, 1, generator=g))
        return Draft.chain([x], [float(q[x])], q[None])
    return make


def _iid_siblings(q, k=3):
    def make(g):
        xs = torch.multinomial(q, k, replacement=True, generator=g).tolist()
        return Draft(xs, [-1] * k, [float(q[x]) for x in xs], q.expand(k, V).clone())
    return make


def _without_replacement(q, k=3):
    def make(g):
        rows, xs, left = [], [], q.clone()
        for _ in range(k):
            dist = left / left.sum()
            x = int(torch.multinomial(dist, 1, generator=g))
            rows.append(dist)
            xs.append(x)
            left[x] = 0.0
        return Draft(xs, [-1] * k, [float(r[x]) for r, x in zip(rows, xs)], torch.stack(rows))
    return make


def _deterministic_topk(q, k=3):
    xs = torch.topk(q, k).indices.tolist()
    return lambda g: Draft(xs, [-1] * k)


MAKERS = {"chain": _chain, "iid_siblings": _iid_siblings, "without_replacement": _without_replacement,
          "deterministic_topk": _deterministic_topk}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_first_token_follows_target(kind):
    p, q = _pq(1)
    samples = _first_tokens(MAKERS[kind](q), p)
    assert chi2_pvalue(samples, dict(enumerate(p.tolist()))) > 1e-3


@pytest.mark.parametrize("kind", ["chain", "iid_siblings", "without_replacement"])
def test_broken_residual_is_detected(kind, monkeypatch):
    """Resampling from p instead of norm(max(p - q, 0)) after a rejection biases the output."""
    p, q = _pq(1)
    monkeypatch.setattr(verify, "residual", lambda p, q, x: p)
    samples = _first_tokens(MAKERS[kind](q), p)
    assert chi2_pvalue(samples, dict(enumerate(p.tolist()))) < 1e-6


def test_misreported_q_is_detected():
    """A drafter that reports the wrong q (here uniform) breaks exactness: the test must see it."""
    p, q = _pq(1)
    uniform = torch.full((V,), 1.0 / V)

    def make(g):
        x = int(torch.multinomial(q, 1, generator=g))
        return Draft.chain([x], [float(q[x])], uniform[None])

    assert chi2_pvalue(_first_tokens(make, p), dict(enumerate(p.tolist()))) < 1e-6


def test_greedy_walks_longest_matching_path():
    # target argmax per row: root->11, n0(11)->13, n3(13)->15, n5->7
    draft = Draft([11, 12, 14, 13, 9, 15], [-1, -1, 0, 0, 1, 3])
    best = {0: 11, 1: 13, 4: 15, 6: 7}
    logits = torch.zeros(7, 20)
    for row, tok in best.items():
        logits[row, tok] = 5.0
    v = verify.verify_greedy(logits, draft)
    assert v.accepted == [0, 3, 5] and v.bonus_token == 7


def test_greedy_rejects_first_mismatch():
    draft = Draft.chain([3, 4, 5])
    logits = torch.zeros(4, 10)
    logits[0, 3] = 1
    logits[1, 9] = 1  # target wants 9 after 3, draft said 4
    v = verify.verify_greedy(logits, draft)
    assert v.accepted == [0] and v.bonus_token == 9


def test_residual_of_deterministic_proposal_drops_the_token():
    p = torch.tensor([0.5, 0.3, 0.2])
    torch.testing.assert_close(verify.residual(p, None, 0), torch.tensor([0.0, 0.6, 0.4]))
    torch.testing.assert_close(verify.residual(p, torch.tensor([0.2, 0.6, 0.2]), 1),
                               torch.tensor([1.0, 0.0, 0.0]))


def test_warping_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    torch.testing.assert_close(logits_to_probs(logits, SamplingConfig(temperature=1.0, top_k=2)),
                               torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))
    torch.testing.assert_close(logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.7)),
                               torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))
    assert logits_to_probs(logits, SamplingConfig()).tolist() == [1.0, 0.0, 0.0, 0.0]
