"""Tests of the SQLite run store (store/): round trips, failures, filters, deletes, export, baselines, schema."""
from __future__ import annotations

import csv
import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from store import METRIC_KEYS, SCHEMA_VERSION, RunStore, StoreError, default_db_path
from store.models import Metric, RunParam, Run, StepRow
from workbench.trace import Step, Trace

ROOT = Path(__file__).resolve().parents[1]
GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
ENV = {"device": "cpu", "dtype": "float32", "torch": "2.13.0", "transformers": "5.0.0", "python": "3.11",
       "platform": "linux", "cpu": "test", "threads": 4}


def make_trace(method: str = "speculative", n_decode: int = 3) -> Trace:
    steps = [Step(index=0, kind="prefill", bonus_token=11, bonus_p=1.0, committed=[11],
                  verify_s=0.05, total_s=0.06, t_end=0.06)]
    t = 0.06
    for i in range(1, n_decode + 1):
        t += 0.03
        steps.append(Step(
            index=i, kind="decode", tokens=[20 + i, 30 + i, 40 + i], parents=[-1, 0, 1],
            q=[0.9, None, 0.25], p=[0.8, 0.5, 0.125], accepted=[0, 1] if i % 2 else [],
            bonus_token=50 + i, bonus_p=float("nan") if i % 2 else 0.75,
            committed=[20 + i, 30 + i, 50 + i] if i % 2 else [50 + i],
            draft_s=0.01, verify_s=0.015, total_s=0.03, t_end=t))
    return Trace(method=method, params={"gamma": 3, "adaptive": False, "mode": "chain"},
                 prompt_ids=[1, 2, 3, 4], steps=steps, wall_s=t + 0.01, peak_mem_mb=float("nan"),
                 stop_reason="max_new_tokens")


def start(store: RunStore, *, method: str = "speculative", prompt: str = "Once upon a time", target: str = "smollm2",
          draft: str | None = "smollm2-draft", sampling: dict | None = None, max_new_tokens: int = 16,
          **kw) -> str:
    params = {"gamma": 3, "adaptive": False, "mode": "chain", "max_new_tokens": max_new_tokens}
    return store.start_run(method=method, target=target, draft=draft, prompt=prompt, params=params,
                           sampling=sampling or GREEDY, env=ENV, **kw)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(tmp_path / "sub" / "runs.sqlite")
    yield s
    s.close()


def test_round_trip(store: RunStore) -> None:
    trace = make_trace()
    run_id = start(store, source="cli", prompt_json=[{"role": "user", "content": "hi"}])
    assert store.get_run(run_id).status == "running"
    store.append_steps(run_id, trace.steps[:2])
    store.append_steps(run_id, trace.steps[1:3])  # overlap: idempotent on (run_id, idx)
    store.finish_run(run_id, trace, "a story")

    rec = store.get_run(run_id)
    assert rec.status == "finished" and rec.error is None
    assert rec.finished_at is not None and rec.finished_at >= rec.created_at
    assert rec.output_text == "a story" and rec.output_ids == trace.output_ids
    assert rec.stop_reason == "max_new_tokens" and rec.source == "cli"
    assert rec.prompt_json == [{"role": "user", "content": "hi"}]
    assert rec.sampling == GREEDY and rec.env == ENV
    assert rec.params == {"gamma": "3", "adaptive": "false", "mode": "chain", "max_new_tokens": "16"}
    assert rec.typed_params["max_new_tokens"] == 16 and rec.typed_params["adaptive"] is False

    summary = trace.summary().to_dict()
    assert set(METRIC_KEYS) <= set(rec.metrics)
    for key in METRIC_KEYS:
        assert rec.metrics[key] == summary[key] or (rec.metrics[key] is None and summary[key] is None), key
    assert rec.metrics["peak_mem_mb"] is None  # NaN stored as NULL
    assert rec.acceptance_by_position == summary["acceptance_by_position"]

    loaded = store.load_trace(run_id)
    assert loaded.to_dict() == trace.to_dict()
    assert loaded.summary().to_dict() == summary
    assert math.isnan(loaded.steps[1].bonus_p)

    # prefix lookups, and a JSON-serialisable record
    assert store.get_run(run_id[:8]).id == run_id
    d = rec.to_dict()
    assert isinstance(d["created_at"], str) and d["created_at"].startswith(str(rec.created_at.year))
    import json
    json.dumps(d, allow_nan=False)
    with pytest.raises(StoreError, match="no run with id"):
        store.get_run("0" * 32)


