"""Lossy decoding: relaxed acceptance in the shared verifier and every method registered `lossless = False`.

The registry-wide identity tests (test_engine, test_properties, test_real_model) select methods by their
`lossless` flag; here every lossy method must be listed in LOSSY_SETTINGS (a test fails on one that is
not), and is run at its exact setting (equal to plain greedy decoding token for token) and at an extreme
one (measurably different, so the identity check can fail). Relaxed acceptance is run the same way across
chain and tree methods, greedy and sampling, and every run says whether it was lossy (`Trace.lossy`).
"""
import pytest
import torch

from workbench import kv_cache
from workbench.config import AcceptanceConfig, ConfigError, DecodeConfig, KVConfig, SamplingConfig
from workbench.draft import Draft
from workbench.engine import generate, lossy_reasons
from workbench.methods import get_method, list_methods
from workbench.verify import relaxed_admits, verify_greedy, verify_stochastic

from .helpers import PROMPTS

N = 32
DECODE = DecodeConfig(max_new_tokens=N)
# Settings at which a rule admits nothing lossless verification rejects (greedy), and far-out ones.
EXACT = [AcceptanceConfig("typical", eps=1.0, delta=1e12), AcceptanceConfig("top_k", k=1),
         AcceptanceConfig("ratio", ratio=1.0)]
EXTREME = [AcceptanceConfig("typical", eps=0.0, delta=0.0), AcceptanceConfig("top_k", k=200),
           AcceptanceConfig("ratio", ratio=0.01)]
# (method, needs a draft model): a chain with a draft model, a model-free chain, a draft-model tree.
DRAFTING = [("speculative", True), ("prompt_lookup", False), ("tree_static", True)]


def _run(tiny, method, draft, acceptance=AcceptanceConfig(), sampling=SamplingConfig(), prompt=PROMPTS[0]):
    return generate(tiny, method, prompt, draft=draft, decode=DECODE, sampling=sampling, acceptance=acceptance)


@pytest.mark.parametrize("method,needs_draft", DRAFTING, ids=[m for m, _ in DRAFTING])
def test_relaxed_acceptance_at_its_exact_setting_is_token_identical(tiny, tiny_other, method, needs_draft):
    draft = tiny_other if needs_draft else None
    for prompt in (PROMPTS[0], PROMPTS[2]):
        ref = _run(tiny, "autoregressive", None, prompt=prompt)
        for acc in EXACT:
            out = _run(tiny, method, draft, acc, prompt=prompt)
            assert out.output_ids == ref.output_ids, (method, acc.rule)
            assert out.trace.lossy == [] and out.trace.lossless


@pytest.mark.parametrize("method,needs_draft", DRAFTING, ids=[m for m, _ in DRAFTING])
def test_relaxed_acceptance_at_an_extreme_setting_diverges_and_is_lossy(tiny, tiny_other, method, needs_draft):
    """A wrong draft (another model's tokens, or prompt lookup's stale n-grams) gets accepted: the output changes."""
    draft = tiny_other if needs_draft else None
    prompt = PROMPTS[1]
    ref = _run(tiny, "autoregressive", None, prompt=prompt)
    lossless = _run(tiny, method, draft, prompt=prompt)
    for acc in EXTREME:
        out = _run(tiny, method, draft, acc, prompt=prompt)
        assert out.output_ids != ref.output_ids, (method, acc.rule)
        assert out.summary.accepted_draft_tokens > lossless.summary.accepted_draft_tokens
        assert out.trace.lossy == [acc.describe()] and not out.trace.lossless


def test_exact_typical_acceptance_under_sampling_keeps_every_random_draw(tiny, tiny_other):
    sampling = SamplingConfig(temperature=1.0, seed=3)
    for method in ("speculative", "tree_static"):
        ref = _run(tiny, method, tiny_other, sampling=sampling)
        out = _run(tiny, method, tiny_other, AcceptanceConfig("typical", eps=1.0, delta=1e12), sampling)
        assert out.output_ids == ref.output_ids and out.trace.lossy == []
        loose = _run(tiny, method, tiny_other, AcceptanceConfig("typical", eps=0.0, delta=0.0), sampling)
        assert loose.output_ids != ref.output_ids and loose.trace.lossy


