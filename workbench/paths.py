"""Where the workbench keeps files on disk: one cache directory for everything it can make again.

Converted models, trained heads found by default, cost profiles, precision timings,
compile times, layer-skip calibrations and the compiled graphs' inductor cache all
live under `cache_dir()`: $WORKBENCH_CACHE, else the user cache dir. (The KV cache of
a decode is another thing: workbench.kv_cache.) The run store has its own location
(store.db). No torch import.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """The workbench's disk cache: $WORKBENCH_CACHE, else the user cache dir."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("decoding-workbench"))
