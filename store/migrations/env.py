"""Alembic environment of the run store, configured in code (no alembic.ini).

:mod:`store.schema` runs the migrations on a connection it hands over in
``config.attributes["connection"]``; that connection already holds the write
lock (``BEGIN IMMEDIATE``) with foreign keys off, so an upgrade is one
transaction that other processes wait for, and rebuilding a table (SQLite's
"batch" ALTER) cannot cascade-delete its children. Alembic's own commands also
work through :func:`store.schema.alembic_config`, e.g. a new revision::

    from alembic import command
    from store.schema import alembic_config
    command.revision(alembic_config("scratch.sqlite"), message="...", rev_id="0003", autogenerate=True)
"""
from __future__ import annotations

from alembic import context

from store.models import Base


def _configure(**kwargs) -> None:
    # render_as_batch: SQLite alters most things by copying the table (Alembic's batch mode).
    context.configure(target_metadata=Base.metadata, render_as_batch=True, **kwargs)
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        _configure(url=url, literal_binds=True)
        return
    from store import db

    engine = db.make_engine(db.resolve_url(url)[0])
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            conn.commit()
    finally:
        engine.dispose()


run()
