"""Each output token's NLL read off the decode's own verification forwards (workbench.engine, Step.target_nll)
equals the teacher-forced forward's (workbench.accounting.token_nll), for every way a token gets committed:
plain decoding, a lossless chain and tree, relaxed acceptance (greedy and sampling), BiLD's small-model tokens
the target read, early exit's exited tokens. A compressed KV cache gives none, so its accounting runs the
forward; the accounting runs no forward when the decode gave them."""
from __future__ import annotations

import pytest
import torch

import workbench.accounting as accounting
from workbench.accounting import BaselineOutput, forward_nll, measure_quality, quality_against, token_nll
from workbench.config import AcceptanceConfig, DecodeConfig, KVConfig, SamplingConfig
from workbench.engine import generate

from .helpers import PROMPTS

DECODE = DecodeConfig(max_new_tokens=24, stop_on_eos=False)
LOOSE = AcceptanceConfig("typical", eps=0.0, delta=0.0)  # admits any draft token the target does not rule out
SAMPLING = SamplingConfig(temperature=0.8, top_k=20, seed=3)
# (id, method, draft fixture, params, acceptance, sampling, output differs from plain greedy decoding, backend)
CASES = [
    ("plain", "autoregressive", None, {}, AcceptanceConfig(), SamplingConfig(), False, "eager"),
    ("chain", "speculative", "tiny_bf16", {}, AcceptanceConfig(), SamplingConfig(), False, "eager"),
    ("tree", "tree_static", "tiny_bf16", {}, AcceptanceConfig(), SamplingConfig(), False, "eager"),
    ("relaxed", "speculative", "tiny_other", {}, LOOSE, SamplingConfig(), True, "eager"),
    ("relaxed_sampling", "tree_static", "tiny_other", {}, AcceptanceConfig("top_k", k=200), SAMPLING, None, "eager"),
    ("bild", "bild", "tiny_other", {"fallback": 0.0, "rollback": 100.0}, AcceptanceConfig(), SamplingConfig(), True,
     "eager"),
    ("early_exit", "early_exit", None, {"threshold": 0.0, "min_layer": 1, "agreement": 0.0}, AcceptanceConfig(),
     SamplingConfig(), True, "eager"),
    # the compiled backend's static cache and tree buffers give the same logits (about a minute to compile here)
    ("tree_compiled", "tree_static", "tiny_bf16", {}, AcceptanceConfig(), SamplingConfig(), False, "compiled"),
]


@pytest.mark.parametrize("method,draft,params,acceptance,sampling,diverges,backend",
                         [pytest.param(*c[1:], marks=[pytest.mark.compiled] if c[-1] == "compiled" else [], id=c[0])
                          for c in CASES])
def test_the_decodes_nll_equals_the_teacher_forced_one(tiny, request, method, draft, params, acceptance, sampling,
                                                       diverges, backend):
    prompt = PROMPTS[1]
    drf = request.getfixturevalue(draft) if draft else None
    out = generate(tiny, method, prompt, draft=drf, params=params, decode=DECODE, acceptance=acceptance,
                   sampling=sampling, backend=backend)
    free = out.trace.output_nll
    assert free is not None and len(free) == len(out.output_ids) == DECODE.max_new_tokens
    assert free == pytest.approx(token_nll(tiny, prompt, out.output_ids), abs=1e-4)
    if method != "autoregressive":  # drafted tokens were committed, so rows past the root were read
        assert out.summary.accepted_draft_tokens > 0
    if diverges is not None:  # the lossy cases really left plain decoding, so their tokens are not its own
        plain = generate(tiny, "autoregressive", prompt, decode=DECODE)
        assert (out.output_ids != plain.output_ids) == diverges