def test_steps_are_typed_rows(store: RunStore) -> None:
    trace = make_trace()
    run_id = start(store)
    store.finish_run(run_id, trace, "x")
    with store.session_scope() as s:
        rows = s.scalars(select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.idx)).all()
        assert [r.idx for r in rows] == [0, 1, 2, 3]
        assert rows[1].kind == "decode" and rows[1].tokens == [21, 31, 41] and rows[1].parents == [-1, 0, 1]
        assert rows[1].q == [0.9, None, 0.25] and rows[1].bonus_p is None and rows[2].bonus_p == 0.75
    # finish_run makes the stored steps exactly the trace's, even after streaming extra ones
    run2 = start(store)
    store.append_steps(run2, make_trace(n_decode=5).steps)
    store.finish_run(run2, trace, "x")
    assert len(store.load_trace(run2).steps) == len(trace.steps)


def test_failed_run_keeps_partial_steps(store: RunStore) -> None:
    trace = make_trace()
    run_id = start(store)
    store.append_steps(run_id, trace.steps[:2])
    store.fail_run(run_id, "CUDA out of memory")
    rec = store.get_run(run_id)
    assert rec.status == "failed" and rec.error == "CUDA out of memory" and rec.stop_reason == "error"
    assert rec.finished_at is not None
    assert rec.output_ids == trace.steps[0].committed + trace.steps[1].committed
    loaded = store.load_trace(run_id)
    assert [s.to_dict() for s in loaded.steps] == [s.to_dict() for s in trace.steps[:2]]

    # with a partial trace: its steps are written too, nothing is pruned
    run2 = start(store)
    store.append_steps(run2, trace.steps[:1])
    partial = make_trace()
    partial.steps = partial.steps[:3]
    partial.stop_reason = ""
    store.fail_run(run2, "interrupted", trace=partial, output_text="partial")
    rec2 = store.get_run(run2)
    assert rec2.status == "failed" and rec2.output_text == "partial" and rec2.stop_reason == "error"
    assert len(store.load_trace(run2).steps) == 3
    assert rec2.metrics["new_tokens"] == partial.summary().new_tokens


def test_status_check_constraint(store: RunStore) -> None:
    run_id = start(store)
    with pytest.raises(IntegrityError):
        with store.session_scope() as s:
            s.get(Run, run_id).status = "paused"
    assert store.get_run(run_id).status == "running"  # rolled back
    with pytest.raises(IntegrityError):
        with store.session_scope() as s:
            s.execute(text("INSERT INTO benchmarks (id, created_at, suite, config, env, status) "
                           "VALUES ('b', '2024-01-01 00:00:00', 's', '{}', '{}', 'done')"))


def test_pragmas(store: RunStore) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_list_filters_and_search(store: RunStore) -> None:
    bench = store.start_benchmark(suite="smoke", config={"methods": ["autoregressive"]}, env=ENV)
    a = start(store, method="autoregressive", draft=None, prompt="The capital of France is", source="bench",
              benchmark_id=bench)
    b = start(store, method="speculative", prompt="def fibonacci(n):")
    c = start(store, method="prompt_lookup", draft=None, prompt="Summarise: the 50% rule", target="qwen-0.5b")
    store.finish_run(a, make_trace("autoregressive"), "Paris")
    store.fail_run(c, "boom")

    assert [r.id for r in store.list_runs()] == [c, b, a]  # newest first
    assert [r.id for r in store.list_runs(limit=2)] == [c, b]
    assert [r.id for r in store.list_runs(method="speculative")] == [b]
    assert {r.id for r in store.list_runs(method=["speculative", "prompt_lookup"])} == {b, c}
    assert [r.id for r in store.list_runs(status="failed")] == [c]
    assert [r.id for r in store.list_runs(status="running")] == [b]
    assert [r.id for r in store.list_runs(benchmark_id=bench)] == [a]
    assert [r.id for r in store.list_runs(source="bench")] == [a]
    assert [r.id for r in store.list_runs(search="france")] == [a]  # case-insensitive prompt
    assert [r.id for r in store.list_runs(search="QWEN")] == [c]  # target
    assert [r.id for r in store.list_runs(search="draft")] == [b]  # draft
    assert [r.id for r in store.list_runs(search="lookup")] == [c]  # method
    assert [r.id for r in store.list_runs(search="50%")] == [c]  # LIKE wildcards are escaped
    assert store.list_runs(search="5%") == [] and store.list_runs(search="t_e") == []
    assert store.list_runs(search="nothing like this") == []

    got = store.get_benchmark(bench[:6])
    assert got["suite"] == "smoke" and got["status"] == "running" and got["run_ids"] == [a]
    store.finish_benchmark(bench)
    [listed] = store.list_benchmarks()
    assert listed["status"] == "finished" and listed["n_runs"] == 1 and listed["finished_at"]
    with pytest.raises(StoreError):
        store.finish_benchmark(bench, status="done")
    with pytest.raises(StoreError, match="no benchmark"):
        start(store, benchmark_id="missing")


