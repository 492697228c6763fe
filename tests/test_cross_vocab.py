"""Drafting across tokenizers: cross_vocab, and the byte-exact translation under it (methods/retokenize).

The pairs are built here from tiny-random: `other` has the same bytes and special
tokens under other ids (specials first, bytes shuffled), so its vocabulary
check fails, and its model is tiny-random's weights re-indexed (the same model
in another vocabulary: a draft that agrees with the target whenever the
translation is right); `merged` adds BPE merges of the byte pairs tiny-random
writes most, so tokenisation boundaries really move. Checked: every other
draft-model method still refuses such a draft, cross_vocab runs it through
workbench.api.run and the app's Run handler, is token-identical to plain greedy
both ways round, keeps the target's distribution under sampling (the
chi-square test of tests/test_engine.py), and drafts (tau > 1).
"""
from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter

import pytest
import torch

from workbench import api
from workbench.config import DecodeConfig, SamplingConfig
from workbench.engine import generate
from workbench.methods import list_methods
from workbench.methods.retokenize import (WINDOW, DraftMirror, Vocab, decoder_kind, target_proposal, translate,
                                          vocab_of)
from workbench.models import IncompatibleModelsError, LoadedModel, check_compatible, load_model, tiny_config
from workbench.models.tiny import build_tiny_tokenizer

from .stats import chi2_pvalue, exact_joint, oracle_probs

SPECIALS = ["<pad>", "<s>", "</s>"] + [f"<unused{i}>" for i in range(13)]
PROMPTS = [
    [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100],
    [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2],
    list(range(40, 90)),
]


# ---------------------------------------------------------------- the test pairs

def other_tokenizer(merges: list[tuple[int, int]] = ()):
    """tiny-random's bytes and specials under other ids, plus BPE merges of the given byte pairs."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = build_tiny_tokenizer().convert_ids_to_tokens(list(range(256)))  # byte b's piece
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in random.Random(0).sample(range(256), 256):
        vocab[chars[b]] = len(vocab)
    for a, b in merges:
        vocab[chars[a] + chars[b]] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(chars[a], chars[b]) for a, b in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def other_model(tiny, tok):
    """A tiny-random model re-indexed for `tok`: a merged token reads as its last byte and is
    predicted a little below or above its first byte."""
    from transformers import GenerationConfig, LlamaForCausalLM

    config = tiny_config()
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, \
        tok.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        noise = torch.randn(len(tok))
    state = {k: v for k, v in tiny.model.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    model.load_state_dict(state, strict=False)
    old_emb, old_head = tiny.model.model.embed_tokens.weight, tiny.model.lm_head.weight
    to_old = tiny.tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
            if piece in SPECIALS or len(piece) == 1:
                model.model.embed_tokens.weight[i] = old_emb[to_old(piece)]
                model.lm_head.weight[i] = old_head[to_old(piece)]
            else:  # a merge of two byte pieces
                model.model.embed_tokens.weight[i] = old_emb[to_old(piece[-1])]
                model.lm_head.weight[i] = old_head[to_old(piece[0])] * (1 + 0.05 * float(noise[i]))
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    return model.eval()


def loaded(spec: str, model, tok) -> LoadedModel:
    return LoadedModel(spec=spec, name=spec, model=model, tokenizer=tok, device=torch.device("cpu"),
                       dtype=torch.float32, quant=None, eos_token_ids=(tok.eos_token_id,))


@pytest.fixture(scope="module")
def frequent_pairs(tiny):
    """The byte pairs tiny-random writes most after the test prompts: the merges that will matter."""
    pairs: Counter = Counter()
    for p in PROMPTS:
        out = generate(tiny, "autoregressive", p, decode=DecodeConfig(max_new_tokens=48, trace=False)).output_ids
        pairs.update((a, b) for a, b in zip(p + out, (p + out)[1:]) if a < 256 and b < 256 and a != b)
    return [pair for pair, _ in pairs.most_common(6)]


@pytest.fixture(scope="module")
def other(tiny):
    """The target's own model in another vocabulary."""
    tok = other_tokenizer()
    return loaded("tiny-random:other-vocab", other_model(tiny, tok), tok)


@pytest.fixture(scope="module")
def merged(tiny, frequent_pairs):
    """Another vocabulary with merges: a model whose tokens are not tiny-random's bytes."""
    tok = other_tokenizer(frequent_pairs)
    return loaded("tiny-random:merged-vocab", other_model(tiny, tok), tok)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory, other):
    """`other` saved as a local model directory, so workbench.api.run can load it by spec."""
    path = tmp_path_factory.mktemp("models") / "other-vocab"
    other.model.save_pretrained(str(path))
    other.tokenizer.save_pretrained(str(path))
    return str(path)


