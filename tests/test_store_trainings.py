"""The ``trainings`` table: a training round-trips, updates, is reaped when its trainer dies, upgrades from v2."""
from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, update

from store import SCHEMA_REVISION, SCHEMA_VERSION, TRAINING_KINDS, RunStore, StoreError, liveness
from store.models import Training, utcnow

from .helpers import dead_pid

V1 = Path(__file__).with_name("data") / "store_v1.sqlite"
KEYS = {"id", "created_at", "finished_at", "status", "error", "kind", "target", "out_dir", "config", "data", "curves",
        "accuracy", "timings", "env", "owner_pid", "owner_host", "owner_started", "heartbeat_at"}
CONFIG = {"steps": 200, "lr": 3e-4, "heads": 3, "prompts": "smoke"}
ENV = {"device": "cpu", "torch": "2.13.0"}


@pytest.fixture
def store(tmp_path: Path):
    s = RunStore(tmp_path / "train.sqlite")
    yield s
    s.close()


def _start(store: RunStore, kind: str = "eagle", target: str = "smollm2-135m") -> str:
    return store.start_training(kind=kind, target=target, out_dir=Path("/tmp/heads") / kind, config=CONFIG, env=ENV)


def _set(store: RunStore, tid: str, **values) -> None:
    with store.session_scope() as s:
        s.execute(update(Training).where(Training.id == tid).values(**values))


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_round_trip(store: RunStore) -> None:
    tid = _start(store)
    t = store.get_training(tid)
    assert set(t) == KEYS and len(tid) == 32
    assert t["status"] == "running" and t["kind"] == "eagle" and t["target"] == "smollm2-135m"
    assert t["out_dir"] == "/tmp/heads/eagle" and t["config"] == CONFIG and t["env"] == ENV
    assert t["data"] == t["curves"] == t["accuracy"] == t["timings"] == {} and t["finished_at"] is None
    me = liveness.this_process()
    assert (t["owner_pid"], t["owner_host"], t["owner_started"]) == (me.pid, me.host, me.started)

    data = {"prompts": 64, "responses": 64, "tokens": 8192, "heldout_tokens": 1024}
    store.update_training(tid, data=data)
    acc = {"top1": [0.6, 0.4, 0.25], "top5": [0.85, 0.7, 0.5], "acceptance_estimate": 1.9}
    timings = {"generate_s": 40.0, "features_s": 5.5, "train_s": 120.25, "total_s": 166.0}
    store.finish_training(tid, accuracy=acc, timings=timings)
    t = store.get_training(tid)
    assert t["status"] == "finished" and t["error"] is None
    assert t["data"] == data and t["accuracy"] == acc and t["timings"] == timings
    assert t["finished_at"] >= t["created_at"] and t["created_at"].endswith("+00:00")
    json.dumps(t, allow_nan=False)

    failed = _start(store, kind="medusa")
    store.finish_training(failed, "failed", "CUDA out of memory")
    t = store.get_training(failed)
    assert t["status"] == "failed" and t["error"] == "CUDA out of memory" and t["accuracy"] == {}


def test_curves_are_replaced_and_each_update_is_a_heartbeat(store: RunStore) -> None:
    tid = _start(store)
    store.update_training(tid, data={"responses": 8})
    old = utcnow() - timedelta(hours=1)
    _set(store, tid, heartbeat_at=old)
    store.update_training(tid, curves={"loss": [[0, 9.0], [10, 6.5]], "lr": [[0, 0.0], [10, 3e-4]]})
    t = store.get_training(tid)
    assert t["curves"] == {"loss": [[0, 9.0], [10, 6.5]], "lr": [[0, 0.0], [10, 3e-4]]}
    assert t["data"] == {"responses": 8}  # fields not given stay
    assert t["heartbeat_at"] > old.isoformat() and t["status"] == "running"
    store.update_training(tid, curves={"loss": [(0, 9.0), (10, 6.5), (20, 5.0)], "token_loss": [[20, 4.0]]})
    assert store.get_training(tid)["curves"] == {"loss": [[0, 9.0], [10, 6.5], [20, 5.0]], "token_loss": [[20, 4.0]]}
    _set(store, tid, heartbeat_at=old)
    store.update_training(tid)  # no fields: only the heartbeat
    assert store.get_training(tid)["heartbeat_at"] > old.isoformat()


