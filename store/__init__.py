"""Run store: every decoding run, benchmark and training, logged to one SQLite file.

Usage::

    from store import RunStore

    store = RunStore()                      # $WORKBENCH_DB or the user data dir
    run_id = store.start_run(method="speculative", target=..., draft=..., prompt=...,
                             params={...}, sampling={...}, env={...})
    store.append_steps(run_id, trace.steps)  # optional, while decoding
    store.finish_run(run_id, trace, output_text)
    store.get_run(run_id[:8]).metrics["tokens_per_s"]

A run killed mid-decode is shown as ``interrupted`` (with the steps it had
written) the next time any process opens the store; a locked file delays a
write instead of failing it; older files are upgraded in place (Alembic
migrations in ``store/migrations``).

Importing this package loads SQLAlchemy, psutil and ``workbench.trace`` only
(no torch, no transformers; Alembic only when a file needs creating or
upgrading), so history views start quickly.
"""
from workbench.config import TRAINING_KINDS

from .db import StoreError, default_db_path
from .models import RUN_STATUSES, SCHEMA_REVISION, SCHEMA_VERSION
from .records import METRIC_KEYS, RunRecord
from .repository import RunStore, same_sampling

__all__ = ["METRIC_KEYS", "RUN_STATUSES", "RunRecord", "RunStore", "SCHEMA_REVISION", "SCHEMA_VERSION", "StoreError",
           "TRAINING_KINDS", "default_db_path", "same_sampling"]