def _in(lm_to: LoadedModel, lm_from: LoadedModel, ids: list[int]) -> list[int]:
    return translate(ids, vocab_of(lm_from.tokenizer), vocab_of(lm_to.tokenizer))


# ---------------------------------------------------------------- tokens as bytes

def test_the_pairs_really_have_other_vocabularies(tiny, other, merged):
    for lm in (other, merged):
        with pytest.raises(IncompatibleModelsError):
            check_compatible(tiny, lm)
    # `other` is tiny-random in another vocabulary: the same logits, re-indexed
    ids = PROMPTS[0]
    with torch.inference_mode():
        a = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1]
        b = other.model(input_ids=torch.tensor([_in(other, tiny, ids)])).logits[0, -1]
    assert _in(other, tiny, [int(a.argmax())]) == [int(b.argmax())]


def test_byte_level_vocab_round_trips_any_bytes(tiny, merged):
    rng = random.Random(3)
    for tok in (tiny.tokenizer, merged.tokenizer):
        v = vocab_of(tok)
        assert v.kind == "byte_level" and vocab_of(tok) is v
        for _ in range(50):  # random bytes: mostly invalid UTF-8, which a str round trip would lose
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            assert v.to_bytes(v.encode(data)) == data
        assert v.to_bytes(v.encode("héllo ✓".encode())) == "héllo ✓".encode()
    assert vocab_of(tiny.tokenizer).encode(b"\xe2\x9c") == [0xE2, 0x9C]  # half a character: its bytes
    assert vocab_of(tiny.tokenizer).to_bytes([72, 256, 105, 257, 300]) == b"Hi"  # specials have no text


def sentencepiece_tokenizer():
    """A SentencePiece-style tokenizer (Llama, Gemma): '▁' for spaces, byte fallback for the rest."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list("abhilo") + ["\u2581",
                                                                                             "\u2581h", "hi"]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[("\u2581", "h"), ("h", "i")],
                               byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_vocab_maps_spaces_and_byte_fallback():
    tok = sentencepiece_tokenizer()
    v = Vocab(tok)
    assert v.kind == "sentencepiece" == decoder_kind(tok)
    ids = v.encode("hi é".encode())
    assert v.to_bytes(ids) == "hi é".encode() == tok.decode(ids).encode()
    assert v.to_bytes(v.encode(b"a\xffb")) == b"a\xffb"  # an invalid byte: its byte-fallback token
    assert v.may_grow(tok.convert_tokens_to_ids("\u2581")) and not v.may_grow(tok.convert_tokens_to_ids("hi"))


def test_translate_carries_special_tokens_by_role_and_name(tiny, other):
    t, o = vocab_of(tiny.tokenizer), vocab_of(other.tokenizer)
    ids = [256, 72, 105, 262, 33, 257]  # <s> H i <unused3> ! </s>
    there = translate(ids, t, o)
    assert other.tokenizer.convert_ids_to_tokens(there) == ["<s>", "H", "i", "<unused3>", "!", "</s>"]
    assert translate(there, o, t) == ids
    sp = Vocab(sentencepiece_tokenizer())
    assert translate(ids, t, sp) == [1] + sp.encode(b"Hi") + sp.encode(b"!") + [2]  # <unused3>: no counterpart


def test_draft_mirror_re_encodes_only_a_window(tiny, other):
    rng = random.Random(5)
    t, o = vocab_of(tiny.tokenizer), vocab_of(other.tokenizer)
    mirror = DraftMirror(t, o)
    tokens = [256]
    for _ in range(40):
        tokens += [rng.choice([rng.randrange(256), rng.randrange(256), 262]) for _ in range(rng.randrange(1, 6))]
        assert mirror.update(tokens) == translate(tokens, t, o)  # exact for byte vocabularies
        assert len(tokens) - mirror.t_anchor <= 2 * WINDOW
    assert mirror.t_anchor > 0


def test_target_proposal_at_tokenisation_boundaries(tiny, merged, frequent_pairs):
    """Target `merged` (with merges), draft tiny-random (bytes): where the draft's text meets the context."""
    m, t = vocab_of(merged.tokenizer), vocab_of(tiny.tokenizer)
    a, b = frequent_pairs[0]
    ab = _in(merged, tiny, [a, b])
    assert len(ab) == 1  # the pair is one token of `merged`
    x = next(c for c in range(65, 91) if all(c not in p for p in frequent_pairs))  # a letter no merge touches
    X, A = _in(merged, tiny, [x]), _in(merged, tiny, [a])
    ctx = X + X
    # the draft writes the bytes a, b, x: the target re-encodes them as [ab, x] after the committed tokens
    assert target_proposal(ctx, [a, b, x], m, t) == ab + X
    # a last token that more text could turn into a merge ("a" before "b") is dropped ...
    assert target_proposal(ctx, [x, a], m, t) == X
    # ... unless the draft's text ended there (its EOS becomes the target's)
    assert target_proposal(ctx, [x, a, 257], m, t, t_eos=2, d_eos=frozenset({257})) == X + A + [2]
    # committed "a" where re-encoding would merge it with the draft's "b": "b x" is proposed on its own
    assert target_proposal(ctx + A, [b, x], m, t) == _in(merged, tiny, [b, x])
    # a special token the draft ends on crosses over by name; one with no counterpart just ends the text
    assert target_proposal(ctx, [x, 262], m, t) == X + [merged.tokenizer.convert_tokens_to_ids("<unused3>")]
    assert target_proposal(ctx, [x, 300], m, t) == X