def test_top_k_and_ratio_accept_the_argmax_under_sampling_so_they_are_lossy_there():
    for acc in EXACT[1:]:
        assert acc.exact(greedy=True, vocab=256) and not acc.exact(greedy=False, vocab=256)
    assert not AcceptanceConfig("typical", eps=1.0, delta=100.0).exact(greedy=True, vocab=256)  # delta/V < 1/2
    assert AcceptanceConfig("typical", eps=0.5, delta=128.0).exact(greedy=True, vocab=256)


def test_each_rule_admits_what_its_formula_says():
    """One row p = (0.5, 0.3, 0.15, 0.05) and four children, one per token: which does each rule admit?"""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    probs = torch.stack([p, p, p, p, p])  # (1+4, 4)
    draft = Draft([0, 1, 2, 3], [-1, -1, -1, -1])
    H = float(-(p * p.log()).sum())  # about 1.14 nats: delta=1 -> floor exp(-H) about 0.32
    assert relaxed_admits(probs, draft, AcceptanceConfig("typical", eps=0.2, delta=1.0)) == [True, True, False, False]
    floor = min(0.5, torch.exp(torch.tensor(-H)).item())
    assert relaxed_admits(probs, draft, AcceptanceConfig("typical", eps=0.5, delta=1.0)) == [x > floor for x in p.tolist()]
    assert relaxed_admits(probs, draft, AcceptanceConfig("top_k", k=3)) == [True, True, True, False]
    assert relaxed_admits(probs, draft, AcceptanceConfig("ratio", ratio=0.3)) == [True, True, True, False]
    assert relaxed_admits(probs, draft, AcceptanceConfig("ratio", ratio=1.0)) == [True, False, False, False]
    assert relaxed_admits(probs, draft, AcceptanceConfig()) is None


def test_greedy_tree_walk_prefers_the_argmax_child_then_the_first_admitted():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]]))  # root, node 0, node 1
    draft = Draft([2, 1], [-1, -1])  # node 0 = token 2 (p 0.3), node 1 = token 1 (the argmax)
    assert verify_greedy(logits, draft, [True, True]).accepted == [1]
    only_first = verify_greedy(logits, draft, [True, False])
    assert only_first.accepted == [1]  # the argmax child still wins
    chain = Draft([2], [-1])
    assert verify_greedy(logits, chain).accepted == []
    v = verify_greedy(logits, chain, [True])
    assert v.accepted == [0] and v.bonus_token == 2  # after the admitted node, its own row's argmax
    probs = logits.softmax(-1)
    g = torch.Generator().manual_seed(0)
    assert verify_stochastic(probs, Draft([0], [-1]), g, [True]).accepted == [0]


def test_bad_acceptance_settings_fail_with_one_line():
    for text in ("fast", "typical:eps=2", "typical:eps=x", "top_k:k=0", "ratio:ratio=0", "typical:zeta=1"):
        with pytest.raises(ConfigError) as exc:
            AcceptanceConfig.parse(text)
        assert "\n" not in str(exc.value)
    assert AcceptanceConfig.parse("typical:eps=0.3,delta=0.09") == AcceptanceConfig("typical", eps=0.3, delta=0.09)
    for acc in EXACT + EXTREME + [AcceptanceConfig()]:
        assert AcceptanceConfig.parse(acc.text()) == acc
    for kv in (KVConfig(), KVConfig("streaming", budget=0.25, sinks=2), KVConfig("h2o", recent=0.3)):
        assert KVConfig.parse(kv.text()) == kv


# ---------------------------------------------------------------- lossy methods of the registry

def test_only_lossy_methods_say_they_are_lossy():
    """lossy_reasons (what fills Trace.lossy) is empty exactly for the methods registered lossless."""
    for cls in list_methods():
        reasons = lossy_reasons(cls, {}, SamplingConfig(), 256)
        assert (reasons == []) == cls.lossless, cls.name


