"""Where the workbench keeps files on disk: one cache directory for everything it can make again.

Converted models, trained heads found by default, cost profiles, precision timings,
compile times, layer-skip calibrations and the compiled graphs' inductor cache all
live under `cache_dir()`: $WORKBENCH_CACHE, else the user cache dir. (The KV cache of
a decode is another thing: workbench.kv_cache.) The run store has its own location
(store.db). No torch import.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import platformdirs


def cache_dir() -> Path:
    """The workbench's disk cache: $WORKBENCH_CACHE, else the user cache dir."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("decoding-workbench"))


def read_json(path: Path) -> dict:
    """A JSON object cached on disk, or {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never half of either,
    and two processes (or threads) writing at once each write their own temporary file first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    tmp.replace(path)
