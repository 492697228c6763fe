"""Every lossless method, through the one decode loop, against plain decoding.

Greedy: token-identical to `autoregressive` on the same backend. Sampling: the
joint distribution of the first new tokens equals the target's (chi-square),
which fails when the acceptance rule is broken. Both run under every backend
(eager, compiled). Methods come from the registry, so a newly registered method
is tested without editing this file.
"""

import dataclasses

import pytest
import torch

import workbench.verify as verify
from workbench.config import ConfigError, DecodeConfig, SamplingConfig
from workbench.engine import generate
from workbench.methods import list_methods

from .helpers import BACKEND_PARAMS, PROMPTS, FlatCosts
from .stats import chi2_pvalue, exact_joint, oracle_probs

LOSSLESS = [m for m in list_methods() if m.lossless and m.name != "autoregressive"]


def _drafts_for(method, request):
    if method.needs_draft_model:
        return [request.getfixturevalue("tiny_other"), request.getfixturevalue("tiny_bf16")]
    return [None]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("method", LOSSLESS, ids=lambda m: m.name)
def test_greedy_token_identical(method, backend, tiny, request):
    for draft in _drafts_for(method, request):
        for prompt in PROMPTS:
            ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=48), backend=backend)
            out = generate(tiny, method.name, prompt, draft=draft, decode=DecodeConfig(max_new_tokens=48),
                           backend=backend)
            assert out.output_ids == ref.output_ids, (method.name, getattr(draft, "spec", None), prompt[:4])
            assert out.summary.new_tokens == 48


# Hardware where verifying n tokens costs what one does and drafting is cheap (a GPU's shape):
# the case in which every drafting method should draft, cost-aware ones (sequoia) included.
FLAT_VERIFY_COST = FlatCosts()


@pytest.mark.parametrize("method", LOSSLESS, ids=lambda m: m.name)
def test_every_lossless_method_actually_drafts(method, tiny, request):
    """A method that never drafts passes the identity tests vacuously; this one it fails.

    The case is built to be draftable: a repeating prompt (n-gram drafters find matches), an
    agreeing and a disagreeing draft model, flat verification cost. Every method must commit
    more than one token per target forward somewhere (tau > 1); tree methods must also accept a
    node that is not its parent's first child at least once (a real branch, not a chain).
    """
    taus, branch_hits = [], 0
    for draft in _drafts_for(method, request):
        for prompt in PROMPTS:
            out = generate(tiny, method.name, prompt, draft=draft, decode=DecodeConfig(max_new_tokens=48),
                           costs=FLAT_VERIFY_COST)
            taus.append(out.summary.mean_accepted_tokens)
            for st in out.trace.steps:
                for node in st.accepted:
                    siblings = [i for i, par in enumerate(st.parents) if par == st.parents[node]]
                    branch_hits += node != siblings[0]
    assert max(taus) > 1.0, (method.name, taus)
    if method.tree:
        assert branch_hits > 0, f"{method.name} never accepted a non-first child"


def test_speculative_with_good_draft_accepts_several_tokens(tiny, tiny_bf16):
    out = generate(tiny, "speculative", PROMPTS[0], draft=tiny_bf16, params={"gamma": 4},
                   decode=DecodeConfig(max_new_tokens=64))
    s = out.summary
    assert s.mean_accepted_tokens > 2.0
    assert s.target_forward_passes < 64
    assert s.acceptance_by_position[0] > 0.5


def test_speculative_gamma_by_cost_follows_the_machine(tiny, tiny_bf16):
    """gamma=0 picks γ from measured costs and the acceptance so far: a draft that costs what
    the target does is left alone (plain steps, but for a rare one-token probe); a cheap one with flat
    verification drafts deeper than the fixed default of 4; a draft that is cheap but verifying is steep
    drafts short chains. Token-identical to plain decoding every time."""
    ref = generate(tiny, "autoregressive", PROMPTS[0], decode=DecodeConfig(max_new_tokens=64)).output_ids
    depth = {}
    for name, draft_c, verify_x in [("slow draft", 1.0, 0.1), ("flat", 0.02, 0.0), ("steep", 0.02, 0.5)]:
        out = generate(tiny, "speculative", PROMPTS[0], draft=tiny_bf16, params={"gamma": 0},
                       decode=DecodeConfig(max_new_tokens=64), costs=FlatCosts(draft_scale=draft_c, verify_x=verify_x))
        assert out.output_ids == ref, name
        steps = out.trace.steps[1:]
        depth[name] = max(s.draft_depth for s in steps)
        drafting = sum(1 for s in steps if s.tokens)
        if name == "slow draft":
            assert depth[name] <= 1 and drafting <= len(steps) // 8, (drafting, len(steps))
    assert depth["flat"] > 4 and depth["steep"] < depth["flat"], depth


def test_trace_accounts_for_every_token(tiny, tiny_other):
    out = generate(tiny, "speculative", PROMPTS[0], draft=tiny_other, params={"gamma": 3},
                   decode=DecodeConfig(max_new_tokens=30))
    tr = out.trace
    assert tr.steps[0].kind == "prefill" and len(tr.steps[0].committed) == 1
    assert sum(len(s.committed) for s in tr.steps) == 30 == len(out.output_ids)
    for s in tr.steps[1:]:
        assert len(s.tokens) == len(s.q) == len(s.p) <= 3
        assert s.committed[: len(s.accepted)] == [s.tokens[i] for i in s.accepted][: len(s.committed)]
        assert s.draft_s >= 0 and s.verify_s > 0 and s.total_s >= s.draft_s + s.verify_s - 1e-6
    origins = tr.token_origins()
    assert [o["token"] for o in origins] == out.output_ids
    assert {o["origin"] for o in origins} <= {"draft", "target"}