def test_list_filter_prefix_and_delete(store: RunStore) -> None:
    assert store.list_trainings() == []
    a, b, c = _start(store), _start(store, kind="hydra"), _start(store, kind="eagle", target="tiny-random")
    assert [t["id"] for t in store.list_trainings()] == [c, b, a]  # newest first
    assert [t["id"] for t in store.list_trainings(kind="eagle")] == [c, a]
    assert [t["id"] for t in store.list_trainings(kind="eagle", target="smollm2-135m")] == [a]
    assert store.list_trainings(kind="draft") == []
    assert store.get_training(b[:8])["id"] == b and store.get_training(f" {b.upper()} ")["id"] == b
    store.delete_training(b[:10])
    assert [t["id"] for t in store.list_trainings()] == [c, a]
    assert set(TRAINING_KINDS) == {"eagle", "medusa", "hydra", "eagle3", "dflash", "pard", "draft"}


def test_unknown_ids_and_bad_values_are_store_errors(store: RunStore) -> None:
    tid = _start(store)
    missing = "0" * 32 if not tid.startswith("0") else "f" * 32
    for call in (lambda: store.get_training(missing), lambda: store.update_training(missing, curves={}),
                 lambda: store.finish_training(missing), lambda: store.delete_training(missing)):
        with pytest.raises(StoreError, match=f"no training with id '{missing}'"):
            call()
    with pytest.raises(StoreError, match="empty training id"):
        store.get_training("  ")
    with pytest.raises(StoreError, match="kind must be one of eagle, medusa, hydra, eagle3, dflash, pard, draft, got .lookahead."):
        store.start_training(kind="lookahead", target="x", out_dir=None, config={}, env={})
    with pytest.raises(StoreError, match="needs a target"):
        store.start_training(kind="eagle", target=" ", out_dir=None, config={}, env={})
    with pytest.raises(StoreError, match="status must be one of"):
        store.finish_training(tid, "done")
    with pytest.raises(StoreError, match="training curves must be a dict, got list"):
        store.update_training(tid, curves=[[0, 1.0]])
    assert store.get_training(tid)["status"] == "running"


def test_json_refuses_nan(store: RunStore) -> None:
    """NaN and infinities are stored as null (strict JSON any reader can parse); numpy values as plain ones."""
    nan, inf = float("nan"), float("inf")
    tid = store.start_training(kind="draft", target="smollm2-135m", out_dir=None,
                               config={"lr": nan, "betas": (0.9, 0.95), "dtype": np.dtype("float32")}, env={})
    store.update_training(tid, curves={"loss": [[0, 2.5], [1, nan], [2, inf], [3, -inf]]},
                          data={"tokens": np.int64(4096)})
    store.finish_training(tid, accuracy={"top1": np.array([0.5, np.nan], dtype=np.float32), "top5": [nan]},
                          timings={"total_s": np.float64(1.5)})
    t = store.get_training(tid)
    assert t["config"] == {"lr": None, "betas": [0.9, 0.95], "dtype": "float32"}
    assert t["curves"] == {"loss": [[0, 2.5], [1, None], [2, None], [3, None]]}
    assert t["data"] == {"tokens": 4096} and t["accuracy"] == {"top1": [0.5, None], "top5": [None]}
    assert t["timings"] == {"total_s": 1.5} and t["out_dir"] is None
    json.dumps(t, allow_nan=False)
    (row,) = _rows(store.path, "SELECT config, data, curves, accuracy, timings FROM trainings")
    for text in row:  # each column as stored is strict JSON
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=pytest.fail)


