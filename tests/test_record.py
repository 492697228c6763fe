"""workbench.record: one recording lifecycle for every way a run runs.

The lifecycle itself (start -> steps every STEP_FLUSH_EVERY -> finished / failed / interrupted, with a store
that fails at the worst moment), and that each runner really goes through it: api.run in process, a
benchmark in process (the cluster paths are checked in test_cluster.py with the same spy, conftest's
`recordings`).
"""
from __future__ import annotations

import json

import pytest

import workbench.record as record
from store import RunStore
from workbench import api
from workbench.bench.runner import BenchConfig, run_in_process
from workbench.record import Recording, error_line, prompt_text
from workbench.trace import Step, Trace


def _trace(n_steps: int) -> Trace:
    tr = Trace(method="autoregressive", params={}, prompt_ids=[1, 2, 3])
    for i in range(n_steps):
        tr.steps.append(Step(index=i, kind="prefill" if i == 0 else "decode", bonus_token=10 + i, committed=[10 + i]))
    return tr


def _row(**extra):
    return dict(method="autoregressive", target="tiny-random", draft=None, params={"max_new_tokens": 8},
                sampling={"temperature": 0.0}, env={"cpu": "test"}, **extra)


def test_a_finished_run_streams_its_steps_then_closes_with_all_of_them(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "STEP_FLUSH_EVERY", 3)
    store = RunStore(tmp_path / "runs.sqlite")
    tr = _trace(0)
    with Recording(store, tr, prompt="Hello", **_row()) as rec:
        assert store.get_run(rec.run_id).status == "running"
        for i in range(7):
            tr.steps.append(Step(index=i, kind="decode", bonus_token=i, committed=[i]))
            rec.on_step(tr.steps[-1], tr)
        assert len(store.load_trace(rec.run_id).steps) == 6  # two flushes of 3; the 7th waits
        rec.finish(tr, "done")
    run = store.get_run(rec.run_id)
    assert run.status == "finished" and run.output_text == "done" and len(store.load_trace(rec.run_id).steps) == 7


def test_an_error_closes_the_run_failed_with_its_steps_and_text(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    tr = _trace(4)
    with pytest.raises(RuntimeError, match="device fell over"):
        with Recording(store, tr, prompt="Hello", decode_text=lambda ids: "|".join(map(str, ids)), **_row()) as rec:
            raise RuntimeError("device fell over")
    run = store.get_run(rec.run_id)
    assert run.status == "failed" and run.error == "RuntimeError: device fell over"
    assert run.output_text == "10|11|12|13" and len(store.load_trace(rec.run_id).steps) == 4


def test_an_interrupted_run_is_closed_once_with_its_own_line(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    tr = _trace(2)
    with pytest.raises(ConnectionError):
        with Recording(store, tr, prompt="Hello", **_row()) as rec:
            exc = ConnectionError("gone")
            rec.fail(exc, "", interrupted=True, error="interrupted: the worker died")
            raise exc  # leaving the block does not close it a second time
    run = store.get_run(rec.run_id)
    assert run.status == "interrupted" and run.error == "interrupted: the worker died"


def test_a_store_failing_at_the_close_never_hides_the_decode_error(tmp_path, monkeypatch, caplog):
    store = RunStore(tmp_path / "runs.sqlite")

    def broken(*_a, **_k):
        raise OSError("disk full")

    with pytest.raises(RuntimeError) as err:
        with Recording(store, _trace(1), prompt="Hello", **_row()):
            monkeypatch.setattr(store, "fail_run", broken)
            raise RuntimeError("decode failed")
    assert str(err.value) == "decode failed"
    assert any("disk full" in note for note in err.value.__notes__)
    assert "could not record the run as failed" in caplog.text


def test_without_a_store_every_call_does_nothing():
    tr = _trace(3)
    with Recording(None, tr, prompt="Hello", **_row()) as rec:
        rec.on_step(tr.steps[-1], tr)
        rec.finish(tr, "x")
    assert rec.run_id is None and rec.closed


def test_chat_prompts_are_stored_as_text_and_as_messages(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with Recording(store, _trace(1), prompt=messages, **_row()) as rec:
        rec.finish(_trace(1), "ok")
    run = store.get_run(rec.run_id)
    assert run.prompt == prompt_text(messages) == "system: Be brief.\nuser: Hi" and run.prompt_json == messages
    assert error_line(ValueError()) == "ValueError: ValueError"


# ---------------------------------------------------------------- every runner records through it


def test_a_run_in_process_records_through_the_one_lifecycle(tmp_path, recordings):
    store = RunStore(tmp_path / "runs.sqlite")
    res = api.run("prompt_lookup", "a b a b a b", target="tiny-random", chat=False, max_new_tokens=8, store=store)
    assert recordings == [{"source": "api", "method": "prompt_lookup", "run_id": res.run_id, "ended": "finished"}]
    assert store.get_run(res.run_id).status == "finished"


def test_a_benchmark_in_process_records_through_the_one_lifecycle(tmp_path, recordings):
    suite = tmp_path / "question.jsonl"
    suite.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["Who wrote Hamlet?"]}) + "\n")
    store = RunStore(tmp_path / "runs.sqlite")
    cfg = BenchConfig(suite=str(suite), methods=["prompt_lookup"], target="tiny-random", max_new_tokens=4, repeats=1,
                      bandwidth_mib=4, warmup_tokens=2, trace_overhead=False, cluster="none")
    bench_id = run_in_process(cfg, store, progress=None)
    runs = store.list_runs(limit=None)
    assert {r.benchmark_id for r in runs} == {bench_id} and len(runs) == len(recordings) == 2  # baseline + method
    assert {(r["source"], r["method"], r["ended"]) for r in recordings} == {
        ("bench", "autoregressive", "finished"), ("bench", "prompt_lookup", "finished")}
    assert sorted(r["run_id"] for r in recordings) == sorted(r.id for r in runs)
