"""Engine, sessions and connection settings for the run store.

One SQLite file holds every run. Each :class:`~store.repository.RunStore` owns
one Engine and one sessionmaker. Every new DBAPI connection gets the pragmas
the store relies on:

- ``journal_mode=WAL``: readers (the history tab) never block the writer (a
  run streaming its steps), and the reverse;
- ``foreign_keys=ON``: SQLite ignores foreign keys unless asked, and deleting a
  run relies on ``ON DELETE CASCADE`` to remove its params, metrics and steps;
- ``busy_timeout=5000``: a writer waits up to 5 s for another writer's lock
  instead of failing at once with "database is locked" (and the write methods
  retry past that, see :mod:`store.retry`);
- ``synchronous=NORMAL``: the usual, still crash-safe, setting under WAL.

Connections are opened with ``check_same_thread=False`` so that the pooled
connections can be used from any worker thread (one session per thread, one
connection per session). ``:memory:`` databases use a single shared connection
(``StaticPool``), otherwise each connection would see its own empty database.

No torch or transformers import here or anywhere in ``store``.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

BUSY_TIMEOUT_MS = 5000
APP_NAME = "decoding-workbench"
DB_FILENAME = "runs.sqlite"
ENV_VAR = "WORKBENCH_DB"


class StoreError(Exception):
    """A run store problem the caller can act on (unknown id, newer schema, unreadable file)."""


def default_db_path() -> Path:
    """Where runs are stored by default: ``$WORKBENCH_DB`` if set, else the user data dir."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / DB_FILENAME


def _is_url(target: str) -> bool:
    return target.startswith(("sqlite:", "sqlite+"))


def resolve_url(path: str | Path | None) -> tuple[URL, Path | None]:
    """Turn a file path, ``":memory:"`` or an SQLite URL into a URL (and the file path, if any).

    ``None`` means ``$WORKBENCH_DB`` (which may itself be a URL or ``:memory:``)
    or else :func:`default_db_path`. Parent folders of a file are created.
    """
    if path is None:
        env = os.environ.get(ENV_VAR, "").strip()
        path = env if env and (env == ":memory:" or _is_url(env)) else default_db_path()
    text = str(path)
    if text == ":memory:":
        return URL.create("sqlite", database=":memory:"), None
    if _is_url(text):
        url = make_url(text)
        if url.get_backend_name() != "sqlite":
            raise StoreError(f"the run store only supports SQLite, got {text!r}")
        db = url.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            file = Path(db).expanduser()
            file.parent.mkdir(parents=True, exist_ok=True)
            return url, file
        return url, None
    file = Path(text).expanduser()
    if file.is_dir():
        raise StoreError(f"run store path {file} is a directory; give a file name such as {file / DB_FILENAME}")
    file.parent.mkdir(parents=True, exist_ok=True)
    return URL.create("sqlite", database=str(file)), file


def _json_default(obj: Any) -> Any:
    # env dicts sometimes carry objects such as torch.dtype or Path: store their text.
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def set_pragmas(dbapi_connection: Any, busy_timeout_ms: int, foreign_keys: bool = True) -> None:
    """The store's pragmas on one DBAPI connection (a read-only file keeps its journal mode)."""
    cur = dbapi_connection.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                raise
        cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def make_engine(url: URL, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An Engine for ``url`` with the store's pragmas installed on every new connection."""
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        "json_serializer": json_dumps,
    }
    if url.database in (None, "", ":memory:"):
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", lambda conn, _record: set_pragmas(conn, busy_timeout_ms))
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects read inside a scope stay usable after it closes.
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success, rolls back on error and always closes."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def nan_to_none(value: Any) -> Any:
    """NaN floats become None so they are stored as NULL / JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