# Every method registered lossless = False, with its exact and its extreme setting. A lossy method missing
# here fails test_every_lossy_method_is_tested_at_its_ends; a lossless one is never listed.
LOSSY_SETTINGS = {
    # the target alone (every token handed over) and the small model alone (nothing handed over or rolled back)
    "bild": ({"fallback": 1.0}, {"fallback": 0.0, "rollback": 100.0, "max_draft": 0}),
    # never exit; exit at the first layer (of the tiny model's two)
    "early_exit": ({"threshold": 1.0, "agreement": 0.0}, {"threshold": 0.0, "agreement": 0.0, "min_layer": 1, "every": 1}),
}


def test_every_lossy_method_is_tested_at_its_ends():
    assert set(LOSSY_SETTINGS) == {m.name for m in list_methods() if not m.lossless}


@pytest.mark.parametrize("name", sorted(LOSSY_SETTINGS))
def test_lossy_method_at_its_exact_setting_equals_plain_decoding_and_diverges_at_its_extreme(tiny, tiny_other, name):
    exact, extreme = LOSSY_SETTINGS[name]
    for prompt in (PROMPTS[0], PROMPTS[2]):
        ref = _run(tiny, "autoregressive", None, prompt=prompt)
        draft = tiny_other if get_method(name).needs_draft_model else None
        out = generate(tiny, name, prompt, draft=draft, params=exact, decode=DECODE)
        assert out.output_ids == ref.output_ids, name
        assert out.trace.lossy and not out.trace.lossless  # a lossy method says so at every setting
        far = generate(tiny, name, prompt, draft=draft, params=extreme, decode=DECODE)
        assert far.output_ids != ref.output_ids, name


def test_bild_small_model_alone_is_the_small_models_own_decoding(tiny, tiny_other):
    """After the first token (the target's prefill reads the prompt) every token is the small model's."""
    alone = generate(tiny, "bild", PROMPTS[0], draft=tiny_other, params=LOSSY_SETTINGS["bild"][1], decode=DECODE)
    first = alone.output_ids[0]
    small = generate(tiny_other, "autoregressive", PROMPTS[0] + [first], decode=DecodeConfig(max_new_tokens=N - 1))
    assert alone.output_ids[1:] == small.output_ids
    assert alone.summary.target_forward_passes == 2  # the prefill and one check of every small-model token


def test_bild_with_no_rollback_tolerance_is_lossless_speculative_decoding(tiny, tiny_bf16, tiny_other):
    """rollback 0 keeps only tokens the target agrees with: token-identical, while it drafts (tau > 1)."""
    ref = _run(tiny, "autoregressive", None)
    taus = []
    for draft in (tiny_bf16, tiny_other):
        out = generate(tiny, "bild", PROMPTS[0], draft=draft, params={"rollback": 0.0, "fallback": 0.3}, decode=DECODE)
        assert out.output_ids == ref.output_ids
        taus.append(out.summary.mean_accepted_tokens)
    assert taus[0] > 1.5  # the bf16 copy agrees with the target: its tokens are kept


def test_a_method_with_its_own_rule_refuses_a_relaxed_acceptance(tiny, tiny_other):
    from workbench.preflight import check_request

    with pytest.raises(ConfigError, match="its own rule"):
        check_request("bild", "hi", draft="x", acceptance="top_k:k=3")
    with pytest.raises(ConfigError, match="its own rule"):
        generate(tiny, "bild", PROMPTS[0], draft=tiny_other, decode=DECODE, acceptance=AcceptanceConfig("top_k", k=3))


def test_lossy_methods_are_labelled_lossy_where_methods_are_listed(capsys):
    from ui.presenters.choices import method_choices
    from workbench.cli import main
    from workbench.methods import methods_by_family

    lossy = [m for m in list_methods() if not m.lossless]
    labels = dict((name, label) for label, name in
                  method_choices([(f, [m.facts() for m in ms]) for f, ms in methods_by_family()]))
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for m in list_methods():
        assert labels[m.name].endswith("(LOSSY)") == (not m.lossless), m.name
    for m in lossy:
        line = next(ln for ln in listing.splitlines() if m.name in ln)
        assert "LOSSY" in line, line


