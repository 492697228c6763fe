"""Bad input wherever it enters: one clear line, nothing recorded, and everything keeps working.

The CLI exits 2 with exactly one `error: ...` line (progress lines may precede it
when a model is converted, never a traceback); `workbench.api.run` raises
ConfigError / ModelError before a run row is written; the app's Run handler
answers with a status message.
"""
from __future__ import annotations

import json

import pytest

from store import RunStore
from ui.common import UI_MAX_NEW_TOKENS, AppContext, new_session_state
from ui.tabs import playground
from workbench import api
from workbench.preflight import check_fits
from workbench.bench.suites import load_suite
from workbench.config import ConfigError, DecodeConfig, SamplingConfig
from workbench.models import ModelError, load_model, tiny_config

from .helpers import run_cli

SLOTS = [None] * (playground.N_SLOTS * len(playground.SLOT_KINDS))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """An unknown model name fails on the hub check at once instead of trying the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny):
    """Local directories: another vocabulary, pickle-only weights, no model at all."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    other = root / "other-vocab"
    config = tiny_config()
    config.vocab_size = 300
    LlamaForCausalLM(config).save_pretrained(str(other))
    tiny.tokenizer.save_pretrained(str(other))
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    empty = root / "empty"
    empty.mkdir()
    return {"other": str(other), "pickled": str(pickled), "empty": str(empty)}


# ---------------------------------------------------------------- CLI


def _one_error(code, out, err) -> str:
    assert code == 2, (code, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and out == ""
    return errors[0]


RUN_BAD = [
    (["--method", "speculative", "--draft", "tiny-random:bf16", "--param", "gamma=true"], "expects int"),
    (["--method", "speculative", "--draft", "tiny-random:bf16", "--param", "gamma=nan"], "expects int"),
    (["--method", "speculative", "--draft", "tiny-random:bf16", "--param", "gamma=1e9"], "must be <= 64"),
    (["--method", "speculative", "--draft", "tiny-random:bf16", "--param", "gamma=3", "--param", "gamma=4"],
     "given twice"),
    (["--method", "recursive", "--draft", "tiny-random:bf16", "--param", "branching=3,x"], "branching must be"),
    (["--method", "tree_static", "--draft", "tiny-random:bf16", "--param", "paths=[[1,"], "tree paths must be"),
    (["--method", "opt_tree", "--draft", "tiny-random:bf16", "--param", "threshold=inf"], "expects float"),
    (["--temperature", "nan"], "temperature"),
    (["--temperature", "inf"], "temperature"),
    (["--temperature", "1e-30"], "too small"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "nan"], "top_p"),
    (["--top-k", "-1"], "top_k"),
    (["--seed", "-3"], "seed"),
    (["--seed", str(2**70)], "seed"),
    (["--max-new-tokens", "4000"], "can attend to (2048 positions)"),
    (["--target", "tiny-random:q4"], "unknown option 'q4'"),
    (["--target", "tiny-random:seed=x"], "seed must be a whole number"),
    (["--target", "tiny-random:bf16:fp16"], "two dtype options"),
    (["--target", "no-such-model-xyz"], "could not load model 'no-such-model-xyz'"),
    (["--target", ":bf16"], "no name before the options"),
]


@pytest.mark.parametrize("args,message", RUN_BAD, ids=[m for _, m in RUN_BAD])
def test_cli_run_bad_input_is_one_line_and_records_nothing(capsys, tmp_path, args, message):
    db = str(tmp_path / "bad.sqlite")
    argv = ["--db", db, "run", "--no-chat", "--prompt", "Hello", "--max-new-tokens", "4", *args]
    if "--target" not in args:
        argv += ["--target", "tiny-random"]
    line = _one_error(*run_cli(capsys, *argv))
    assert message in line, line
    assert RunStore(db).list_runs() == []


def test_cli_prompt_longer_than_the_context(capsys, tmp_path):
    db = str(tmp_path / "long.sqlite")
    line = _one_error(*run_cli(capsys, "--db", db, "run", "--target", "tiny-random", "--no-chat",
                            "--prompt", "x" * 3000, "--max-new-tokens", "4"))
    assert "3001 tokens" in line and "2048 positions" in line and "shorten the prompt" in line
    assert RunStore(db).list_runs() == []


@pytest.mark.parametrize("which,message", [("other", "their vocabularies differ"),
                                           ("pickled", "only in pickle files"),
                                           ("empty", "no config.json")])
def test_cli_bad_model_directories(capsys, tmp_path, model_dirs, which, message):
    db = str(tmp_path / "dirs.sqlite")
    line = _one_error(*run_cli(capsys, "--db", db, "run", "--method", "speculative", "--target", "tiny-random",
                            "--draft", model_dirs[which], "--no-chat", "--prompt", "Hello", "--max-new-tokens", "4"))
    assert message in line, line
    assert RunStore(db).list_runs() == []