def _count(store: RunStore, model: type, run_ids: list[str]) -> int:
    with store.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(model.run_id.in_(run_ids)))


def test_delete_cascades(store: RunStore) -> None:
    ids = [start(store) for _ in range(3)]
    for rid in ids:
        store.finish_run(rid, make_trace(), "x")
    assert _count(store, StepRow, ids) == 12 and _count(store, Metric, ids) > 0 and _count(store, RunParam, ids) == 12

    store.delete_run(ids[0][:10])
    assert _count(store, StepRow, ids[:1]) == 0 and _count(store, Metric, ids[:1]) == 0
    assert _count(store, RunParam, ids[:1]) == 0
    assert _count(store, StepRow, ids[1:]) == 8
    assert store.delete_runs([ids[1], ids[2], "f" * 32, ids[1]]) == 2
    assert _count(store, StepRow, ids) == 0 and _count(store, Metric, ids) == 0 and _count(store, RunParam, ids) == 0
    assert store.list_runs() == []
    with pytest.raises(StoreError):
        store.delete_run(ids[0])
    # no orphans at the SQL level either
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0


def test_export_csv(store: RunStore, tmp_path: Path) -> None:
    a = start(store, method="autoregressive", draft=None)
    b = start(store)
    store.finish_run(a, make_trace("autoregressive"), "x")
    store.finish_run(b, make_trace(), "y, with a comma\nand a newline")
    df = store.runs_dataframe()
    assert list(df["id"]) == [b, a]
    assert df.loc[0, "param.gamma"] == 3 and df.loc[0, "prompt"] == "Once upon a time"
    assert df.loc[0, "acceptance_by_position"] == store.get_run(b).acceptance_by_position

    out = tmp_path / "exports" / "runs.csv"
    assert store.export_csv(out) == 2
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    header = list(rows[0])
    for col in ("id", "created_at", "status", "method", "target", "draft", "prompt", "source", "benchmark_id",
                "param.gamma", "param.max_new_tokens", "tokens_per_s", "acceptance_rate",
                "mean_accepted_tokens", "acceptance_by_position"):
        assert col in header, col
    assert rows[0]["output_text"] == "y, with a comma\nand a newline"
    assert store.export_csv(tmp_path / "few.csv", method="autoregressive") == 1
    assert store.export_csv(tmp_path / "none.csv", method="nope") == 0
    assert "id" in (tmp_path / "none.csv").read_text().splitlines()[0]


