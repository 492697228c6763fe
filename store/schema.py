"""The store's schema version: create a new file at the newest version, upgrade an older one, refuse a newer one.

Versions are Alembic revisions in ``store/migrations/versions`` (version N is
revision ``"000N"``). A file records its version twice: Alembic's
``alembic_version`` table, and ``schema_info.version`` (the only record in
version-1 files, which predate Alembic). Opening a store:

- already at :data:`~store.models.SCHEMA_REVISION`: nothing to do (read only,
  no Alembic import, so opening stays fast and works on read-only files);
- empty file: ``create_all`` and stamp the head revision;
- older: upgraded in place, keeping every row;
- newer than this code knows, or an SQLite file that is not a run store: StoreError.

Creating and upgrading run in one ``BEGIN IMMEDIATE`` transaction on a
connection of their own with foreign keys off (rebuilding ``runs`` must not
cascade-delete its steps); a second process opening the file at the same time
waits for the lock, then finds the work done.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError
from sqlalchemy.pool import NullPool

from . import db
from .db import StoreError
from .models import SCHEMA_REVISION, SCHEMA_VERSION, Base, SchemaInfo, utcnow
from .retry import is_read_only

MIGRATIONS = Path(__file__).with_name("migrations")
_OWN_TABLES = {"runs", "params", "metrics", "steps", "benchmarks", "trainings", "advice", "schema_info",
               "alembic_version"}


@dataclass(frozen=True)
class SchemaState:
    tables: frozenset[str]
    revision: str | None  # alembic_version.version_num
    version: int | None  # schema_info.version

    @property
    def at_head(self) -> bool:
        return self.revision == SCHEMA_REVISION and self.version == SCHEMA_VERSION

    @property
    def current(self) -> str | None:
        """The file's revision (version-1 files have only schema_info)."""
        if self.revision is not None:
            return self.revision
        return None if self.version is None else f"{self.version:04d}"


def read_state(conn: Connection) -> SchemaState:
    tables = frozenset(inspect(conn).get_table_names())
    revision = version = None
    if "alembic_version" in tables:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if "schema_info" in tables:
        version = conn.execute(text("SELECT version FROM schema_info")).scalar()
    return SchemaState(tables, revision, version)


def _version_of(revision: str) -> int | None:
    return int(revision) if revision.isdigit() else None


def _check_known(state: SchemaState, where: str) -> None:
    """Refuse files this code cannot read: other SQLite databases, newer versions."""
    if state.tables and ("runs" not in state.tables or state.current is None):
        others = ", ".join(sorted(state.tables - _OWN_TABLES)[:5]) or ", ".join(sorted(state.tables))
        raise StoreError(f"{where} is an SQLite database but not a run store (tables: {others}); "
                         f"give another file")
    found = [v for v in (state.version, _version_of(state.revision or "")) if v is not None]
    unknown = state.revision is not None and _version_of(state.revision) is None
    if unknown or any(v > SCHEMA_VERSION for v in found):
        shown = state.revision if unknown else max(found)
        raise StoreError(
            f"the run store at {where} has schema version {shown}, newer than this version of the workbench "
            f"supports ({SCHEMA_VERSION}); upgrade the workbench or point {db.ENV_VAR} at another file")


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Any:
    """An Alembic Config for the store's migrations (for ``connection``, or ``url`` in Alembic's own commands)."""
    from alembic.config import Config  # here: as in _create_or_upgrade

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", str(url))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _migration_engine(url: URL, busy_timeout_ms: int) -> Engine:
    engine = create_engine(url, poolclass=NullPool,
                           connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite: let "begin" below issue the BEGIN
        db.set_pragmas(dbapi_connection, busy_timeout_ms, foreign_keys=False)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _create_or_upgrade(conn: Connection, where: str) -> None:
    # here: Alembic loads only to create or upgrade a file; opening an up-to-date store (`workbench runs list`)
    # does without it
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    state = read_state(conn)  # again, now that this connection holds the write lock
    _check_known(state, where)
    if state.revision == SCHEMA_REVISION:
        return
    cfg = alembic_config(connection=conn)
    script = ScriptDirectory.from_config(cfg)
    if not state.tables:
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaInfo).values(id=1, version=SCHEMA_VERSION, created_at=utcnow()))
        MigrationContext.configure(conn).stamp(script, "head")
        return
    if state.revision is None:  # version 1 predates Alembic: record where it stands first
        MigrationContext.configure(conn).stamp(script, state.current)
    dangling = len(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall())
    command.upgrade(cfg, "head")
    if len(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) > dangling:
        raise StoreError(f"upgrading the run store at {where} would break references between its tables; "
                         f"the file was left as it was")


def ensure_schema(engine: Engine, url: URL, where: str, busy_timeout_ms: int) -> None:
    """Bring the store at ``url`` to the newest schema (see the module docstring)."""
    with engine.connect() as conn:
        state = read_state(conn)
    if state.at_head:
        return
    _check_known(state, where)
    if url.database in (None, "", ":memory:"):  # always new, on one shared connection: nothing to lock
        with engine.begin() as conn:
            _create_or_upgrade(conn, where)
        return
    mig = _migration_engine(url, busy_timeout_ms)
    try:
        with mig.begin() as conn:
            _create_or_upgrade(conn, where)
    except StoreError:
        raise
    except Exception as exc:  # rolled back: the file is as it was
        action = f"an upgrade from version {_version_of(state.current or '')}" if state.tables else "its tables"
        if isinstance(exc, DatabaseError) and is_read_only(exc):
            raise StoreError(f"the run store at {where} is read-only and needs {action}; "
                             f"open it once with write access") from exc
        orig = getattr(exc, "orig", None) or exc
        raise StoreError(f"the run store at {where} needs {action}, which failed ({type(orig).__name__}: {orig}); "
                         f"the file was left as it was") from exc
    finally:
        mig.dispose()