def test_cli_run_ids_and_listing(capsys, tmp_path):
    db = str(tmp_path / "ids.sqlite")
    store = RunStore(db)
    rid = api.run("autoregressive", "Hello", target="tiny-random", chat=False, max_new_tokens=3, store=store).run_id
    assert "no run with id 'zzzz'" in _one_error(*run_cli(capsys, "--db", db, "runs", "show", "zzzz"))
    assert "no run with id 'zzzz'" in _one_error(*run_cli(capsys, "--db", db, "runs", "delete", rid, "zzzz"))
    assert [r.id for r in store.list_runs()] == [rid]  # all or nothing: the good id was not deleted either
    assert "--limit: must be >= 1" in _one_error(*run_cli(capsys, "--db", db, "runs", "list", "--limit", "0"))
    assert "--port: must be from 1 to 65535" in _one_error(*run_cli(capsys, "ui", "--port", "70000"))
    code, _, err = run_cli(capsys, "--db", db, "runs", "delete", rid[:8])
    assert code == 0 and "deleted 1 runs" in err and store.list_runs() == []


def test_cli_bench_rejects_a_bad_suite_before_running(capsys, tmp_path):
    db = str(tmp_path / "bench.sqlite")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "qa", "turns": ["hi"]}\n{"question_id": 2,\n')
    line = _one_error(*run_cli(capsys, "--db", db, "bench", "--suite", str(bad), "--methods", "prompt_lookup",
                            "--target", "tiny-random"))
    assert "bad.jsonl:2: not valid JSON" in line
    assert RunStore(db).list_runs() == []


# ---------------------------------------------------------------- suites


@pytest.mark.parametrize("text,message", [
    ('{"question_id": 1, "category": "qa", "turns": ["hi"]}\nnot json\n', "s.jsonl:2: not valid JSON"),
    ('{"question_id": 1, "turns": ["hi"]}\n', "s.jsonl:1: missing field(s) category"),
    ("", "has no questions"),
    ("\n  \n", "has no questions"),
    ('{"question_id": 1, "category": "qa", "turns": "hi"}\n', "s.jsonl:1: 'turns' must be a non-empty list"),
    ('{"question_id": 1, "category": "qa", "turns": [3]}\n', "'turns' must be a non-empty list"),
    ('{"question_id": 1, "category": 7, "turns": ["hi"]}\n', "s.jsonl:1: 'category' must be a non-empty string"),
    ('{"question_id": [1], "category": "qa", "turns": ["hi"]}\n', "'question_id' must be an integer"),
    ('{"question_id": true, "category": "qa", "turns": ["hi"]}\n', "'question_id' must be an integer"),
    ('[1, 2]\n', "s.jsonl:1: expected a JSON object"),
    ('{"question_id": 1, "category": "qa", "turns": ["a"]}\n{"question_id": 1, "category": "qa", "turns": ["b"]}',
     "s.jsonl:2: question_id 1 appears twice"),
    ("[" * 100000, "s.jsonl:1: not valid JSON"),
])
def test_malformed_suites(tmp_path, text, message):
    path = tmp_path / "s.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_suite(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_suite_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="no suite"):
        load_suite(str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match="a suite is a built-in name"):
        load_suite("")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read suite file"):
        load_suite(str(binary))
    bom = tmp_path / "bom.jsonl"
    bom.write_text('{"question_id": 1, "category": "qa", "turns": ["hi"]}\n', encoding="utf-8-sig")
    assert [q.key for q in load_suite(str(bom))] == ["1"]


# ---------------------------------------------------------------- configs and api.run


@pytest.mark.parametrize("kwargs", [
    dict(temperature=True), dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature=-1),
    dict(top_k=True), dict(top_k=2.0), dict(top_k=10**12), dict(top_p=float("nan")), dict(top_p=1.5),
    dict(seed=False), dict(seed=-1), dict(seed=2**64), dict(seed=1.5),
])
def test_sampling_config_refuses(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=True), dict(max_new_tokens=4.0), dict(max_new_tokens=0),
                                    dict(max_new_tokens=10**9), dict(trace="yes"), dict(stop_on_eos=1),
                                    dict(extra_eos_ids=(1, -2)), dict(extra_eos_ids="7")])
