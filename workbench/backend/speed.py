"""Is a reduced precision actually faster here? `precision_speed(spec)` measures it, once per machine.

A ``:bf16``, ``:fp16`` or ``:int8`` copy of a model is only worth using as a
draft if its forward is cheaper than fp32's on *this* machine, and that depends
on the CPU (AVX-512/VNNI/AMX or not), the thread count and the torch version:
bf16 is slower than fp32 on many CPUs, and int8 wins only where the int8 kernel
does. So nothing here assumes; it times it:

    precision_speed("smollm2-135m:int8")
    -> {"spec": "smollm2-135m:int8", "baseline": "smollm2-135m", "ms": 22.1, "baseline_ms": 36.4,
        "speedup": 1.65, "faster": True, "summary": "int8: 1.6x faster than fp32 per token here", ...}

The measurement: the spec and its fp32 baseline (same name and seed, dtype
fp32, no quantisation) each prefill CONTEXT tokens, then take turns running a
forward over `rows` new tokens (default 1, a chain draft step), rolled back
after each; `ms` and `baseline_ms` are medians of `repeats` turns, `speedup`
the median of the per-turn ratios (robust to load from other processes). It runs through the
engine's eager backend, so it times what a draft step costs. Results are cached
in ``$WORKBENCH_CACHE/precision_speed.json`` under a key holding the spec, the
device and its CPU/GPU model, the thread count and the torch version;
`cached_precision_speed` reads that cache without ever measuring (what
`speed_vs_fp32` and `workbench models` show), `precision_speed` measures
on a miss (or with refresh=True). Loading a model never waits for this.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..device import device_sync, processor
from ..models.errors import ModelError
from ..models.loading import load_model, resolve_device
from ..models.specs import normalize_spec, parse_spec
from ..paths import cache_dir, read_json, write_json
from . import open_session

CONTEXT = 32  # cached positions before each measured forward
REPEATS = 15
CACHE_FILE = "precision_speed.json"
MEASURED_PRECISIONS = ("int8", "bf16")  # what `workbench models --measure` times by default


def baseline_spec(spec: str) -> str:
    """The fp32, unquantised spec of the same model (same name, same tiny-random seed)."""
    name, opts = parse_spec(spec)
    return normalize_spec(name, {**opts, "dtype": "fp32", "quant": None})


def precision_label(spec: str) -> str:
    """What the spec changes about precision: "int8", "bf16", "bf16+int8" or "fp32"."""
    _, opts = parse_spec(spec)
    parts = [opts["dtype"]] if opts["dtype"] != "fp32" or not opts["quant"] else []
    return "+".join(parts + ([opts["quant"]] if opts["quant"] else []))


def speed_key(spec: str, device: torch.device, rows: int = 1, threads: int | None = None) -> str:
    return (f"{normalize_spec(*parse_spec(spec))}|{device}|{processor(device)}|rows={rows}"
            f"|threads={threads or torch.get_num_threads()}|torch={torch.__version__}")


def precision_speed(spec: str, device: str | None = None, *, rows: int = 1, repeats: int = REPEATS,
                    refresh: bool = False, progress=None) -> dict[str, Any]:
    """How fast `spec` runs a forward of `rows` tokens against its fp32 baseline here (cached per machine).

    Returns the dict described in the module docstring; `cached` says whether it
    came from the cache. An fp32 spec is its own baseline: speedup None, nothing measured or cached.
    """

    dev = resolve_device(device)
    base = baseline_spec(spec)
    if base == normalize_spec(*parse_spec(spec)):
        return _result(base, base, dev, rows, None, None, None, cached=False)
    key = speed_key(spec, dev, rows)
    data = read_json(_path())
    if not refresh and key in data:
        return {**data[key], "cached": True}
    if progress:
        progress(f"timing {spec} against {base} on {dev} ({rows} token(s) per forward)...")
    lm, ref = load_model(spec, str(dev), progress), load_model(base, str(dev), progress)
    ms, base_ms, speedup = _time_pair(lm, ref, rows, repeats)
    out = _result(lm.spec, ref.spec, dev, rows, ms, base_ms, speedup, cached=False)
    data = read_json(_path())  # another process may have written meanwhile
    data[key] = {k: v for k, v in out.items() if k != "cached"}
    write_json(_path(), data)
    return out


def cached_precision_speed(spec: str, device: str | torch.device | None = None, rows: int = 1) -> dict | None:
    """The cached `precision_speed` result for this machine, or None when it was never measured (no timing)."""
    try:
        dev = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        hit = read_json(_path()).get(speed_key(spec, dev, rows))
    except (ModelError, RuntimeError, ValueError):
        return None
    return {**hit, "cached": True} if hit else None


def cached_precision_speeds(device: str | torch.device | None = None) -> list[dict]:
    """Every cached result measured on this machine: this device, CPU/GPU model, thread count and torch."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = {"device": str(dev), "processor": processor(dev), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    return [{**hit, "cached": True} for hit in read_json(_path()).values()
            if isinstance(hit, dict) and all(hit.get(k) == v for k, v in here.items())]