def test_early_exit_layer_by_layer_pass_equals_the_stock_forward(tiny):
    """Exiting only at the last layer (nothing skipped, nothing propagated) drafts the target's own greedy tokens
    through the method's layer-by-layer pass: identical output, many tokens per target forward."""
    n = tiny.model.config.num_hidden_layers
    ref = _run(tiny, "autoregressive", None, prompt=PROMPTS[2])
    out = generate(tiny, "early_exit", PROMPTS[2], params={"threshold": 0.0, "min_layer": n, "agreement": 0.0}, decode=DECODE)
    assert out.output_ids == ref.output_ids
    assert out.summary.mean_accepted_tokens > 4


def test_calibrated_early_exit_picks_a_threshold_for_the_agreement_asked(tiny):
    params = {"min_layer": 1, "every": 1, "agreement": 0.9}
    out = generate(tiny, "early_exit", PROMPTS[0], params=params, decode=DECODE)
    note = next(n for n in out.trace.notes if n["kind"] == "early_exit")
    assert note["calibration_agreement"] >= 0.9 and 0.0 <= note["threshold"] <= 1.0
    loose = generate(tiny, "early_exit", PROMPTS[0], params={**params, "agreement": 0.3}, decode=DECODE)
    loose_note = next(n for n in loose.trace.notes if n["kind"] == "early_exit")
    assert loose_note["threshold"] < note["threshold"]
    assert loose_note["exited_tokens"] > note["exited_tokens"]


# ---------------------------------------------------------------- KV-cache compression

def test_kv_compression_at_full_budget_changes_nothing(tiny, tiny_bf16):
    ref = _run(tiny, "autoregressive", None)
    for method, draft in (("prompt_lookup", None), ("tree_static", tiny_bf16)):
        out = generate(tiny, method, PROMPTS[0], draft=draft, decode=DECODE, kv=KVConfig("h2o", budget=1.0))
        assert out.output_ids == ref.output_ids and out.trace.lossless


@pytest.mark.parametrize("policy", ["streaming", "h2o"])
def test_kv_compression_saves_what_it_says_and_is_lossy(tiny, tiny_bf16, policy):
    """Before the first eviction (a short prompt, the budget's slack) a drafting run over the compressed session
    equals plain decoding (positions and masks are the session's own); then the cache is cut to the budget,
    the output changes, and the note measures the bytes saved."""
    ref = _run(tiny, "autoregressive", None, prompt=PROMPTS[0])
    for method, draft in (("autoregressive", None), ("prompt_lookup", None), ("tree_static", tiny_bf16)):
        out = generate(tiny, method, PROMPTS[0], draft=draft, decode=DECODE, kv=KVConfig(policy, budget=0.3))
        assert out.output_ids[:12] == ref.output_ids[:12], method
        assert out.output_ids != ref.output_ids, method
        note = next(n for n in out.trace.notes if n["kind"] == "kv_compression")
        assert note["evicted_positions"] > 0 and note["cache_bytes"] < note["uncompressed_bytes"]
        assert note["saved_fraction"] == pytest.approx(1 - note["cache_bytes"] / note["uncompressed_bytes"], abs=1e-3)
        assert 0.3 < note["saved_fraction"] < 0.8  # at most the budget's share plus the slack is held
        assert out.trace.lossy == [KVConfig(policy, budget=0.3).describe()]


def test_kv_compression_refuses_the_compiled_backend_and_bad_knobs(tiny):
    with pytest.raises(ConfigError, match="eager backend only"):
        generate(tiny, "autoregressive", PROMPTS[0], decode=DECODE, kv=KVConfig("streaming"), backend="compiled")
    for text in ("lru", "h2o:budget=0", "h2o:budget=x", "streaming:sinks=-1", "h2o:foo=1"):
        with pytest.raises(ConfigError) as exc:
            KVConfig.parse(text)
        assert "\n" not in str(exc.value)