def test_decode_config_refuses(kwargs):
    with pytest.raises(ConfigError):
        DecodeConfig(**kwargs)


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "api.sqlite")
    yield s
    s.close()


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt="x" * 3000), "is more than 'tiny-random' can attend to (2048 positions); shorten the prompt"),
    (dict(max_new_tokens=2100), "lower max_new_tokens to at most 2042"),
    (dict(params={"gamma": True}, method="speculative", draft="tiny-random:bf16"), "expects int, got True"),
    (dict(params={"gamma": float("nan")}, method="speculative", draft="tiny-random:bf16"), "expects int"),
    (dict(params={"gamma": -2}, method="speculative", draft="tiny-random:bf16"), "must be >= 0"),
    (dict(params=[("gamma", 3)], method="speculative", draft="tiny-random:bf16"), "must be a mapping"),
    (dict(params={"branching": "0,2"}, method="recursive", draft="tiny-random:bf16"), "branching must be"),
    (dict(method=["speculative"]), "unknown method"),
    (dict(prompt=["hi"]), "a prompt must be text or a list of chat messages"),
    (dict(prompt=None), "a prompt must be text"),
    (dict(prompt=[{"role": "user", "content": "  "}]), "the prompt is empty"),
    (dict(chat="yes"), "chat must be True, False or None"),
    (dict(sampling={"temperature": 0}), "sampling must be a SamplingConfig"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer"),
    (dict(trace="off"), "trace must be True or False"),
])
def test_api_run_refuses_before_recording(store, kwargs, message):
    call = {"method": "autoregressive", "prompt": "Hello", "target": "tiny-random", "chat": False,
            "max_new_tokens": 4, **kwargs}
    with pytest.raises(ConfigError) as err:
        api.run(call.pop("method"), call.pop("prompt"), store=store, **call)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert store.list_runs() == []


def test_api_run_refuses_unknown_and_incompatible_models(store, model_dirs):
    for kwargs, message in [(dict(target="tiny-random:int4"), "unknown option 'int4'"),
                            (dict(target=model_dirs["pickled"]), "only in pickle files"),
                            (dict(method="speculative", draft=model_dirs["other"]), "their vocabularies differ")]:
        call = {"method": "autoregressive", "target": "tiny-random", **kwargs}
        with pytest.raises(ModelError, match=message):
            api.run(call.pop("method"), "Hello", store=store, chat=False, max_new_tokens=4, **call)
    assert store.list_runs() == []


def test_sliding_window_models_draft_past_the_window(store):
    """A drafting method on a sliding-window model runs past the window (its cache keeps every position)
    and is recorded like any other run, where it once had to be refused."""
    lm = load_model("tiny-random:arch=mistral", device="cpu")
    window = lm.model.config.sliding_window
    check_fits(lm, 6, 4 * window)
    plain = api.run("autoregressive", "Hello", target=lm.spec, chat=False, max_new_tokens=3 * window, store=store)
    out = api.run("prompt_lookup", "Hello", target=lm.spec, chat=False, max_new_tokens=3 * window, store=store)
    assert out.output_ids == plain.output_ids and len(out.output_ids) == 3 * window
    assert len(store.list_runs()) == 2


# ---------------------------------------------------------------- the app's Run handler


def _run_handler(ctx, max_new, method="speculative", draft="tiny-random:bf16"):
    return list(playground.run_stream(ctx, new_session_state(), "tiny-random", draft, method, "Hello there",
                                      False, max_new, 0.0, 1.0, 0, 0, *SLOTS))[-1]


@pytest.mark.parametrize("max_new", [100000, UI_MAX_NEW_TOKENS + 1, 0, -5, 2.5, float("nan"), float("inf"), None,
                                     True])
def test_ui_run_handler_caps_max_new_tokens(tmp_path, max_new):
    ctx = AppContext(store=RunStore(tmp_path / "ui.sqlite"), default_target="tiny-random")
    status, *_ = _run_handler(ctx, max_new)
    assert status.startswith("**Error:**") and f"from 1 to {UI_MAX_NEW_TOKENS}" in status, status
    assert ctx.store.list_runs() == []
    status, *_ = _run_handler(ctx, 6)  # the app still works
    assert status.startswith("**Done:**"), status


def test_ui_run_handler_refuses_bad_parameters(tmp_path):
    ctx = AppContext(store=RunStore(tmp_path / "ui.sqlite"), default_target="tiny-random")
    slots = list(SLOTS)
    slots[0] = float("nan")  # gamma
    status, *_ = list(playground.run_stream(ctx, new_session_state(), "tiny-random", "tiny-random:bf16",
                                            "speculative", "Hello", False, 6, 0.0, 1.0, 0, 0, *slots))[-1]
    assert status.startswith("**Error:**") and "gamma" in status
    status, *_ = list(playground.run_stream(ctx, new_session_state(), "tiny-random", "none", "autoregressive",
                                            "x" * 3000, False, 6, 0.0, 1.0, 0, 0, *SLOTS))[-1]
    assert status.startswith("**Error:**") and "2048 positions" in status
    status, *_ = list(playground.run_stream(ctx, new_session_state(), "tiny-random", "none", "autoregressive",
                                            "Hello", False, 6, float("nan"), 1.0, 0, 0, *SLOTS))[-1]
    assert status.startswith("**Error:**") and "temperature" in status
    assert ctx.store.list_runs() == []
