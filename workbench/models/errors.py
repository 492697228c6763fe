"""The model loader's errors and user-facing lines: no torch import, so the CLI can catch them cheaply.

`ModelError` is every problem a user can fix (a bad spec, a missing package, a
model that cannot load); its message is one clear line. The progress helpers
pass loading messages to an optional callback; `announce` prints to stderr when
there is none, for slow one-time work the user should hear about.
"""
from __future__ import annotations

import sys
from typing import Callable

Progress = Callable[[str], None]


class ModelError(Exception):
    """A user-facing problem loading a model; the message is one clear line."""


class IncompatibleModelsError(ModelError):
    """A draft model whose vocabulary differs from the target's."""


def tell(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def announce(progress: Progress | None, message: str) -> None:
    """A message the user should see even without a progress callback (slow, one-time work)."""
    if progress is not None:
        progress(message)
    else:
        print(message, file=sys.stderr, flush=True)


def short(exc: BaseException, limit: int = 200) -> str:
    """An exception as one line of at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
