"""Drafting without a draft model: sam, aded, jacobi, lookahead, layer_skip.

Identity under greedy and the target's distribution under sampling are the
registry-driven tests of tests/test_engine.py. Here: each method is shown to
actually draft on a case built for it, the suffix automaton against brute
force, the tri-gram table's updates, the Jacobi/lookahead bookkeeping, the
layer-skipping view and its "draft nothing" decision, and sam's history corpus
through the run store.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from workbench.config import ConfigError, DecodeConfig, SamplingConfig
from workbench.engine import generate
from workbench.methods import get_method, resolve_params
from workbench.methods.aded import NGramTable
from workbench.methods.base import DraftContext, DrafterEnv, StepFeedback
from workbench.methods.jacobi import Jacobi
from workbench.methods.layer_skip import choose_skip, parse_skip, replay, skip_view
from workbench.methods.lookahead import Lookahead, NGramPool
from workbench.methods.model_free import DraftGate
from workbench.methods.suffix_automaton import Matcher, SuffixAutomaton, build_corpus

from .helpers import FlatCosts

TEXT_PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]  # "Hello, world"


@pytest.fixture(scope="module")
def one_token_runs(tiny):
    """Greedy continuations of every one-token prompt [t] * 24 (the tiny model repeats itself on some)."""
    decode = DecodeConfig(max_new_tokens=24, trace=False)
    return {t: generate(tiny, "autoregressive", [t] * 24, decode=decode).output_ids for t in range(256)}


@pytest.fixture(scope="module")
def repetitive_prompt(tiny, one_token_runs):
    """The prompt whose 64-token continuation has the fewest distinct tokens (most do not repeat at all)."""
    short = sorted(one_token_runs, key=lambda t: len(set(one_token_runs[t])))[:8]
    long = {t: generate(tiny, "autoregressive", [t] * 24, decode=DecodeConfig(max_new_tokens=64, trace=False))
            .output_ids for t in short}
    t = min(long, key=lambda t: len(set(long[t])))
    assert len(set(long[t])) <= 2, "the tiny model has no repetitive continuation: the tests need one"
    return [t] * 24


# ---------------------------------------------------------------- each method drafts where it should

@pytest.mark.parametrize("method,params", [
    ("sam", {}), ("sam", {"branches": 2}), ("aded", {}), ("aded", {"branches": 2}), ("jacobi", {}),
    ("lookahead", {}),
])
def test_drafts_on_a_repetitive_continuation(tiny, repetitive_prompt, method, params):
    ref = generate(tiny, "autoregressive", repetitive_prompt, decode=DecodeConfig(max_new_tokens=64))
    out = generate(tiny, method, repetitive_prompt, params=params, decode=DecodeConfig(max_new_tokens=64),
                   costs=FlatCosts())  # lookahead sizes its tree from the costs
    s = out.summary
    assert out.output_ids == ref.output_ids
    assert s.drafted_tokens > 0 and s.mean_accepted_draft_tokens > 0
    assert s.mean_accepted_tokens > (2.0 if method in ("sam", "aded") else 1.0), (method, s.mean_accepted_tokens)


def test_layer_skip_with_an_explicit_skip_list_drafts_and_is_identical(tiny):
    ref = generate(tiny, "autoregressive", TEXT_PROMPT, decode=DecodeConfig(max_new_tokens=48))
    out = generate(tiny, "layer_skip", TEXT_PROMPT, params={"skip": "1", "threshold": 0.0},
                   decode=DecodeConfig(max_new_tokens=48))
    assert out.output_ids == ref.output_ids
    assert out.summary.drafted_tokens > 0 and out.summary.mean_accepted_tokens > 1.0


def test_sam_history_corpus_copies_an_earlier_run(tiny):
    from workbench import api

    first = api.run("sam", "Hello, world", target="tiny-random", chat=False, max_new_tokens=64)
    alone = first.summary.mean_accepted_tokens
    second = api.run("sam", "Hello, world", target="tiny-random", chat=False, max_new_tokens=64,
                     params={"corpus": "history"})
    assert second.output_ids == first.output_ids
    assert second.summary.mean_accepted_tokens >= 3.0 > alone


def test_sam_file_corpus(tiny, tmp_path, one_token_runs):
    from workbench.methods.sam import _read_corpus_file

    (tmp_path / "c.jsonl").write_text('{"text": "abcabc"}\n{"turns": ["xy", "z"]}\nnot json\n"plain"\n')
    docs = _read_corpus_file(tmp_path / "c.jsonl", tiny.tokenizer)
    assert docs == [list(b"abcabc"), list(b"xy"), list(b"z"), list(b"plain")]
    # a prompt whose continuation repeats an ASCII token it does not contain: the context alone has no
    # match at the first decode step, a corpus holding that text does
    t, u = next((t, run[0]) for t, run in one_token_runs.items() if set(run) == {run[0]} and run[0] < 128
                and run[0] != t)
    (tmp_path / "c.txt").write_text(chr(u) * 40)
    prompt = [t] * 24
    plain = generate(tiny, "sam", prompt, decode=DecodeConfig(max_new_tokens=24))
    out = generate(tiny, "sam", prompt, params={"corpus": str(tmp_path / "c.txt")},
                   decode=DecodeConfig(max_new_tokens=24))
    assert out.output_ids == plain.output_ids == one_token_runs[t]
    assert not plain.trace.steps[1].tokens
    assert out.trace.steps[1].tokens and out.trace.steps[1].accepted


def test_sam_corpus_parameter_is_checked(tmp_path):
    for bad in (str(tmp_path / "missing.txt"), str(tmp_path)):
        with pytest.raises(ConfigError):
            resolve_params("sam", {"corpus": bad})
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(ConfigError):
        resolve_params("sam", {"corpus": str(tmp_path / "x.bin")})
    assert resolve_params("sam", {"corpus": "history"})["corpus"] == "history"


# ---------------------------------------------------------------- the suffix automaton

def _brute_earlier_match(text: list[int]) -> int:
    """Length of the longest suffix of text that also ends before its last position."""
    n = len(text)
    for length in range(n - 1, 0, -1):
        suffix = text[n - length:]
        if any(text[e - length + 1:e + 1] == suffix for e in range(length - 1, n - 1)):
            return length
    return 0


def test_suffix_automaton_matches_brute_force():
    rng = random.Random(0)
    for alphabet in (2, 3, 5):
        text: list[int] = []
        sam = SuffixAutomaton()
        for _ in range(120):
            tok = rng.randrange(alphabet)
            text.append(tok)
            sam.extend(tok)
            length, end = sam.earlier_match()
            assert length == _brute_earlier_match(text)
            if length:  # the first earlier occurrence of the suffix
                suffix = text[len(text) - length:]
                first = min(e for e in range(length - 1, len(text) - 1) if text[e - length + 1:e + 1] == suffix)
                assert end == first


def test_continuation_extends_a_repeating_match():
    sam = SuffixAutomaton([7, 1, 2, 3, 1, 2, 3, 1, 2])
    length, end = sam.earlier_match()
    assert length == 5 and sam.continuation(end, 7) == [3, 1, 2, 3, 1, 2, 3]


def test_corpus_matcher_and_frequent_walk_match_brute_force():
    rng = random.Random(1)
    docs = [[rng.randrange(3) for _ in range(rng.randrange(5, 40))] for _ in range(6)]
    corpus = build_corpus(docs)
    matcher = Matcher(corpus)
    text = []
    for _ in range(200):
        tok = rng.randrange(3)
        text.append(tok)
        matcher.feed(tok)
        best = 0
        for length in range(1, len(text) + 1):
            suffix = text[len(text) - length:]
            if any(d[i:i + length] == suffix for d in docs for i in range(len(d) - length + 1)):
                best = length
            else:
                break
        assert matcher.length == best
        if best:  # the walk's first token is the most frequent follower of the match
            suffix = text[len(text) - best:]
            follow: dict[int, int] = {}
            for d in docs:
                for i in range(len(d) - best):
                    if d[i:i + best] == suffix:
                        follow[d[i + best]] = follow.get(d[i + best], 0) + 1
            walk = corpus.frequent_walk(matcher.state, 1)
            if follow:
                assert walk and follow[walk[0]] == max(follow.values())
            else:
                assert walk == []


# ---------------------------------------------------------------- the cost-aware gate

CPU_RATIOS = [1.0 + 0.12 * k for k in range(17)]  # r(k): verifying k drafted tokens, in one-token forwards


def test_gate_stops_drafting_what_is_never_accepted_and_probes_now_and_then():
    gate = DraftGate(CPU_RATIOS, 16)
    assert gate.length("miss", 10) >= 1  # the prior: worth a try
    lengths = []
    for _ in range(200):
        k = gate.length("miss", 10)
        lengths.append(k)
        gate.update("miss", k, 0)
    assert lengths[-DraftGate.EXPLORE:].count(0) == DraftGate.EXPLORE - 1  # a plain step, bar one probe
    assert max(lengths[-DraftGate.EXPLORE:]) == 1
    assert gate.expected("miss", 1)[1] < 1.1  # a_1 learned close to 0


def test_gate_drafts_long_what_is_always_accepted_and_keeps_kinds_apart():
    gate = DraftGate(CPU_RATIOS, 16)
    for _ in range(50):
        gate.update("hit", gate.length("hit", 12), 12)
        gate.update("miss", max(1, gate.length("miss", 12)), 0)
    assert gate.length("hit", 12) == 12
    assert gate.length("miss", 12) == 0
    # copy drafters: the first token is the gamble, the rest follows; per-position rates find the long draft
    gate = DraftGate(CPU_RATIOS, 16)
    for i in range(400):
        gate.update("run", gate.length("run", 8) or 1, 8 if i % 2 else 0)
    e = gate.expected("run", 8)
    assert 0.4 < e[1] - e[0] < 0.6 and e[2] - e[1] > 0.9 * (e[1] - e[0])
    assert gate.length("run", 8) == 8  # 1 + 0.5 * 8 = 5 tokens for 1.96 forwards beats any shorter draft


def test_gate_off_or_on_flat_costs_drafts_everything_offered():
    assert DraftGate(None, 10).length("x", 7) == 7
    flat = DraftGate([1.0] * 11, 10)
    for _ in range(20):
        flat.update("x", 7, 1)
    assert flat.length("x", 7) == 7 and flat.length("x", 30) == 10


@pytest.mark.parametrize("method", ["prompt_lookup", "sam", "aded", "jacobi"])
def test_cost_aware_drafting_drafts_less_on_steep_costs_and_stays_identical(tiny, method):
    """On a CPU-shaped cost curve the gate cuts drafts that miss; output is unchanged either way."""
    steep = FlatCosts(verify_x=0.5)
    decode = DecodeConfig(max_new_tokens=48)
    ref = generate(tiny, "autoregressive", TEXT_PROMPT, decode=decode)
    runs = {aware: generate(tiny, method, TEXT_PROMPT, params={"cost_aware": aware}, decode=decode, costs=steep)
            for aware in (False, True)}
    for out in runs.values():
        assert out.output_ids == ref.output_ids
    off, on = runs[False].summary, runs[True].summary
    assert off.drafted_tokens > 0
    assert on.drafted_tokens < off.drafted_tokens
    assert on.drafted_tokens - on.accepted_draft_tokens < off.drafted_tokens - off.accepted_draft_tokens


# ---------------------------------------------------------------- aded's table

def test_trigram_table_counts_and_ranks():
    table = NGramTable()
    tokens = [1, 2, 3, 1, 2, 3, 1, 2, 4]
    table.update(tokens, 0)
    assert table.tri[(1, 2)] == {3: 2, 4: 1} and table.tri_total[(1, 2)] == 3
    assert table.bi[2] == {3: 2, 4: 1} and table.bi[1] == {2: 3}
    assert table.ranked(1, 2, 2, backoff=0.5) == [(3, 2 / 4), (4, 1 / 4)]
    assert table.ranked(9, 1, 1, backoff=0.5) == [(2, 0.5 * 3 / 4)]  # unseen tri-gram: the bi-gram, discounted
    assert table.ranked(9, 1, 1, backoff=0.0) == []
    # incremental updates count each transition once: the same table as one pass over everything
    inc = NGramTable()
    inc.update(tokens[:4], 0)
    inc.update(tokens, 4)
    assert inc.tri == table.tri and inc.bi == table.bi


def test_aded_learns_from_committed_tokens(tiny):
    from workbench.methods.aded import ADED

    d = ADED(None, **resolve_params("aded", {"threshold": 0.0, "cost_aware": False}))
    d.begin([5, 6, 7])
    assert d.propose(DraftContext(tokens=[5, 6, 7], n_prompt=3, max_tokens=8, step=1)) is None  # (6, 7) unseen
    ctx = [5, 6, 7, 5, 6, 7, 5, 6]
    draft = d.propose(DraftContext(tokens=ctx, n_prompt=3, max_tokens=8, step=2))
    assert draft.tokens[:3] == [7, 5, 6]


# ---------------------------------------------------------------- jacobi and lookahead bookkeeping

@pytest.mark.parametrize("adaptive", [False, True])
def test_jacobi_next_window_is_the_targets_predictions(adaptive):
    d = Jacobi(None, **resolve_params("jacobi", {"window": 4, "init": "repeat", "adaptive": adaptive,
                                                   "cost_aware": False}))
    d.begin([1, 2, 3])
    draft = d.propose(DraftContext(tokens=[1, 2, 3], n_prompt=3, max_tokens=10, step=1))
    assert draft.tokens == [3, 3, 3, 3] and draft.is_chain
    # rows: root, then each guess; the first guess was right (accepted), the bonus is row 1
    d.observe_target([3, 8, 9, 10, 11], draft)
    d.observe(StepFeedback(draft=draft, accepted=[0], committed=[3, 8], tokens=[1, 2, 3, 3, 8]))
    assert d.guess == [9, 10, 11]  # the rows after the committed ones
    nxt = d.propose(DraftContext(tokens=[1, 2, 3, 3, 8], n_prompt=3, max_tokens=10, step=2))
    # then the last guess repeated; adaptive: after a miss only accepted + 1 = 2 guesses are verified
    assert nxt.tokens == ([9, 10] if adaptive else [9, 10, 11, 11])
    d.observe_target([9, 10, 12], nxt)
    d.observe(StepFeedback(draft=nxt, accepted=[0, 1], committed=[9, 10, 12], tokens=[1, 2, 3, 3, 8, 9, 10, 12]))
    if adaptive:  # the unverified tail kept its guess; a full accept doubles the verified part
        assert d.guess == [11] and d.budget.cap == 4


def test_lookahead_window_is_in_the_tree_and_fills_the_pool(tiny, repetitive_prompt):
    env = DrafterEnv(target=tiny, draft=None, sampling=SamplingConfig(), generator=None)
    d = Lookahead(env, **resolve_params("lookahead", {"window": 3, "ngram": 3, "guesses": 2,
                                                       "context_ngrams": False, "max_cost": 0}))
    d.begin(list(repetitive_prompt))
    seen_full = False
    out = generate(tiny, "autoregressive", repetitive_prompt, decode=DecodeConfig(max_new_tokens=12))
    ctx = list(repetitive_prompt) + out.output_ids[:1]
    for step in range(1, 6):
        draft = d.propose(DraftContext(tokens=ctx, n_prompt=len(repetitive_prompt), max_tokens=20, step=step))
        depths = draft.depths
        for lvl, row in enumerate(d.nodes):  # every window slot is a node, at the depth of its position
            assert [depths[n] for n in row] == list(range(1, len(row) + 1))
            for j, node in enumerate(row):
                assert draft.tokens[node] == d.levels[lvl][j]
        seen_full |= len(d.nodes) == 2
        with torch.inference_mode():
            logits = tiny.model(input_ids=torch.tensor([ctx + draft.tokens])).logits[0]  # no tree mask: any rows do
        rows = logits[len(ctx) - 1:].argmax(-1).tolist()
        d.observe_target(rows, draft)
        ctx = ctx + [rows[0]]
        d.observe(StepFeedback(draft=draft, accepted=[], committed=[rows[0]], tokens=ctx))
    assert seen_full and d.pool.grams and all(len(g) == 2 for row in d.pool.grams.values() for g in row)


def test_ngram_pool_keeps_the_most_recent():
    pool = NGramPool(per_key=2)
    for gram in [(1, 2, 3), (1, 4, 5), (1, 2, 3), (1, 6, 7)]:
        pool.add(gram)
    assert pool.candidates(1, 5) == [(6, 7), (2, 3)]


# ---------------------------------------------------------------- layer skipping

def test_skip_view_shares_weights_and_leaves_the_model_alone(tiny):
    view = skip_view(tiny.model, (1,))
    assert len(view.model.layers) == 1 and len(tiny.model.model.layers) == 2
    assert view.model.layers[0] is tiny.model.model.layers[0]
    assert view.lm_head.weight.data_ptr() == tiny.model.lm_head.weight.data_ptr()
    with torch.inference_mode():
        full = tiny.model(input_ids=torch.tensor([TEXT_PROMPT])).logits
        again = tiny.model(input_ids=torch.tensor([TEXT_PROMPT])).logits
        part = view(input_ids=torch.tensor([TEXT_PROMPT])).logits
    assert torch.equal(full, again) and not torch.allclose(full, part)


def test_skip_parameter_is_checked(tiny):
    assert parse_skip("auto") is None and parse_skip(" 3,1,3 ") == (1, 3)
    for bad in ("0,1", "a,b", ""):
        with pytest.raises(ConfigError):
            resolve_params("layer_skip", {"skip": bad})
    with pytest.raises(ConfigError):
        generate(tiny, "layer_skip", TEXT_PROMPT, params={"skip": "5"})  # the tiny model has 2 layers


def test_replay_counts_steps_like_the_decode_loop():
    # positions: hit, hit, miss, hit; all confident; γ = 2; verify 1 per forward whatever its size, drafts free
    tokens, seconds = replay([True, True, False, True], [1.0] * 4, 2, 0.5, lambda n: 1.0, 0.0)
    assert (tokens, seconds) == (4.0, 2.0)  # step 1 accepts 2 + bonus, step 2 drafts the last position
    # nothing confident: every step is a plain step plus the one draft forward that said "unsure"
    tokens, seconds = replay([True] * 3, [0.1] * 3, 4, 0.5, lambda n: 1.0, 0.25)
    assert (tokens, seconds) == (3.0, 3.75)


def test_auto_drafts_nothing_when_no_skip_set_pays_off(tiny):
    cpu = FlatCosts(verify_x=1.0, draft_scale=0.6)  # a CPU's shape
    assert choose_skip(tiny, 4, 0.5, cpu).skip == ()
    out = generate(tiny, "layer_skip", TEXT_PROMPT, decode=DecodeConfig(max_new_tokens=16), costs=cpu)
    assert out.summary.drafted_tokens == 0
    gpu = FlatCosts()  # flat verification, cheap drafts: a GPU's shape
    choice = choose_skip(tiny, 4, 0.5, gpu)
    assert choice.skip == (1,) and choice.speedup > 1.0
    out = generate(tiny, "layer_skip", TEXT_PROMPT, decode=DecodeConfig(max_new_tokens=16), costs=gpu)
    assert out.summary.drafted_tokens > 0


# settings under which each drafts on the repetitive prompt whatever this machine's costs (no gate, no cost limit)
UNGATED = {"sam": {"cost_aware": False}, "aded": {"cost_aware": False}, "jacobi": {"cost_aware": False},
           "lookahead": {"max_cost": 0.0}, "layer_skip": {"skip": "1", "threshold": 0.0}}


def _learned(drafter) -> dict:
    """What a drafter has learned about its acceptance so far: its draft budget, its gate's counts (positions
    never visited left out: the gate's tables fill in zeros when read), its tree's room."""
    state = {}
    if hasattr(drafter, "budget"):
        state["cap"] = drafter.budget.cap
    if hasattr(drafter, "gate"):
        g = drafter.gate
        state["gate"] = ({k: list(v) for k, v in g.visits.items() if any(v)},
                         {k: list(v) for k, v in g.hits.items() if any(v)},
                         {k: v for k, v in g.refused.items() if v})
    if hasattr(drafter, "room"):
        state["room"] = drafter.room
    return state


@pytest.mark.parametrize("method", ["sam", "aded", "jacobi", "lookahead", "layer_skip"])
def test_short_budgets_and_a_step_without_a_draft(tiny, method, repetitive_prompt, monkeypatch):
    """At max_tokens = 0 the drafter proposes nothing; its state must survive that step.

    Short budgets end a run at such a step (output: plain decoding's). Forced in the middle of a run (step
    FORCED proposes at max_tokens = 0), the step leaves what the drafter learned (its budget, its gate's
    counts) as it was, and the drafter drafts again on the next steps.
    """
    params = UNGATED[method]
    for n in (1, 2, 3, 5):
        ref = generate(tiny, "autoregressive", TEXT_PROMPT, decode=DecodeConfig(max_new_tokens=n))
        out = generate(tiny, method, TEXT_PROMPT, params=params, decode=DecodeConfig(max_new_tokens=n))
        assert out.output_ids == ref.output_ids

    FORCED = 2
    cls = get_method(method)
    propose, observe = cls.propose, cls.observe
    seen: dict = {}

    def forced_propose(self, ctx):
        if ctx.step != FORCED:
            return propose(self, ctx)
        seen["before"] = _learned(self)
        seen["draft"] = propose(self, dataclasses.replace(ctx, max_tokens=0))
        return seen["draft"]

    def observing(self, fb):
        observe(self, fb)
        if "before" in seen and "after" not in seen:
            seen["after"] = _learned(self)

    monkeypatch.setattr(cls, "propose", forced_propose)
    monkeypatch.setattr(cls, "observe", observing)
    decode = DecodeConfig(max_new_tokens=64)
    ref = generate(tiny, "autoregressive", repetitive_prompt, decode=decode)
    out = generate(tiny, method, repetitive_prompt, params=params, decode=decode)
    steps = out.trace.steps
    assert out.output_ids == ref.output_ids
    assert steps[1].tokens and seen["draft"] is None and not steps[FORCED].tokens  # drafted, then a plain step
    assert seen["after"] == seen["before"], method
    assert any(st.tokens for st in steps[FORCED + 1:]), f"{method} never drafted again after a step without a draft"
