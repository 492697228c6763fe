"""Bounded retry with backoff for store writes that meet another writer's lock.

SQLite lets one writer at a time hold a file. ``busy_timeout`` (store.db) makes
a writer wait for the lock, but some waits end early with "database is locked"
anyway (a WAL reader that wants to write after another commit, a lock held
longer than the timeout). A locked database should delay a decode's write, not
fail the run, so every write method of :class:`~store.repository.RunStore` is
wrapped in :func:`writes`: each call is one transaction, rolled back on error,
so running it again is safe. Retries back off exponentially (with jitter, so
that several waiting writers do not wake together) until ``RunStore.retry_for``
seconds have passed. Any other database error, or a lock that outlasts the
budget, becomes one :class:`~store.db.StoreError` line naming the file.
"""
from __future__ import annotations

import functools
import logging
import random
import time
from typing import Any, Callable, TypeVar

from sqlalchemy.exc import DatabaseError, IntegrityError

from .db import StoreError

log = logging.getLogger("store")

RETRY_FOR_S = 30.0  # how long a write keeps retrying a locked database before it gives up
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 1.0

_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (extended codes keep these in their low byte)
_BUSY_WORDS = ("database is locked", "database table is locked", "database is busy")

F = TypeVar("F", bound=Callable[..., Any])


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / busy errors (wrapped by SQLAlchemy or not)."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _BUSY_CODES:
        return True
    return any(w in str(orig).lower() for w in _BUSY_WORDS)


def is_read_only(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    return "readonly database" in str(orig).lower() or "read-only" in str(orig).lower()


def write_error(where: str, exc: BaseException) -> str:
    """One line for a write that failed for good."""
    orig = getattr(exc, "orig", None) or exc
    if is_read_only(exc):
        return f"the run store at {where} is read-only ({orig}); runs can be listed but not recorded"
    if is_busy(exc):
        return f"the run store at {where} stayed locked by another writer ({orig}); try again when it is free"
    return f"cannot write to the run store at {where}: {orig}"


def writes(method: F) -> F:
    """Decorate a RunStore write method: retry while the database is locked, then one StoreError."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_for
        delay = FIRST_DELAY_S
        attempt = 1
        while True:
            try:
                return method(self, *args, **kwargs)
            except IntegrityError:
                raise  # a broken invariant is a bug to see, not a store condition to report
            except DatabaseError as exc:
                if not is_busy(exc) or time.monotonic() + delay > deadline:
                    raise StoreError(write_error(self.where, exc)) from exc
                log.debug("%s: %s (attempt %d); retrying in %.2f s", method.__name__, exc.orig, attempt, delay)
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(2 * delay, MAX_DELAY_S)
                attempt += 1

    return wrapper  # type: ignore[return-value]