def test_h2o_keeps_the_sinks_the_recent_window_and_the_heaviest_positions():
    from workbench.kv_compress import choose_kept

    scores = torch.tensor([0.0] * 4 + [5.0, 0.1, 9.0, 0.2, 0.3, 7.0] + [0.0] * 4)  # 14 rows
    kept = choose_kept(KVConfig("h2o", sinks=2, recent=0.5), scores, 8).tolist()
    assert kept == [0, 1, 6, 9, 10, 11, 12, 13]  # sinks 0-1, heavy 6 and 9, recent 10-13
    assert choose_kept(KVConfig("streaming", sinks=2), scores, 5).tolist() == [0, 1, 11, 12, 13]


# ---------------------------------------------------------------- the app's lossy options

def test_the_apps_run_takes_the_lossy_options_and_refuses_bad_ones_with_one_line(tmp_path):
    from store import RunStore
    from ui.common import AppContext, new_session_state
    from ui.tabs import playground

    store = RunStore(tmp_path / "ui.sqlite")
    ctx = AppContext(store=store, default_target="tiny-random")
    slots = [None] * (playground.N_SLOTS * len(playground.SLOT_KINDS))
    args = (ctx, new_session_state(), "tiny-random", "tiny-random:bf16", "speculative", "Hello there", False, 12,
            0.0, 1.0, 0, 0, *slots)
    bad = list(playground.run_stream(*args, accept="typical:eps=7"))[-1]
    assert "eps" in bad[0] and "\n" not in bad[0].strip() and store.list_runs() == []
    bad = list(playground.run_stream(*args, kv="h2o:budget=2"))[-1]
    assert "budget" in bad[0] and store.list_runs() == []
    bad = list(playground.run_stream(*args, kv="int8", backend="compiled"))[-1]  # in the app's words, not the CLI's
    assert "eager* under *Backend*" in bad[0] and "--backend" not in bad[0] and store.list_runs() == []
    done = list(playground.run_stream(*args, accept="typical:eps=0,delta=0", kv="streaming:budget=0.5"))[-1]
    run_id = done[-1]["last_run"]
    rec = store.get_run(run_id)
    assert rec.status == "finished" and rec.params["acceptance"] == "typical:eps=0,delta=0"
    assert rec.params["kv"] == "streaming:budget=0.5,sinks=4"
    store.close()


def test_an_evicted_cache_computes_what_the_full_cache_does_with_those_positions_masked(tiny):
    """After an eviction the compressed session's next logits equal the full cache's with the evicted columns
    masked out (same rotary positions, same kept keys): evicting is hiding, nothing else changes."""
    from workbench.backend.compressed import CompressedSession
    from workbench.backend.eager import EagerSession
    from workbench.draft import additive_mask
    from workbench.kv_compress import evict

    prompt = torch.tensor([PROMPTS[2]])  # (1, 50)
    full, small = EagerSession(tiny.model), CompressedSession(tiny.model, KVConfig("streaming", budget=0.5))
    full.forward(prompt)
    small.forward(prompt)
    kept = torch.tensor([0, 1, 2, 3] + list(range(30, 50)))
    evict(small.cache, kept)
    small.evicted = 50 - len(kept)
    nxt = torch.tensor([[7, 8, 9]])  # (1, 3) three new tokens at positions 50..52
    got = small.forward(nxt)  # rows 24 + 3, positions 50.. (no further cut: under the budget's slack)
    visible = torch.zeros(3, 53, dtype=torch.bool)
    visible[:, kept] = True
    visible[:, 50:] = torch.ones(3, 3, dtype=torch.bool).tril()
    mask = additive_mask(visible, 53, tiny.model.dtype)  # (1, 1, 3, 53)
    ref = kv_cache.forward(tiny.model, nxt, full.cache, attention_mask=mask,
                           position_ids=torch.arange(50, 53)[None]).logits[0]  # (3, V)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    assert small.length == 53 and small.rows == 27


def test_the_cli_refuses_bad_lossy_options_with_exit_2_and_one_line(capsys):
    from workbench.cli import main

    for flag in (["--accept", "typical:eps=2"], ["--kv", "h2o:budget=0"], ["--kv", "h2o", "--backend", "compiled"]):
        assert main(["run", "-t", "tiny-random", "-p", "hi", "--no-log", *flag]) == 2, flag
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ("eps" in err or "budget" in err or "eager" in err), err