# ---------------------------------------------------------------- the shared-vocabulary check

def test_only_cross_vocab_accepts_a_draft_with_another_vocabulary(tmp_path, other_dir, tiny):
    from store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    shared = [m.name for m in list_methods() if m.needs_draft_model and not getattr(m, "any_draft_tokenizer", False)]
    assert "speculative" in shared and "cross_vocab" not in shared
    for method in shared:  # every method that needs one vocabulary refuses, before recording anything
        with pytest.raises(IncompatibleModelsError, match="their vocabularies differ") as err:
            api.run(method, "Hello", target="tiny-random", draft=other_dir, chat=False, max_new_tokens=4,
                    store=store)
        assert "cross_vocab" in str(err.value) and "\n" not in str(err.value)
    assert store.list_runs() == []
    ref = api.run("autoregressive", "Hello, world", target="tiny-random", chat=False, max_new_tokens=40, store=store)
    out = api.run("cross_vocab", "Hello, world", target="tiny-random", draft=other_dir, chat=False,
                  max_new_tokens=40, store=store)
    assert out.output_ids == ref.output_ids
    assert out.summary.mean_accepted_tokens > 2.0
    rec = store.get_run(out.run_id)
    assert rec.status == "finished" and rec.draft == other_dir and rec.method == "cross_vocab"
    store.close()


def test_the_apps_run_handler_runs_cross_vocab(tmp_path, other_dir):
    from store import RunStore
    from ui.common import AppContext, new_session_state
    from ui.tabs import playground

    ctx = AppContext(store=RunStore(tmp_path / "ui.sqlite"), default_target="tiny-random")
    slots = [None] * (playground.N_SLOTS * len(playground.SLOT_KINDS))
    last = list(playground.run_stream(ctx, new_session_state(), "tiny-random", other_dir, "cross_vocab",
                                      "Hello there", False, 12, 0.0, 1.0, 0, 0, *slots))[-1]
    assert last[0].startswith("**Done:**"), last[0]
    last = list(playground.run_stream(ctx, new_session_state(), "tiny-random", other_dir, "speculative",
                                      "Hello there", False, 12, 0.0, 1.0, 0, 0, *slots))[-1]
    assert last[0].startswith("**Error:**") and "their vocabularies differ" in last[0]


def test_a_cluster_worker_opens_a_cross_vocab_run(other_dir, monkeypatch):
    """The same check where a Ray worker loads the models (called here without Ray)."""
    from workbench.cluster.worker import ModelWorker

    # who and where the worker is: Ray's runtime context, which would start a local Ray instance here
    monkeypatch.setattr(ModelWorker, "info", lambda self: {"pid": os.getpid(), "hostname": "test"})
    worker = ModelWorker()
    request = {"method": "cross_vocab", "prompt": "Hello, world", "target": "tiny-random", "draft": other_dir,
               "params": {"gamma": 5}, "sampling": SamplingConfig().to_dict(), "max_new_tokens": 12, "chat": False,
               "device": "cpu", "trace": True, "drafting_method": "cross_vocab", "backend": "eager"}
    opened = worker.open_run(request)
    events = list(worker.stream(opened["token"]))
    assert events[-1]["kind"] == "end" and sum(e["kind"] == "step" for e in events) < 12
    with pytest.raises(IncompatibleModelsError, match="only cross_vocab drafts across tokenizers"):
        worker.open_run({**request, "method": "speculative", "params": {}, "drafting_method": "speculative"})


# ---------------------------------------------------------------- lossless under greedy, and drafting

def _pairs(tiny, other, merged):
    return [("tiny<-other", tiny, other), ("tiny<-merged", tiny, merged), ("merged<-tiny", merged, tiny)]