def test_a_killed_trainers_training_is_interrupted_with_its_curves(store: RunStore) -> None:
    live, dead, far = _start(store), _start(store, kind="medusa"), _start(store, kind="hydra")
    curves = {"loss": [[0, 3.0], [5, 2.0]]}
    store.update_training(dead, curves=curves)
    _set(store, dead, owner_pid=dead_pid())
    _set(store, far, owner_host="elsewhere", owner_pid=1,
         heartbeat_at=utcnow() - timedelta(seconds=liveness.STALE_AFTER_S + 60))
    by_id = {t["id"]: t for t in store.list_trainings()}  # listing reaps
    assert by_id[live]["status"] == "running" and by_id[live]["error"] is None
    assert by_id[dead]["status"] == "interrupted" and "was killed or exited" in by_id[dead]["error"]
    assert by_id[dead]["curves"] == curves and by_id[dead]["finished_at"] is not None
    assert by_id[far]["status"] == "interrupted" and "no heartbeat from pid 1 on elsewhere" in by_id[far]["error"]
    assert store.reap_interrupted() == 0  # already done

    # the owner was only slow: its next update puts the row back in its true state
    store.update_training(far, curves={"loss": [[0, 1.0]]})
    t = store.get_training(far)
    assert t["status"] == "running" and t["error"] is None and t["finished_at"] is None
    assert t["owner_host"] == liveness.this_process().host
    store.finish_training(far)
    assert store.get_training(far)["status"] == "finished"


def _to_version_2(path: Path) -> None:
    """A version-2 file with rows: the version-1 test file, migrated by revision 0002 only (foreign keys off)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from store.schema import alembic_config

    shutil.copy(V1, path)
    engine = create_engine(f"sqlite:///{path}")  # SQLite's default: foreign keys off, like store.schema
    try:
        with engine.begin() as conn:
            cfg = alembic_config(connection=conn)
            MigrationContext.configure(conn).stamp(ScriptDirectory.from_config(cfg), "0001")
            command.upgrade(cfg, "0002")
    finally:
        engine.dispose()


def test_version_2_file_is_upgraded_to_the_newest(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from store.models import Base

    path = tmp_path / "v2.sqlite"
    _to_version_2(path)
    assert _rows(path, "SELECT version FROM schema_info") == [(2,)]
    assert _rows(path, "SELECT version_num FROM alembic_version") == [("0002",)]
    tables = lambda: {n for (n,) in _rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}  # noqa: E731
    assert "trainings" not in tables()
    before = {t: _rows(path, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("params", "metrics", "steps")}

    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert len(s.list_runs()) == 5 and s.list_trainings() == []
        tid = s.start_training(kind="eagle", target="tiny-random", out_dir=None, config={}, env={})
        s.finish_training(tid)
        with s.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert "trainings" in tables()
    assert _rows(path, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert _rows(path, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]
    assert _rows(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'trainings' "
                       "AND name NOT LIKE 'sqlite_%'") == [("ix_trainings_created_at",)]
    assert _rows(path, "SELECT * FROM params ORDER BY 1, 2") == before["params"]
    steps = _rows(path, "SELECT * FROM steps ORDER BY 1, 2")
    assert [r[:-1] for r in steps] == before["steps"] and {r[-1] for r in steps} <= {0}  # + draft_forwards, 0
    assert _rows(path, "PRAGMA foreign_key_check") == [] and _rows(path, "PRAGMA integrity_check") == [("ok",)]
    with RunStore(path) as s:
        assert [t["id"] for t in s.list_trainings()] == [tid]


def test_version_3_downgrades_to_2(tmp_path: Path) -> None:
    from alembic import command

    from store.schema import alembic_config

    path = tmp_path / "down.sqlite"
    with RunStore(path) as s:
        _start(s)
    command.downgrade(alembic_config(str(path)), "0002")
    assert _rows(path, "SELECT version FROM schema_info") == [(2,)]
    assert _rows(path, "SELECT name FROM sqlite_master WHERE name LIKE '%trainings%'") == []
    with RunStore(path) as s:  # and up again
        assert s.schema_version == SCHEMA_VERSION and s.list_trainings() == []
