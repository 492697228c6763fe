"""Exposed servers: a login or an explicit --insecure, a model allow-list, no deleting, no stack traces;
and what any process may load: a bounded model cache, safetensors only, never a model's own code.

Nothing here serves: Gradio's launch is replaced by a recorder.
"""
from __future__ import annotations

import gc
import json

import pytest
import torch

from store import RunStore
from ui.common import AppContext, new_session_state
from ui.exposure import ExposurePolicy, is_loopback, plan_launch
from ui.tabs import history, playground
from workbench.config import ConfigError
from workbench.models import AllowList, ModelCache, ModelError, hub, load_model, loading

from .helpers import run_cli

SLOTS = [None] * (playground.N_SLOTS * len(playground.SLOT_KINDS))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("WORKBENCH_AUTH", "WORKBENCH_ALLOWED_MODELS", "WORKBENCH_MAX_LOADED_MODELS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def launches(monkeypatch):
    """Record ui.app.launch calls instead of serving."""
    import ui.app

    calls = []
    monkeypatch.setattr(ui.app, "launch", lambda **kw: calls.append(kw))
    return calls


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "auth"
    path.write_text("# who may log in\nalice:s3cret\n\nbob:pw:with:colons\n")
    return str(path)


# ---------------------------------------------------------------- refusing to start


@pytest.mark.parametrize("args,words", [(["--host", "0.0.0.0"], "serve on 0.0.0.0"),
                                        (["--host", "::"], "serve on ::"),
                                        (["--host", "192.168.1.5"], "serve on 192.168.1.5"),
                                        (["--share"], "public share link")])
def test_ui_refuses_to_expose_without_a_login(capsys, launches, args, words):
    code, out, err = run_cli(capsys, "ui", *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to") and words in lines[0], err
    assert "--auth-file" in lines[0] and "WORKBENCH_AUTH" in lines[0] and "--insecure" in lines[0]
    assert launches == []  # decided before anything was served


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2", "::1", "[::1]"])
def test_ui_on_loopback_needs_no_login(capsys, launches, host):
    code, _, err = run_cli(capsys, "ui", "--host", host)
    assert code == 0, err
    assert launches[0]["host"] == host and launches[0]["insecure"] is False
    assert is_loopback(host)


def test_ui_accepts_an_auth_file_an_env_login_or_insecure(capsys, launches, auth_file, monkeypatch):
    assert run_cli(capsys, "ui", "--host", "0.0.0.0", "--auth-file", auth_file)[0] == 0
    assert launches[-1]["auth_file"] == auth_file
    assert run_cli(capsys, "ui", "--share", "--insecure")[0] == 0
    monkeypatch.setenv("WORKBENCH_AUTH", "carol:pw1,dave:pw2")
    assert run_cli(capsys, "ui", "--host", "0.0.0.0", "--allow-model", "org/model")[0] == 0
    assert launches[-1]["allow_models"] == ["org/model"]


def test_plan_of_an_exposed_server(auth_file):
    plan = plan_launch("0.0.0.0", auth_file=auth_file, allow_models=["org/model"], default_target="tiny-random:bf16",
                       environ={"WORKBENCH_ALLOWED_MODELS": "other/one, third/two"})
    assert plan.auth == [("alice", "s3cret"), ("bob", "pw:with:colons")]
    assert plan.policy.exposed and not plan.policy.can_delete and plan.show_error is False
    assert plan.policy.models.extra >= {"org/model", "other/one", "third/two", "tiny-random"}
    env_plan = plan_launch("0.0.0.0", environ={"WORKBENCH_AUTH": "carol:pw1, dave:pw2"})
    assert env_plan.auth == [("carol", "pw1"), ("dave", "pw2")]
    assert plan_launch("0.0.0.0", auth_file=auth_file, environ={"WORKBENCH_AUTH": "x:y"}).auth[0][0] == "alice"
    local = plan_launch("127.0.0.1", environ={})
    assert not local.policy.exposed and local.policy.can_delete and local.show_error and local.auth is None
    insecure = plan_launch("0.0.0.0", insecure=True, environ={})
    assert insecure.auth is None and insecure.policy.exposed and not insecure.show_error


@pytest.mark.parametrize("content,words", [("", "has no user:password lines"), ("# only a comment\n", "no user"),
                                           ("alice:pw-X1\nmallory\n", "auth:2: expected user:password"),
                                           ("alice:\n", "auth:1: expected user:password"),
                                           (":pw-X1\n", "auth:1: expected user:password"),
                                           ("alice:pw-X1\nalice:pw-X2\n", "auth:2: user 'alice' is given twice")])
def test_bad_auth_files(tmp_path, content, words):
    path = tmp_path / "auth"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        plan_launch("0.0.0.0", auth_file=str(path), environ={})
    assert words in str(err.value) and "pw-X" not in str(err.value)  # never echo a password


def test_bad_auth_sources(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot read --auth-file"):
        plan_launch("0.0.0.0", auth_file=str(tmp_path / "missing"), environ={})
    with pytest.raises(ConfigError, match="WORKBENCH_AUTH entry 2: expected user:password"):
        plan_launch("0.0.0.0", environ={"WORKBENCH_AUTH": "a:b,nopassword"})
    with pytest.raises(ConfigError, match="--host is empty"):
        plan_launch("  ", environ={})
    code, _, err = run_cli(capsys, "ui", "--host", "0.0.0.0", "--auth-file", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("error: cannot read --auth-file") and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # builds and launches the app
def test_launch_passes_the_login_and_hides_errors(monkeypatch, tmp_path, auth_file):
    """ui.app.launch hands Gradio the credentials, show_error=False and a policy-bound context."""
    import gradio as gr

    from ui.app import launch

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    demo = launch(host="0.0.0.0", port=7999, db=str(tmp_path / "x.sqlite"), default_target="tiny-random",
                  auth_file=auth_file, allow_models=["org/model"])
    assert seen["auth"] == [("alice", "s3cret"), ("bob", "pw:with:colons")]
    assert seen["show_error"] is False and seen["server_name"] == "0.0.0.0" and seen["share"] is False
    ctx = demo.workbench_context
    assert ctx.policy.exposed and ctx.policy.models.allows("org/model:bf16")
    header = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "wb-header")
    assert "x.sqlite" not in header.value and "Shared server" in header.value
    with pytest.raises(ConfigError, match="refusing"):
        launch(host="0.0.0.0", db=str(tmp_path / "y.sqlite"))
    launch(host="127.0.0.1", db=str(tmp_path / "z.sqlite"))
    assert seen["show_error"] is True and seen["auth"] is None


# ---------------------------------------------------------------- what an exposed server may do


def test_allow_list(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    allow = AllowList.of(["org/model", str(mine)])
    for ok in ["tiny-random", "tiny-random:seed=5:bf16", "smollm2-135m:int8", "gemma3-270m", "org/model",
               "org/model:fp16", str(mine), str(mine) + "/", str(tmp_path / "other" / ".." / "mine")]:
        assert allow.allows(ok), ok
        allow.check(ok)
    for bad in ["org/other", "someone/model", str(other), "/etc", "/", "~", "../..", "", ":bf16",
                "tiny-random:q4", None, 42]:
        assert not allow.allows(bad), bad
    with pytest.raises(ModelError) as err:
        allow.check("evil/weights")
    msg = str(err.value)
    assert "'evil/weights' is not allowed on this server" in msg and "tiny-random" in msg and "org/model" in msg
    open_policy = ExposurePolicy()
    open_policy.check_model("evil/weights")  # not exposed: anything goes
    with pytest.raises(ModelError):
        ExposurePolicy(exposed=True, models=allow).check_model("evil/weights")
    ExposurePolicy(exposed=True, models=allow).check_model(None)


@pytest.fixture
def exposed_ctx(tmp_path):
    store = RunStore(tmp_path / "shared.sqlite")
    policy = ExposurePolicy(exposed=True, models=AllowList.of([]))
    yield AppContext(store=store, default_target="tiny-random", policy=policy)
    store.close()


def test_exposed_app_loads_only_allowed_models(exposed_ctx, tmp_path, monkeypatch):
    loads = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda spec, *a, **k: loads.append(spec) or real(spec, *a, **k))

    def run(target, draft, method):
        return list(playground.run_stream(exposed_ctx, new_session_state(), target, draft, method, "Hello", False,
                                          6, 0.0, 1.0, 0, 0, *SLOTS))[-1][0]

    for target, draft in [("someone/weights", "none"), (str(tmp_path), "none"), ("tiny-random", "evil/draft"),
                          ("tiny-random", str(tmp_path))]:
        status = run(target, draft, "speculative" if draft != "none" else "autoregressive")
        assert status.startswith("**Error:**") and "is not allowed on this server" in status, status
    assert loads == [] and exposed_ctx.store.list_runs() == []
    # an unused draft is not checked; allowed models run as usual (finished: "Done", or "Note" when the run
    # carries a warning, e.g. a cost profile measured on a busy machine)
    for target, draft, method in [("tiny-random", "evil/draft", "prompt_lookup"),
                                  ("tiny-random", "tiny-random:bf16", "speculative")]:
        status = run(target, draft, method)
        assert status.startswith(("**Done:**", "**Note:**")) and " tokens in " in status, status


def test_exposed_app_does_not_delete(exposed_ctx):
    state = list(playground.run_stream(exposed_ctx, new_session_state(), "tiny-random", "none", "autoregressive",
                                       "Hello", False, 4, 0.0, 1.0, 0, 0, *SLOTS))[-1][-1]
    rid = state["last_run"]
    msg, confirm, *_ = history.delete_selected(exposed_ctx, [rid], "", [], [])
    assert msg.startswith("**Error:**") and "turned off" in msg and confirm["visible"] is False
    assert [r.id for r in exposed_ctx.store.list_runs()] == [rid]


# ---------------------------------------------------------------- the loaded-model cache


def test_model_cache_keeps_the_most_recent(monkeypatch):
    cache = ModelCache()
    monkeypatch.setattr(loading, "_LOADED", cache)
    monkeypatch.setenv("WORKBENCH_MAX_LOADED_MODELS", "2")
    specs = [f"tiny-random:seed={s}" for s in (101, 102, 103)]
    held = load_model(specs[0], device="cpu")
    load_model(specs[1], device="cpu")
    assert load_model(specs[0], device="cpu") is held  # a hit refreshes it
    load_model(specs[2], device="cpu")  # evicts seed=102, the least recently used
    assert [k[0] for k in cache] == [specs[0], specs[2]] and len(cache) == 2
    gc.collect()
    assert ("tiny-random:seed=102", "cpu") not in cache  # nobody held it: gone
    load_model(specs[1], device="cpu")  # evicts seed=101 from the cache, but `held` still uses it...
    assert load_model(specs[0], device="cpu") is held  # ...so it is found again, not loaded twice
    assert len(cache) == 2
    del held
    cache.clear()
    assert len(cache) == 0


def test_model_cache_limit_setting(monkeypatch):
    monkeypatch.setattr(loading, "_LOADED", ModelCache())
    assert loading.max_loaded_models() == loading.DEFAULT_MAX_LOADED_MODELS == 4
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv("WORKBENCH_MAX_LOADED_MODELS", bad)
        with pytest.raises(ModelError, match="WORKBENCH_MAX_LOADED_MODELS must be a whole number >= 1"):
            load_model("tiny-random:seed=104", device="cpu")
    assert len(loading._LOADED) == 0  # refused before loading


# ---------------------------------------------------------------- safetensors only, no remote code


def _save_tiny(tiny, path):
    tiny.model.save_pretrained(str(path))
    tiny.tokenizer.save_pretrained(str(path))
    return path


def test_pickle_only_directories_are_refused(tmp_path, tiny):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(ModelError) as err:
        load_model(str(pickled), device="cpu")
    assert "only in pickle files (pytorch_model.bin)" in str(err.value) and "safetensors" in str(err.value)
    both = _save_tiny(tiny, tmp_path / "both")
    (both / "pytorch_model.bin").write_bytes(b"ignored")
    assert load_model(str(both), device="cpu").vocab_size == tiny.vocab_size


def test_remote_code_is_never_trusted(tmp_path, monkeypatch, tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    custom = _save_tiny(tiny, tmp_path / "custom")
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (custom / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ModelError, match="needs its own Python code.*trust_remote_code is off"):
        load_model(str(custom), device="cpu")
    assert not marker.exists()

    seen = []

    def record(kind):
        def fake(source, **kwargs):
            seen.append((kind, kwargs))
            raise OSError("stop here")
        return fake

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", record("tokenizer"))
    with pytest.raises(OSError):
        hub.from_pretrained("org/model", torch.float32)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda source, **kw: seen.append(("tokenizer", kw)))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record("model"))
    with pytest.raises(OSError):
        hub.from_pretrained("org/model", torch.float32, local_files_only=True)
    assert [k for k, _ in seen] == ["tokenizer", "tokenizer", "model"]
    assert all(kw["trust_remote_code"] is False for _, kw in seen)
    assert seen[-1][1]["use_safetensors"] is True and seen[-1][1]["local_files_only"] is True
