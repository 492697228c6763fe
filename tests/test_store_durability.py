"""Nothing lost: killed runs become `interrupted`, locks delay writes, old files are upgraded, bad files say so."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import URL

import workbench.api as api
import workbench.record as record
from workbench.record import RunResult
from store import RUN_STATUSES, SCHEMA_REVISION, SCHEMA_VERSION, RunStore, StoreError, db, liveness
from store.models import Benchmark, Run, utcnow
from workbench.cli import main as cli_main

from .helpers import dead_pid

ROOT = Path(__file__).resolve().parents[1]
V1 = Path(__file__).with_name("data") / "store_v1.sqlite"
TINY = dict(target="tiny-random", chat=False, device="cpu")


def _start(store: RunStore, **kw) -> str:
    return store.start_run(method="autoregressive", target="tiny-random", draft=None, prompt="p",
                           params={"max_new_tokens": 4}, sampling={}, env={}, **kw)


def _set(store: RunStore, model, row_id: str, **values) -> None:
    with store.session_scope() as s:
        s.execute(update(model).where(model.id == row_id).values(**values))


# ---------------------------------------------------------------- interrupted runs

CHILD = r"""
import sys, time
import torch
import workbench.api as api
from workbench.record import RunResult
import workbench.record as record
from store import RunStore

torch.set_num_threads(1)
record.STEP_FLUSH_EVERY = 2

def wait_to_be_killed(step, trace):
    if len(trace.steps) >= 12:  # 12 steps are stored by now (flushed before this callback)
        time.sleep(600)

api.run("autoregressive", "Hello there", target="tiny-random", chat=False, max_new_tokens=400, device="cpu",
        store=RunStore(sys.argv[1]), on_step=wait_to_be_killed)
