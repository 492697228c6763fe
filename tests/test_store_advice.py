"""The ``advice`` table: an advice round-trips, points at its benchmarks, is reaped when its process dies,
and a version-3 file (trainings, no advice) upgrades to it keeping its rows."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import update

from store import SCHEMA_REVISION, SCHEMA_VERSION, RunStore, StoreError
from store.models import Advice

from .helpers import dead_pid

REQUEST = {"target": "tiny-random", "budget_s": 30.0, "methods": None}


@pytest.fixture
def store(tmp_path: Path):
    s = RunStore(tmp_path / "advice.sqlite")
    yield s
    s.close()


def _start(store: RunStore) -> str:
    return store.start_advice(target="tiny-random", backend="eager", request=REQUEST,
                              command="workbench advise --target tiny-random", env={"cpu": "x"})


def test_round_trip_and_benchmarks(store: RunStore) -> None:
    aid = _start(store)
    a = store.get_advice(aid[:8])
    assert a["status"] == "running" and a["request"] == REQUEST and a["result"] == {}
    assert a["probe_benchmark_id"] is None and a["command"] == "workbench advise --target tiny-random"
    probe = store.start_benchmark(suite="builtin", config={}, env={})
    store.update_advice(aid, probe_benchmark_id=probe, result={"configs": [], "x": float("nan")})
    assert store.get_advice(aid)["result"] == {"configs": [], "x": None}  # strict JSON: NaN is null
    with pytest.raises(StoreError, match="no benchmark"):
        store.update_advice(aid, verify_benchmark_id="f" * 32)
    store.finish_advice(aid, result={"recommended": "sam"})
    a = store.get_advice(aid)
    assert a["status"] == "finished" and a["finished_at"] and a["result"] == {"recommended": "sam"}
    assert a["probe_benchmark_id"] == probe
    assert [x["id"] for x in store.list_advice()] == [aid] and store.list_advice(target="other") == []
    with pytest.raises(StoreError, match="no advice"):
        store.finish_advice("0" * 32)


def test_an_advice_whose_process_died_is_interrupted(store: RunStore) -> None:
    aid = _start(store)
    with store.session_scope() as s:
        s.execute(update(Advice).where(Advice.id == aid).values(owner_pid=dead_pid()))
    a = store.list_advice()[0]
    assert a["status"] == "interrupted" and "killed or exited" in a["error"]
    store.update_advice(aid, result={"partial": True})  # its owner was only slow: running again
    assert store.get_advice(aid)["status"] == "running"


def test_a_version_3_file_upgrades_keeping_its_rows(tmp_path: Path) -> None:
    from alembic import command

    from store.schema import alembic_config

    path = tmp_path / "v3.sqlite"
    with RunStore(path) as s:
        tid = s.start_training(kind="eagle", target="tiny-random", out_dir=None, config={}, env={})
    command.downgrade(alembic_config(str(path)), "0003")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'advice'").fetchall() == []
    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION and [t["id"] for t in s.list_trainings()] == [tid]
        assert s.list_advice() == []
        _start(s)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_REVISION,)]