@pytest.mark.parametrize("gamma", [1, 5, 9])
def test_greedy_token_identical_both_ways(tiny, other, merged, gamma):
    for name, target, draft in _pairs(tiny, other, merged):
        for prompt in PROMPTS:
            ids = _in(target, tiny, prompt)
            ref = generate(target, "autoregressive", ids, decode=DecodeConfig(max_new_tokens=48))
            out = generate(target, "cross_vocab", ids, draft=draft, params={"gamma": gamma},
                           decode=DecodeConfig(max_new_tokens=48))
            assert out.output_ids == ref.output_ids, (name, gamma, prompt[:4])
            assert all(len(s.tokens) <= 48 for s in out.trace.steps)


def test_drafts_with_a_draft_that_agrees(tiny, other, merged):
    """The target's own model in another vocabulary: every draft token should survive the translation."""
    taus = {}
    for name, target, draft in _pairs(tiny, other, merged):
        taus[name] = [generate(target, "cross_vocab", _in(target, tiny, p), draft=draft,
                               decode=DecodeConfig(max_new_tokens=64)).summary.mean_accepted_tokens for p in PROMPTS]
    assert min(taus["tiny<-other"]) > 3.0, taus  # γ = 5: nearly every step accepts the whole draft
    assert max(taus["tiny<-merged"]) > 1.5 and max(taus["merged<-tiny"]) > 1.5, taus


def test_short_budgets_and_a_draft_that_runs_out_of_positions(tiny, other):
    for n in (1, 2, 3, 5):
        ref = generate(tiny, "autoregressive", PROMPTS[0], decode=DecodeConfig(max_new_tokens=n))
        assert generate(tiny, "cross_vocab", PROMPTS[0], draft=other,
                        decode=DecodeConfig(max_new_tokens=n)).output_ids == ref.output_ids
    short = dataclasses.replace(other, model=other_model(tiny, other.tokenizer))
    short.model.config.max_position_embeddings = 30  # the draft stops drafting; the target goes on alone
    ref = generate(tiny, "autoregressive", PROMPTS[0], decode=DecodeConfig(max_new_tokens=40))
    out = generate(tiny, "cross_vocab", PROMPTS[0], draft=short, decode=DecodeConfig(max_new_tokens=40))
    assert out.output_ids == ref.output_ids
    drafted = [bool(s.tokens) for s in out.trace.steps[1:]]
    assert drafted[0] and not any(drafted[-5:])


# ---------------------------------------------------------------- lossless under sampling

SAMPLING = SamplingConfig(temperature=1.0, top_k=2, top_p=0.9)
N_RUNS = 600
DEPTH = 5


def _balanced_prompt(target: LoadedModel, tiny: LoadedModel) -> list[int]:
    """Every byte once, rotated so that the target's first two candidate tokens are as balanced as possible."""
    best = None
    with torch.inference_mode():
        for k in range(0, 256, 8):
            prompt = _in(target, tiny, list(range(k, 256)) + list(range(k)))
            probs = oracle_probs(target.model(input_ids=torch.tensor([prompt])).logits[0, -1], SAMPLING)
            balance = min(probs.values()) if len(probs) > 1 else 0.0
            if best is None or balance > best[0]:
                best = (balance, prompt)
    return best[1]


@pytest.mark.slow  # hundreds of sampled runs
@pytest.mark.parametrize("pair", ["tiny<-other", "merged<-tiny"])
def test_sampling_preserves_target_distribution(pair, tiny, other, merged):
    """The proposal is deterministic (q one-hot): accepted with probability p(x), else p without x."""
    target, draft = {"tiny<-other": (tiny, other), "merged<-tiny": (merged, tiny)}[pair]
    prompt = _balanced_prompt(target, tiny)
    expected = exact_joint(target.model, prompt, SAMPLING, DEPTH, eos=target.eos_token_ids)
    samples, depths, accepted, rejected = [], [], 0, 0
    for seed in range(N_RUNS):
        res = generate(target, "cross_vocab", prompt, draft=draft, sampling=dataclasses.replace(SAMPLING, seed=seed),
                       decode=DecodeConfig(max_new_tokens=DEPTH, trace=False))
        samples.append(tuple(res.output_ids))
        depths.append(max((s.draft_depth for s in res.trace.steps), default=0))
        accepted += sum(len(s.accepted) for s in res.trace.steps)
        rejected += sum(len(s.accepted) < len(s.tokens) for s in res.trace.steps)
    assert chi2_pvalue(samples, expected) > 1e-3
    assert max(depths) >= 2, f"drafted at most {max(depths)} deep: the test would miss deep-draft bugs"
    assert accepted > 0 and rejected > 0  # both branches of the rule were taken
