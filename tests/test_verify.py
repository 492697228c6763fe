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
from workbench.draft import Draft

from .stats import chi2_pvalue

V = 8
N = 6000


@pytest.fixture(params=["cpu", "accelerator"])
def host_reads(request, monkeypatch):
    """Run a test on both code paths: the CPU's (host reads are free) and an accelerator's (avoid them)."""
    if request.param == "accelerator":
        monkeypatch.setattr(verify, "_host_read_is_free", lambda t: False)
    return request.param


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
def test_first_token_follows_target(kind, host_reads):
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


def _two_level(kind, g):
    """Root -> two children -> two grandchildren each; every row of p differs, so a node judged
    against the wrong row of probs shows."""
    p = torch.softmax(torch.randn(7, V, generator=g) * 1.5, -1)  # rows: root, n0, n1, n00, n01, n10, n11
    q = torch.softmax(torch.randn(3, V, generator=g) * 1.5, -1)  # the draft's q at root, n0, n1
    p[0] = (p[0] + q[0]) / 2  # a root row the draft half agrees with: both children get accepted often
    return p, q


def _two_level_draft(kind, q, g):
    if kind == "deterministic_topk":
        top = [torch.topk(q[r], 2).indices.tolist() for r in range(3)]
        return Draft(top[0] + top[1] + top[2], [-1, -1, 0, 0, 1, 1])
    rows, xs = [], []
    for r in (0, 0, 1, 1, 2, 2):  # two i.i.d. children from each q row
        xs.append(int(torch.multinomial(q[r], 1, generator=g)))
        rows.append(q[r])
    return Draft(xs, [-1, -1, 0, 0, 1, 1], [float(w[x]) for w, x in zip(rows, xs)], torch.stack(rows))


@pytest.mark.parametrize("kind", ["iid_siblings", "deterministic_topk"])
def test_second_level_follows_the_accepted_nodes_row(kind, host_reads):
    """After node c is accepted, the next token is distributed as p's row c + 1 (each row differs)."""
    g = torch.Generator().manual_seed(3)
    p, q = _two_level(kind, g)
    second: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(N):
        draft = _two_level_draft(kind, q, g)
        v = verify.verify_stochastic(p, draft, g)
        if v.accepted:
            c = v.accepted[0]
            second[c].append(draft.tokens[v.accepted[1]] if len(v.accepted) > 1 else v.bonus_token)
    for c, samples in second.items():
        assert len(samples) > 150, (c, len(samples))
        assert chi2_pvalue(samples, dict(enumerate(p[c + 1].tolist()))) > 1e-3, c


def test_verdict_is_reproducible_and_reports_the_bonus_p():
    g = torch.Generator().manual_seed(5)
    p, q = _two_level("iid_siblings", g)
    draft = _two_level_draft("iid_siblings", q, g)
    runs = [verify.verify_stochastic(p, draft, torch.Generator().manual_seed(11)) for _ in range(2)]
    assert runs[0] == runs[1]
    v = runs[0]
    row = v.accepted[-1] + 1 if v.accepted else 0
    assert v.bonus_p == float(p[row, v.bonus_token])
    assert verify.node_target_probs(p, draft) == [float(p[par + 1, x]) for par, x in zip(draft.parents, draft.tokens)]


def _count_host_reads(monkeypatch):
    """Count the tensor -> Python reads (each one a device sync on a GPU)."""
    reads = [0]
    for name in ("tolist", "item", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads[0] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_a_chain_costs_two_host_reads_whatever_its_length(monkeypatch):
    """On an accelerator p(x), q(x) and the uniforms come back in one read, the final token and its p in
    another."""
    monkeypatch.setattr(verify, "_host_read_is_free", lambda t: False)
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(9, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(8, V, generator=g) * 1.5, -1)
    drafts = [Draft.chain(torch.multinomial(q, 1, generator=g)[:, 0].tolist(), q_dist=q) for _ in range(50)]
    drafts += [Draft.chain(torch.topk(q, 1).indices[:, 0].tolist()) for _ in range(50)]  # one-hot q
    reads = _count_host_reads(monkeypatch)
    lengths = set()
    for draft in drafts:
        before = reads[0]
        v = verify.verify_stochastic(p, draft, g)
        assert reads[0] - before == 2
        lengths.add(len(v.accepted))
    assert len(lengths) > 2  # rejections at several depths, and the count never changed


def test_a_tree_reads_once_more_per_retried_sibling(monkeypatch):
    monkeypatch.setattr(verify, "_host_read_is_free", lambda t: False)
    g = torch.Generator().manual_seed(4)
    p, q = _two_level("deterministic_topk", g)
    draft = _two_level_draft("deterministic_topk", q, g)
    reads = _count_host_reads(monkeypatch)
    for _ in range(200):
        before = reads[0]
        v = verify.verify_stochastic(p, draft, g)
        path = [-1] + v.accepted
        # a sibling tried after a rejection reads the residual at its token: j reads before child j is
        # accepted, and the last node reached rejected all its children before the bonus token
        retried = sum(draft.children[node].index(nxt) for node, nxt in zip(path, path[1:]))
        retried += max(len(draft.children[path[-1]]) - 1, 0)
        assert reads[0] - before == 2 + retried


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


def test_residual_of_deterministic_proposal_drops_the_token(host_reads):
    p = torch.tensor([0.5, 0.3, 0.2])
    torch.testing.assert_close(verify.residual(p, None, 0), torch.tensor([0.0, 0.6, 0.4]))
    torch.testing.assert_close(verify.residual(p, torch.tensor([0.2, 0.6, 0.2]), 1),
                               torch.tensor([1.0, 0.0, 0.0]))
    # nothing left to correct (p == q, or p one-hot at x): keep p
    assert torch.equal(verify.residual(p, p.clone(), 1), p)
    assert torch.equal(verify.residual(torch.tensor([0.0, 1.0, 0.0]), None, 1), torch.tensor([0.0, 1.0, 0.0]))


def test_warping_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    torch.testing.assert_close(logits_to_probs(logits, SamplingConfig(temperature=1.0, top_k=2)),
                               torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))
    torch.testing.assert_close(logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.7)),
                               torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]))
    assert logits_to_probs(logits, SamplingConfig()).tolist() == [1.0, 0.0, 0.0, 0.0]