def test_a_compressed_cache_gives_no_nll_and_its_accounting_runs_the_forward(tiny, monkeypatch):
    prompt = PROMPTS[2]
    plain = generate(tiny, "autoregressive", prompt, decode=DECODE)
    out = generate(tiny, "autoregressive", prompt, decode=DECODE, kv=KVConfig("streaming", budget=0.3, sinks=2))
    assert out.trace.output_nll is None and all(s.target_nll == [] for s in out.trace.steps)
    calls = []
    real = accounting.token_nll
    monkeypatch.setattr(accounting, "token_nll", lambda *a, **k: calls.append(a[2:] + tuple(k.values())) or real(*a, **k))
    base = BaselineOutput(plain.output_ids, plain.text, token_nll=plain.trace.output_nll)
    q = quality_against(tiny, prompt, out.output_ids, out.text, base, output_token_nll=out.trace.output_nll)
    assert len(calls) == 1  # one forward: the output's; the baseline's NLL came from its decode
    assert q.nll == pytest.approx(sum(real(tiny, prompt, out.output_ids)) / len(out.output_ids), abs=1e-5)
    assert q.baseline_nll == pytest.approx(sum(plain.trace.output_nll) / len(plain.output_ids))


@pytest.mark.parametrize("target,kv", [
    ("tiny-random", KVConfig("streaming", budget=0.3, sinks=2)),
    ("tiny-random", KVConfig("h2o", budget=0.3)),
    ("tiny-random", KVConfig(bits=4, group=8, residual=8)),
    ("tiny-random:arch=gemma3", KVConfig(bits=8, group=8, residual=8)),  # sliding-window layers
])
def test_a_compressed_run_keeps_the_prompts_full_keys_and_values_so_its_nll_forward_reads_the_output_alone(target, kv):
    from workbench import kv_cache
    from workbench.backend.eager import EagerSession
    from workbench.models import load_model

    lm, prompt = load_model(target), PROMPTS[2]
    out = generate(lm, "autoregressive", prompt, decode=DECODE, kv=kv, keep_prompt_kv=True)
    fresh = EagerSession(lm.model)
    fresh.forward(torch.tensor([prompt]))
    want = kv_cache.layer_rows(fresh.cache)  # the full target's own prefill, untouched by any compression
    assert len(out.prompt_kv) == len(want) and all(
        torch.equal(k, k2) and torch.equal(v, v2) for (k, v), (k2, v2) in zip(out.prompt_kv, want))
    note = out.trace.notes[-1]
    assert note["prompt_kv_bytes"] == sum(t.numel() * t.element_size() for pair in want for t in pair) > 0
    assert "released after it" in note["text"]
    full = token_nll(lm, prompt, out.output_ids)  # over prompt + output, no cache
    assert token_nll(lm, prompt, out.output_ids, prompt_kv=out.prompt_kv) == pytest.approx(full, abs=1e-4)
    assert token_nll(lm, prompt, out.output_ids, start=5, prompt_kv=out.prompt_kv) == pytest.approx(full[5:], abs=1e-4)
    plain_kept = generate(lm, "autoregressive", prompt, decode=DECODE, kv=kv)  # not asked for: nothing held
    assert plain_kept.prompt_kv is None and "prompt_kv_bytes" not in plain_kept.trace.notes[-1]
    assert generate(lm, "autoregressive", prompt, decode=DECODE, keep_prompt_kv=True).prompt_kv is None  # no kv


def test_the_accounting_runs_no_forward_when_the_decode_gave_the_nlls(tiny, tiny_other, monkeypatch):
    prompt = PROMPTS[1]
    plain = generate(tiny, "autoregressive", prompt, decode=DECODE)
    lossy = generate(tiny, "speculative", prompt, draft=tiny_other, decode=DECODE, acceptance=LOOSE)
    want_out = sum(token_nll(tiny, prompt, lossy.output_ids)) / len(lossy.output_ids)
    want_base = sum(token_nll(tiny, prompt, plain.output_ids)) / len(plain.output_ids)

    def no_forward(*a, **k):
        raise AssertionError("a forward ran")

    monkeypatch.setattr(accounting, "token_nll", no_forward)
    q = measure_quality(tiny, prompt, lossy.output_ids, baseline_ids=plain.output_ids,
                        output_token_nll=lossy.trace.output_nll, baseline_token_nll=plain.trace.output_nll)
    assert q.first_divergence is not None and q.nll_gap > 0
    assert (q.nll, q.baseline_nll) == (pytest.approx(want_out, abs=1e-5), pytest.approx(want_base, abs=1e-5))
    # the baseline scoring itself: its own values, the gap exactly 0
    own = measure_quality(tiny, prompt, plain.output_ids, baseline_ids=plain.output_ids,
                          output_token_nll=plain.trace.output_nll, baseline_token_nll=plain.trace.output_nll)
    assert own.nll_gap == 0.0 and own.nll == pytest.approx(want_base, abs=1e-5)


