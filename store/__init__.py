"""Run store: every decoding run and benchmark, logged to one SQLite file.

Usage::

    from store import RunStore

    store = RunStore()                      # $WORKBENCH_DB or the user data dir
    run_id = store.start_run(method="speculative", target=..., draft=..., prompt=...,
                             params={...}, sampling={...}, env={...})
    store.append_steps(run_id, trace.steps)  # optional, while decoding
    store.finish_run(run_id, trace, output_text)
    store.get_run(run_id[:8]).metrics["tokens_per_s"]

Importing this package loads SQLAlchemy and ``workbench.trace`` only (no torch,
no transformers), so history views start quickly.
"""
from .db import StoreError, default_db_path
from .models import RUN_STATUSES, SCHEMA_VERSION
from .records import METRIC_KEYS, RunRecord
from .repository import RunStore, same_sampling

__all__ = ["METRIC_KEYS", "RUN_STATUSES", "RunRecord", "RunStore", "SCHEMA_VERSION", "StoreError",
           "default_db_path", "same_sampling"]
