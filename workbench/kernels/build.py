"""Building the workbench's C++ CPU kernels: once per machine, with the machine's own compiler.

`load_extension()` compiles stream_linear.cpp and row_attention.cpp with torch's extension builder for this
CPU (`-march=native`: AVX-512, AVX2 or plain, whatever the compiler finds here) into the
workbench cache, under a folder named for the source, the flags, the CPU and the torch
version, so a second process loads the built library in a fraction of a second and a
changed source or machine builds anew. Building takes about half a minute and is announced.

Where it cannot be built (no C++ compiler, no ninja, a compiler error) nothing fails: the
reason is logged once, `unavailable_reason()` returns it, and every linear runs through
ATen as before. WORKBENCH_KERNELS=aten skips building altogether.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from ..device import processor
from ..paths import cache_dir

logger = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(n) for n in ("stream_linear.cpp", "row_attention.cpp"))
HEADERS = (Path(__file__).with_name("vec.h"),)  # included by the sources: part of what a build is named for
# -ffp-contract=off: every multiply-add is the explicit fused one or none, the same for every row count
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)
STALE_LOCK_S = 600  # a build lock older than this was left by a killed build

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "ok": bool, "reason": str | None


def build_tag() -> str:
    """The name of this machine's build of the current source: a hash of the sources, the flags, the torch
    version and the CPU."""
    return hashlib.sha256("|".join([*(s.read_text() for s in SOURCES + HEADERS), *CFLAGS, *LDFLAGS,
                                    torch.__version__, processor(torch.device("cpu"))]).encode()).hexdigest()[:16]


def build_dir() -> Path:
    """Where this machine's build of the current source lives."""
    return cache_dir() / "kernels" / build_tag()


def _missing_tool() -> str | None:
    # ninja comes with the workbench's dependencies (pip's ninja, next to this interpreter), which a venv's
    # python run without activating the venv does not have on its PATH
    here = Path(sys.executable).parent
    if shutil.which("ninja") is None and (here / "ninja").is_file():
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler found ({compiler}; install g++ or set $CXX)"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install ninja)"
    return None


def load_extension(progress: Callable[[str], None] | None = None) -> bool:
    """Build (first time here) or load the kernels; True when `torch.ops.workbench_kernels` is usable."""
    with _LOCK:
        if "ok" in _STATE:
            return bool(_STATE["ok"])
        out = build_dir()
        built = out / "workbench_kernels.so"
        if built.is_file():  # built here before: load it as it is (no compiler, no build lock needed)
            try:
                torch.ops.load_library(str(built))
                _STATE["ok"], _STATE["reason"] = True, None
                return True
            except (OSError, RuntimeError):
                pass  # a half-written library (a build interrupted): build it again below
        reason = _missing_tool()
        if reason is None:
            lock = out / "lock"  # torch's builder waits for this file forever; a build takes under a minute
            if lock.is_file() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink(missing_ok=True)  # left by a build that was killed
            if progress:
                progress("building the workbench's CPU kernels for this machine (about 30 s, once)...")
            try:
                from torch.utils.cpp_extension import load

                out.mkdir(parents=True, exist_ok=True)
                load(name="workbench_kernels", sources=[str(s) for s in SOURCES], extra_cflags=list(CFLAGS),
                     extra_ldflags=list(LDFLAGS), build_directory=str(out), is_python_module=False,
                     verbose=False)
            except Exception as exc:  # a compiler error, a broken toolchain: fall back, say why once
                reason = f"building them failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1:]})"
        _STATE["ok"], _STATE["reason"] = reason is None, reason
        if reason is not None:
            logger.warning("the workbench's CPU kernels are unavailable: %s; linears run through ATen", reason)
        return reason is None


def loaded() -> bool:
    """Whether the kernels are loaded in this process (without building or loading them)."""
    return _STATE.get("ok") is True


def unavailable_reason() -> str | None:
    """Why the kernels could not be loaded in this process (None: loaded, or not tried yet)."""
    return _STATE.get("reason")  # type: ignore[return-value]