def test_the_forward_reads_only_the_tokens_after_the_first_divergence(tiny):
    prompt, base = PROMPTS[0], generate(tiny, "autoregressive", PROMPTS[0], decode=DECODE).output_ids
    out = base[:10] + [(base[10] + 1) % 256] + base[11:]
    marked = [100.0 + i for i in range(len(base))]  # not real NLLs: shows which values were reused
    got = forward_nll(tiny, prompt, out, base, marked)
    assert got[:10] == marked[:10]
    assert got[10:] == pytest.approx(token_nll(tiny, prompt, out)[10:], abs=1e-5)
    assert token_nll(tiny, prompt, out, start=10) == pytest.approx(token_nll(tiny, prompt, out)[10:], abs=1e-5)
    assert forward_nll(tiny, prompt, out) == pytest.approx(token_nll(tiny, prompt, out), abs=1e-6)
    with pytest.raises(ValueError, match="^3 per-token NLLs for an output of 24 tokens$"):
        measure_quality(tiny, prompt, out, baseline_ids=base, output_token_nll=[1.0, 2.0, 3.0])


def test_a_plain_run_under_a_compressed_cache_is_measured_against_the_stored_plain_run(tmp_path):
    from store import RunStore
    from workbench.api import run
    from workbench.models import load_model

    store = RunStore(tmp_path / "runs.sqlite")
    common = dict(target="tiny-random", max_new_tokens=24, chat=False, store=store)
    prompt = "the quick brown fox jumps over the lazy dog " * 2
    plain = run("autoregressive", prompt, **common)
    squeezed = run("autoregressive", prompt, kv=KVConfig("streaming", budget=0.3, sinks=2), **common)
    q = squeezed.quality
    assert q.baseline_run == plain.run_id and q.first_divergence is not None  # not its own baseline
    forced = token_nll(load_model("tiny-random"), squeezed.trace.prompt_ids, squeezed.output_ids)
    assert q.nll == pytest.approx(sum(forced) / len(forced), abs=1e-5)
    # scored over the prompt's keys/values its prefill kept, which are released once scored
    assert squeezed.result.prompt_kv is None and next(
        n for n in squeezed.trace.notes if n.get("kind") == "kv_compression")["prompt_kv_bytes"] > 0



@pytest.mark.parametrize("option", ["accepts", "kvs"])
def test_a_benchmark_scores_its_runs_from_their_decodes_and_only_a_kv_arm_runs_the_forward(tmp_path, monkeypatch,
                                                                                          option):
    import json

    from store import RunStore
    from workbench.bench.runner import BenchConfig, run_in_process

    suite = tmp_path / "question.jsonl"
    suite.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["abcabcabcabc abcabc"]}) + "\n")
    store = RunStore(tmp_path / "runs.sqlite")
    forwards = []
    real = accounting.token_nll
    kept = []
    monkeypatch.setattr(accounting, "token_nll",
                        lambda *a, **k: forwards.append(a[2]) or kept.append(k.get("prompt_kv")) or real(*a, **k))
    lossy = {"accepts": [LOOSE]} if option == "accepts" else {"kvs": [KVConfig("streaming", budget=0.3, sinks=2)]}
    cfg = BenchConfig(suite=str(suite), methods=["prompt_lookup"], target="tiny-random", max_new_tokens=16,
                      repeats=1, bandwidth_mib=4, warmup_tokens=2, trace_overhead=False, cluster="none",
                      params={"prompt_lookup": {"cost_aware": False}}, **lossy)
    run_in_process(cfg, store, progress=None)
    runs = store.list_runs()
    base = next(r for r in runs if r.method == "autoregressive" and r.lossless)
    diverged = [r for r in runs if not r.lossless and r.output_ids != base.output_ids]
    assert diverged and all(r.quality is not None and r.quality["nll"] is not None for r in runs)
    if option == "accepts":  # relaxed acceptance: scored from its decode, diverged or not
        assert forwards == []
    else:  # a compressed cache: one forward per output that differs from the baseline's
        assert sorted(forwards) == sorted(r.output_ids for r in diverged)
        assert all(kv is not None for kv in kept)  # each over the output alone, after its prefill's prompt rows