def test_find_baseline(store: RunStore) -> None:
    prompt, target = "Once upon a time", "smollm2"
    old = start(store, method="autoregressive", draft=None)
    new = start(store, method="autoregressive", draft=None)
    running = start(store, method="autoregressive", draft=None)
    other_len = start(store, method="autoregressive", draft=None, max_new_tokens=32)
    spec = start(store)
    sampled = start(store, method="autoregressive", draft=None,
                    sampling={"temperature": 0.7, "top_k": 50, "top_p": 0.9, "seed": 1})
    for rid in (old, new, other_len, spec, sampled):
        store.finish_run(rid, make_trace(), "x")
    assert running  # still running: never a baseline

    found = store.find_baseline(target=target, prompt=prompt, sampling=GREEDY, max_new_tokens=16)
    assert found is not None and found.id == new
    # greedy: seed / top-k / top-p cannot change the output, ints vs floats do not matter
    assert store.find_baseline(target=target, prompt=prompt, sampling={"temperature": 0, "seed": 9},
                               max_new_tokens=16).id == new
    assert store.find_baseline(target=target, prompt=prompt, sampling=GREEDY, max_new_tokens=32).id == other_len
    assert store.find_baseline(target=target, prompt=prompt, max_new_tokens=16,
                               sampling={"temperature": 0.7, "top_k": 50, "top_p": 0.9, "seed": 1}).id == sampled
    assert store.find_baseline(target=target, prompt=prompt, max_new_tokens=16,
                               sampling={"temperature": 0.7, "top_k": 50, "top_p": 0.9, "seed": 2}) is None
    assert store.find_baseline(target="other", prompt=prompt, sampling=GREEDY, max_new_tokens=16) is None
    assert store.find_baseline(target=target, prompt="other", sampling=GREEDY, max_new_tokens=16) is None
    assert store.find_baseline(target=target, prompt=prompt, sampling=GREEDY, max_new_tokens=64) is None
    assert store.find_baseline(target=target, prompt=prompt, sampling=GREEDY, max_new_tokens=16,
                               env={"device": "cuda"}) is None
    assert store.find_baseline(target=target, prompt=prompt, sampling=GREEDY, max_new_tokens=16,
                               env={"device": "cpu"}).id == new


def test_baseline_for_matches_the_chat_flag_and_finds_an_older_baseline(store: RunStore) -> None:
    """The newest plain run used the chat template, the run did not: the older plain run without it is the baseline."""
    def run(method: str, chat: bool) -> str:
        rid = store.start_run(method=method, target="smollm2", draft=None, prompt="Once upon a time",
                              params={"max_new_tokens": 16, "chat": chat}, sampling=GREEDY, env=ENV)
        store.finish_run(rid, make_trace(), "x")
        return rid

    plain_raw = run("autoregressive", chat=False)
    run("autoregressive", chat=True)  # newer, but another prompt in effect
    spec = run("prompt_lookup", chat=False)
    base = store.baseline_for(spec)
    assert base is not None and base.id == plain_raw
    assert store.baseline_for(plain_raw) is None  # a plain run is not its own baseline


def test_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_info").fetchall() == [(7,)]
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0007",)]
    with RunStore(path) as s:  # reopening an existing file is fine
        assert s.schema_version == 7
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        RunStore(path)


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "notes.sqlite"
    bad.write_text("this is not a database " * 100)
    with pytest.raises(StoreError, match="cannot open"):
        RunStore(bad)


def test_default_path_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "mine.sqlite"
    monkeypatch.setenv("WORKBENCH_DB", str(target))
    assert default_db_path() == target
    with RunStore() as s:
        assert s.path == target
        start(s)
    assert target.exists()
    monkeypatch.delenv("WORKBENCH_DB")
    p = default_db_path()
    assert p.name == "runs.sqlite" and "decoding-workbench" in str(p)


def test_memory_and_url(tmp_path: Path) -> None:
    with RunStore(":memory:") as s:
        rid = start(s)
        assert s.get_run(rid).status == "running" and s.path is None
    url_file = tmp_path / "u" / "runs.sqlite"
    with RunStore(f"sqlite:///{url_file}") as s:
        start(s)
    assert url_file.exists()


def test_threads(store: RunStore) -> None:
    errors: list[BaseException] = []
    trace = make_trace(n_decode=20)

    def work() -> None:
        try:
            for _ in range(3):
                rid = start(store)
                for st in trace.steps:
                    store.append_steps(rid, [st])
                store.finish_run(rid, trace, "t")
                store.list_runs(limit=5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    runs = store.list_runs(limit=None)
    assert len(runs) == 18 and all(r.status == "finished" for r in runs)
    assert all(len(store.load_trace(r.id).steps) == 21 for r in runs[:3])


def test_store_does_not_import_torch() -> None:
    code = ("import sys; import store; s = store.RunStore(':memory:'); s.list_runs(); s.runs_dataframe(); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