def test_eos_stops_and_is_kept(tiny):
    ref = generate(tiny, "autoregressive", PROMPTS[0], decode=DecodeConfig(max_new_tokens=20))
    eos_tok = ref.output_ids[5]
    out = generate(tiny, "prompt_lookup", PROMPTS[0], decode=DecodeConfig(max_new_tokens=20, extra_eos_ids=(eos_tok,)))
    first = ref.output_ids.index(eos_tok)
    assert out.output_ids == ref.output_ids[: first + 1]
    assert out.trace.stop_reason == "eos"


def test_empty_prompt_and_bad_params(tiny):
    with pytest.raises(ConfigError):
        generate(tiny, "autoregressive", [])
    with pytest.raises(ConfigError):
        generate(tiny, "speculative", [1, 2, 3])  # needs a draft model
    with pytest.raises(ConfigError):
        generate(tiny, "prompt_lookup", [1, 2, 3], params={"nope": 1})
    with pytest.raises(ConfigError, match="min_ngram"):  # would never draft
        generate(tiny, "prompt_lookup", [1, 2, 3], params={"min_ngram": 3, "max_ngram": 2})
    with pytest.raises(ConfigError):
        generate(tiny, "nope", [1, 2, 3])
    with pytest.raises(ConfigError):
        DecodeConfig(max_new_tokens=0)


# ---------------------------------------------------------------- sampling

SAMPLING = SamplingConfig(temperature=1.0, top_k=2, top_p=0.9)
N_RUNS = 600
DEPTH = 5  # new tokens per sampled run: the first decode step may draft up to DEPTH - 2 = 3 deep


def _sample_joint(tiny, method, draft, prompt, params=None, n=N_RUNS, depths=None, backend="eager"):
    """n seeded runs of DEPTH tokens; appends each run's deepest draft to `depths` when given."""
    out = []
    for seed in range(n):
        res = generate(tiny, method, prompt, draft=draft, params=params,
                       sampling=dataclasses.replace(SAMPLING, seed=seed),
                       decode=DecodeConfig(max_new_tokens=DEPTH, trace=False), backend=backend, costs=FLAT_VERIFY_COST)
        out.append(tuple(res.output_ids))
        if depths is not None:
            depths.append(max((s.draft_depth for s in res.trace.steps), default=0))
    return out


@pytest.fixture(scope="module")
def sampling_prompt(tiny):
    """Every byte once (so n-gram drafters always find a match), rotated so that the target's
    two candidate first tokens are as balanced as possible: then a wrong rule shows clearly."""
    best = None
    with torch.inference_mode():
        for k in range(0, 256, 4):
            prompt = list(range(k, 256)) + list(range(k))
            probs = oracle_probs(tiny.model(input_ids=torch.tensor([prompt])).logits[0, -1], SAMPLING)
            balance = min(probs.values()) if len(probs) > 1 else 0.0
            if best is None or balance > best[0]:
                best = (balance, prompt)
    return best[1]


@pytest.fixture(scope="module")
def sharp_draft(tiny):
    """The target with a sharpened output layer: same candidate tokens, clearly different probabilities.

    Its q overlaps the target's p but differs from it, so rejections are frequent and
    the residual distribution decides the outcome: the case a broken rule gets wrong.
    """
    import copy
    import dataclasses

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return dataclasses.replace(tiny, model=model, spec="tiny-random:sharpened")


@pytest.mark.slow  # N_RUNS sampled runs per method
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("method", LOSSLESS, ids=lambda m: m.name)
def test_sampling_preserves_target_distribution(method, backend, tiny, sharp_draft, sampling_prompt):
    draft = sharp_draft if method.needs_draft_model else None
    expected = exact_joint(tiny.model, sampling_prompt, SAMPLING, DEPTH, eos=tiny.eos_token_ids)
    depths: list[int] = []
    samples = _sample_joint(tiny, method.name, draft, sampling_prompt, depths=depths, backend=backend)
    assert chi2_pvalue(samples, expected) > 1e-3
    assert max(depths) >= 2, f"{method.name} drafted at most {max(depths)} deep: the test would miss deep-draft bugs"


@pytest.mark.slow
def test_sampling_test_detects_a_broken_rule(tiny, sharp_draft, sampling_prompt, monkeypatch):
    """The same statistical test fails when rejected tokens are resampled from p instead of the residual."""
    monkeypatch.setattr(verify, "residual", lambda p, q, x: p)
    expected = exact_joint(tiny.model, sampling_prompt, SAMPLING, DEPTH, eos=tiny.eos_token_ids)
    samples = _sample_joint(tiny, "speculative", sharp_draft, sampling_prompt, params={"gamma": 2}, n=1000)
    assert chi2_pvalue(samples, expected) < 1e-4


def test_sampling_is_reproducible_with_seed(tiny, tiny_other):
    cfg = SamplingConfig(temperature=0.8, top_p=0.9, seed=7)
    a = generate(tiny, "speculative", PROMPTS[0], draft=tiny_other, sampling=cfg, decode=DecodeConfig(max_new_tokens=20))
    b = generate(tiny, "speculative", PROMPTS[0], draft=tiny_other, sampling=cfg, decode=DecodeConfig(max_new_tokens=20))
    assert a.output_ids == b.output_ids