"""


def _stored_steps(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM steps").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.slow  # a child process that decodes until killed
def test_killed_run_is_interrupted_with_its_steps(tmp_path, capsys):
    path = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # a guard against a hung child, not a timing assertion
        while _stored_steps(path) < 12:
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never stored its steps"
            time.sleep(0.05)
        with RunStore(path) as s:
            assert [r.status for r in s.list_runs()] == ["running"]  # its owner is alive: left alone
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()

    with RunStore(path) as s:
        (rec,) = s.list_runs()
        assert rec.status == "interrupted" and rec.stop_reason == "interrupted"
        assert f"pid {child.pid}" in rec.error and "12 steps kept" in rec.error
        trace = s.load_trace(rec.id)
        assert len(trace.steps) == 12
        assert rec.output_ids == trace.output_ids and rec.metrics["new_tokens"] == len(trace.output_ids)
    assert cli_main(["--db", str(path), "runs", "list"]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and rec.id[:12] in out
    assert cli_main(["--db", str(path), "runs", "list", "--status", "interrupted"]) == 0
    assert rec.id[:12] in capsys.readouterr().out
    assert cli_main(["--db", str(path), "runs", "show", rec.id[:8], "--steps"]) == 0
    shown = capsys.readouterr().out
    assert "[interrupted]" in shown and "step   11" in shown


def test_owner_checks(tmp_path):
    store = RunStore(tmp_path / "owners.sqlite")
    me = liveness.this_process()
    live, dead, reused, far_fresh, far_stale, ownerless = (_start(store) for _ in range(6))
    _set(store, Run, dead, owner_pid=dead_pid())
    _set(store, Run, reused, owner_started=me.started - 3600)  # our pid, but a process started an hour ago
    _set(store, Run, far_fresh, owner_host="elsewhere", owner_pid=1)
    old = utcnow() - timedelta(seconds=liveness.STALE_AFTER_S + 60)
    _set(store, Run, far_stale, owner_host="elsewhere", owner_pid=1, heartbeat_at=old)
    _set(store, Run, ownerless, owner_pid=None, owner_host=None, owner_started=None, heartbeat_at=None,
         created_at=old)
    bench = store.start_benchmark(suite="smoke", config={}, env={})
    _set(store, Benchmark, bench, owner_pid=dead_pid())
    assert store.reap_interrupted() == 5

    status = {r.id: r for r in store.list_runs()}
    assert status[live].status == status[far_fresh].status == "running"
    for rid, words in ((dead, "was killed or exited"), (reused, "pid now belongs to another process"),
                       (far_stale, "no heartbeat from pid 1 on elsewhere"),
                       (ownerless, "did not record its process")):
        assert status[rid].status == "interrupted" and words in status[rid].error, status[rid].error
        assert "0 steps kept" in status[rid].error and store.load_trace(rid).steps == []
    b = store.get_benchmark(bench)
    assert b["status"] == "interrupted" and "was killed" in b["error"]

    # an owner that was only slow writes again: the row goes back to its true state
    from workbench.trace import Step

    store.append_steps(dead, [Step(index=0, kind="prefill", bonus_token=5, committed=[5])])
    assert store.get_run(dead).status == "running" and store.get_run(dead).error is None
    store.finish_run(reused, store.load_trace(reused), "")
    assert store.get_run(reused).status == "finished"
    assert "interrupted" in RUN_STATUSES
    store.close()


def test_heartbeat_is_written_with_steps_throttled(tmp_path, monkeypatch):
    from workbench.trace import Step

    store = RunStore(tmp_path / "beat.sqlite")
    rid = _start(store)
    old = utcnow() - timedelta(hours=1)

    def beat() -> object:
        with store.session_scope() as s:
            return s.get(Run, rid).heartbeat_at

    _set(store, Run, rid, heartbeat_at=old)
    store.append_steps(rid, [Step(index=0, kind="prefill", bonus_token=5, committed=[5])])
    assert beat() == old  # just started: not due yet
    monkeypatch.setattr(liveness, "HEARTBEAT_EVERY_S", 0.0)
    store.append_steps(rid, [Step(index=1, kind="decode", bonus_token=6, committed=[6])])
    assert beat() > old
    with store.session_scope() as s:
        run = s.get(Run, rid)
        me = liveness.this_process()
        assert (run.owner_pid, run.owner_host, run.owner_started) == (me.pid, me.host, me.started)
    store.close()


def test_history_tab_offers_interrupted():
    import ui.tabs.history as history

    assert "interrupted" in history.RUN_STATUSES


# ---------------------------------------------------------------- locks and broken stores

def test_locked_database_delays_writes_not_the_run(tmp_path, monkeypatch, caplog):
    path = tmp_path / "locked.sqlite"
    store = RunStore(path, busy_timeout=0.05)
    monkeypatch.setattr(record, "STEP_FLUSH_EVERY", 2)
    held = threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(1.5)
        conn.execute("COMMIT")
        conn.close()

    def lock_at_step_3(step, trace) -> None:
        if len(trace.steps) == 3:
            threading.Thread(target=hold_lock, daemon=True).start()
            held.wait()

    caplog.set_level(logging.DEBUG, logger="store")
    res = api.run("autoregressive", "Hello there", max_new_tokens=30, store=store, on_step=lock_at_step_3, **TINY)
    rec = store.get_run(res.run_id)
    assert rec.status == "finished"
    stored = store.load_trace(res.run_id).steps
    assert [s.committed for s in stored] == [s.committed for s in res.trace.steps]
    assert any("database is locked" in r.getMessage() for r in caplog.records)
    store.close()


def test_lock_that_outlasts_the_retries_is_one_store_error(tmp_path):
    path = tmp_path / "stuck.sqlite"
    store = RunStore(path, busy_timeout=0.02, retry_for=0.3)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="stayed locked by another writer"):
            _start(store)
        assert store.list_runs() == []  # readers are not blocked (WAL)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert store.get_run(_start(store)).status == "running"
    store.close()


def _break(store: RunStore, tmp_path: Path):
    """Point the store at a file that cannot be opened; returns a function that heals it."""
    engine, sessions = store.engine, store._sessions
    store.engine = db.make_engine(URL.create("sqlite", database=str(tmp_path / "no" / "such" / "dir.sqlite")))
    store._sessions = db.make_sessionmaker(store.engine)

    def heal() -> None:
        store.engine.dispose()
        store.engine, store._sessions = engine, sessions

    return heal


def test_failed_step_writes_do_not_stop_the_decode(tmp_path, monkeypatch, caplog):
    store = RunStore(tmp_path / "flaky.sqlite")
    monkeypatch.setattr(record, "STEP_FLUSH_EVERY", 2)
    heal = []

    def flaky(step, trace) -> None:
        if len(trace.steps) == 3:
            heal.append(_break(store, tmp_path))
        if len(trace.steps) == 15:
            heal.pop()()

    res = api.run("autoregressive", "Hello there", max_new_tokens=24, store=store, on_step=flaky, **TINY)
    assert store.get_run(res.run_id).status == "finished"
    assert len(store.load_trace(res.run_id).steps) == len(res.trace.steps) == 24
    warnings = [r for r in caplog.records if "could not write steps" in r.getMessage()]
    assert len(warnings) == 1 and "unable to open database file" in warnings[0].getMessage()
    store.close()


def test_broken_store_does_not_hide_the_decode_error(tmp_path, monkeypatch, caplog):
    store = RunStore(tmp_path / "broken.sqlite")
    monkeypatch.setattr(record, "STEP_FLUSH_EVERY", 2)

    def break_then_fail(step, trace) -> None:
        if len(trace.steps) == 3:
            _break(store, tmp_path)
        if len(trace.steps) == 6:
            raise RuntimeError("device fell over")

    with pytest.raises(RuntimeError, match="device fell over") as info:
        api.run("autoregressive", "Hello there", max_new_tokens=24, store=store, on_step=break_then_fail, **TINY)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "unable to open database file" in notes or sys.version_info < (3, 11)
    assert any("could not record the run as failed" in r.getMessage() for r in caplog.records)
    store.close()


def test_four_threads_one_file(tmp_path, monkeypatch):
    path = tmp_path / "shared.sqlite"
    RunStore(path).close()
    monkeypatch.setattr(record, "STEP_FLUSH_EVERY", 1)  # as many writes as possible
    prompts = ["Hello there", "Once upon a time", "abc abc abc", "The capital of France is"]
    results: dict[str, RunResult] = {}
    errors: list[BaseException] = []

    def work(prompt: str) -> None:
        try:
            with RunStore(path, busy_timeout=0.05) as store:
                results[prompt] = api.run("autoregressive", prompt, max_new_tokens=20, store=store, **TINY)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with RunStore(path) as store:
        runs = store.list_runs()
        assert len(runs) == 4 and {r.status for r in runs} == {"finished"}
        for res in results.values():
            assert [s.committed for s in store.load_trace(res.run_id).steps] == \
                [s.committed for s in res.trace.steps]


# ---------------------------------------------------------------- schema versions

def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


V1_RUN_COLS = ("id, created_at, finished_at, status, error, method, target, draft, prompt, prompt_json, prompt_ids, "
               "output_text, output_ids, sampling, env, trace_params, acceptance_by_position, benchmark_id, source, "
               "stop_reason")


def test_version_1_file_is_upgraded_in_place(tmp_path):
    path = tmp_path / "runs.sqlite"
    shutil.copy(V1, path)
    before = {t: _rows(path, f"SELECT {cols} FROM {t} ORDER BY 1, 2")
              for t, cols in (("runs", V1_RUN_COLS), ("params", "*"), ("metrics", "*"), ("steps", "*"),
                              ("benchmarks", "*"))}
    stuck = [r[0] for r in before["runs"] if r[3] == "running"]
    assert len(before["runs"]) == 5 and len(stuck) == 1 and _rows(path, "SELECT version FROM schema_info") == [(1,)]

    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        recs = {r.id: r for r in s.list_runs()}
        assert recs[stuck[0]].status == "interrupted" and "3 steps kept" in recs[stuck[0]].error
        assert len(s.load_trace(stuck[0]).steps) == 3
        assert s.list_benchmarks()[0]["n_finished"] == 1
        new = _start(s)
        s.finish_run(new, s.load_trace(stuck[0]), "again")
        assert s.get_run(new).status == "finished"
    assert _rows(path, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]
    assert _rows(path, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert _rows(path, "PRAGMA foreign_key_check") == [] and _rows(path, "PRAGMA integrity_check") == [("ok",)]

    after_runs = [r for r in _rows(path, f"SELECT {V1_RUN_COLS} FROM runs ORDER BY 1, 2") if r[0] != new]
    assert [r for r in after_runs if r[0] not in stuck] == [r for r in before["runs"] if r[0] not in stuck]
    kept = lambda r: r[:2] + r[5:12] + r[13:16] + r[17:19]  # noqa: E731 - all but the closing fields
    assert [kept(r) for r in after_runs if r[0] in stuck] == [kept(r) for r in before["runs"] if r[0] in stuck]
    assert [r for r in _rows(path, "SELECT * FROM params ORDER BY 1, 2") if r[0] != new] == before["params"]
    steps = [r for r in _rows(path, "SELECT * FROM steps ORDER BY 1, 2") if r[0] != new]
    assert [r[:-1] for r in steps] == before["steps"] and {r[-1] for r in steps} == {0}  # + draft_forwards, 0
    metrics = [r for r in _rows(path, "SELECT * FROM metrics ORDER BY 1, 2") if r[0] not in (new, *stuck)]
    assert metrics == [r for r in before["metrics"] if r[0] not in stuck]
    assert [r[:8] for r in _rows(path, "SELECT * FROM benchmarks ORDER BY 1")] == before["benchmarks"]


def test_two_processes_opening_an_old_file_upgrade_it_once(tmp_path):
    path = tmp_path / "runs.sqlite"
    shutil.copy(V1, path)
    counts, errors = [], []

    def open_it() -> None:
        try:
            with RunStore(path) as s:
                counts.append((s.schema_version, len(s.list_runs())))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]  # each opens its own connections
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert counts == [(SCHEMA_VERSION, 5)] * 4
    assert _rows(path, "SELECT count(*) FROM steps") == [(39,)]


def test_schema_matches_the_models_both_ways(tmp_path):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from store.models import Base
    from store.schema import alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_REVISION
    migrated, upgraded = tmp_path / "migrated.sqlite", tmp_path / "upgraded.sqlite"
    command.upgrade(alembic_config(str(migrated)), "head")  # every revision from an empty file
    shutil.copy(V1, upgraded)
    for path in (migrated, upgraded):
        with RunStore(path) as s, s.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        checks = " ".join(sql for (sql,) in _rows(path, "SELECT sql FROM sqlite_master WHERE type = 'table'"))
        assert checks.count("'failed', 'interrupted')") == 4  # runs, benchmarks, trainings and advice


def test_newer_version_is_refused(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    for sql, shown in (("UPDATE alembic_version SET version_num = '0008'", "version 8"),
                       ("UPDATE alembic_version SET version_num = 'f00dcafe'", "version f00dcafe")):
        with sqlite3.connect(path) as conn:
            conn.execute(sql)
        with pytest.raises(StoreError, match=f"{shown}, newer than this version of the workbench supports"):
            RunStore(path)


@pytest.mark.parametrize("kind", ["random bytes", "directory", "other database"])
def test_bad_files_give_one_store_error(tmp_path, kind):
    path = tmp_path / "runs.sqlite"
    if kind == "random bytes":
        path.write_bytes(os.urandom(8192))
        match = "cannot open the run store"
    elif kind == "directory":
        path.mkdir()
        match = "is a directory"
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE recipes (name TEXT)")
        match = "not a run store"
    with pytest.raises(StoreError, match=match) as info:
        RunStore(path)
    assert "\n" not in str(info.value)


def _read_only_stores(tmp_path: Path):
    path = tmp_path / "ro.sqlite"
    with RunStore(path) as s:
        rid = _start(s)
        s.finish_run(rid, s.load_trace(rid), "done")
    yield "uri", f"sqlite:///file:{path}?mode=ro&uri=true", rid
    if os.geteuid() != 0:  # root writes through file modes
        path.chmod(0o444)
        yield "chmod", path, rid


def test_read_only_store_lists_but_does_not_record(tmp_path):
    for _, where, rid in _read_only_stores(tmp_path):
        with RunStore(where) as s:
            assert [r.id for r in s.list_runs()] == [rid] and s.get_run(rid).output_text == "done"
            with pytest.raises(StoreError, match="is read-only"):
                _start(s)
    old = tmp_path / "old.sqlite"
    shutil.copy(V1, old)
    with pytest.raises(StoreError, match="read-only and needs an upgrade from version 1"):
        RunStore(f"sqlite:///file:{old}?mode=ro&uri=true")


@pytest.mark.parametrize("run_id,message", [("0123456789abcdef", "no run with id '0123456789abcdef'"),
                                            ("", "empty run id")])
def test_unknown_run_id_is_one_line_exit_2(tmp_path, capsys, run_id, message):
    assert cli_main(["--db", str(tmp_path / "ids.sqlite"), "runs", "show", run_id]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