def speed_summary(precision: str, speedup: float | None, rows: int = 1) -> str:
    """One line: "int8: 1.6x faster than fp32 per token here", or a slower one with advice."""
    if speedup is None:
        return f"{precision}: the reference precision"
    per = "per token" if rows == 1 else f"per {rows}-token forward"
    if speedup >= 1.05:
        return f"{precision}: {speedup:.1f}x faster than fp32 {per} here"
    if speedup > 0.95:
        return f"{precision}: about as fast as fp32 {per} here ({speedup:.2f}x)"
    advice = "prefer fp32 as a draft" if "int8" in precision else "prefer fp32 or int8 as a draft"
    return f"{precision}: {speedup:.1f}x fp32 {per} here (slower; {advice})"


@torch.inference_mode()
def _time_pair(lm, ref, rows: int, repeats: int) -> tuple[float, float, float]:
    """Median ms of one forward over `rows` new tokens for lm and for ref, and the median of the per-turn
    ratios ref/lm. The two take turns, and each turn's ratio compares neighbours in time, so a burst of load
    from another process (which can slow a 2-thread forward many times over) hits both sides alike."""
    if rows < 1 or repeats < 1:
        raise ModelError(f"rows and repeats must be >= 1, got rows={rows}, repeats={repeats}")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(lm.vocab_size, 1000), (1, CONTEXT + rows), generator=g)
    sessions = [open_session("eager", m, CONTEXT + rows) for m in (lm, ref)]
    times: list[list[float]] = [[], []]
    try:
        for s, m in zip(sessions, (lm, ref)):
            s.forward(ids[:, :CONTEXT].to(m.device), keep=1)
        for turn in range(repeats + 1):  # the first turn is a warm-up
            for i, (s, m) in enumerate(zip(sessions, (lm, ref))):
                new = ids[:, CONTEXT:].to(m.device)
                device_sync(m.device)
                t0 = time.perf_counter()
                s.forward(new)
                device_sync(m.device)
                if turn:
                    times[i].append(time.perf_counter() - t0)
                s.crop(CONTEXT)
    finally:
        for s in sessions:
            s.close()
    ratio = statistics.median(b / a for a, b in zip(*times))
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3, ratio


def _result(spec: str, base: str, dev: torch.device, rows: int, ms: float | None, base_ms: float | None,
            speedup: float | None, cached: bool) -> dict[str, Any]:
    label = precision_label(spec)
    return {"spec": spec, "baseline": base, "precision": label, "device": str(dev), "processor": processor(dev),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows,
            "ms": None if ms is None else round(ms, 3), "baseline_ms": None if base_ms is None else round(base_ms, 3),
            "speedup": None if speedup is None else round(speedup, 3),
            "faster": None if speedup is None else speedup >= 1.05,
            "summary": speed_summary(label, speedup, rows), "cached": cached}


def _path() -> Path:
    return cache_dir() / CACHE_FILE


def speed_vs_fp32(lm) -> str | None:
    """The cached `precision_speed` line of a loaded model in a reduced precision (e.g. "int8: 1.4x faster
    than fp32 per token here"); None when it is fp32 or not measured on this machine. Never measures."""
    if lm.quant is None and lm.dtype == torch.float32:
        return None
    measured = cached_precision_speed(lm.spec, lm.device)
    return measured["summary"] if measured else None
