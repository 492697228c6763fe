"""Costs measured per machine: seconds of one forward over n new tokens, per model, backend and threads.

What makes a drafting method win or lose on a machine is the shape of this curve:
on a GPU a forward over dozens of tokens costs what one does; on a small CPU a few
tokens already cost more, unless the backend pre-packs its weights (compiled).
Cost-aware methods (speculative gamma=0, sequoia, lookahead, layer_skip, the
cost-sized trees and gates) size their drafts from it through `CostModel`, the one
reader they get in their DrafterEnv; `workbench profile` prints it and the app's
Latency tab draws it. A profile is
measured once and cached in the workbench cache dir under a key holding the model
spec (so its dtype), the device and its CPU/GPU model, the backend, the thread
count and the torch version: machines differ, and nothing here assumes one.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from ..device import device_sync, processor
from ..models.loading import gqa_attention_in_effect
from ..paths import cache_dir, read_json, write_json
from . import open_session
from .compiled import cpp_wrapped, static_buckets

# 9 and 17: one past the compiled backend's static sizes 8 and 16, where its cost steps up (a forward of 9 runs
# the 16-token graph, one of 17 the shape-dynamic one), so that interpolating between sizes does not smooth the
# steps away
PROFILE_SIZES = (1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17, 24, 32, 48, 64)
CONTEXT = 128  # cached positions before the measured forward
ROUNDS = 5  # timed forwards per size (medians), the sizes taking turns
# the named fields at the end of a profile's key; "wrapper" (the compiled CPU graphs' C++ wrappers) and
# "rounds" (timed rounds per size) are part of it, so a profile cached without them (by an older version of the
# workbench, which measured other graphs or measured another way) does not match and is measured again
KEY_FIELDS = ("backend", "static", "wrapper", "threads", "torch", "attn", "rounds")


def _profile_path():
    return cache_dir() / "cost_profiles.json"


@torch.inference_mode()
def measure_cost(loaded, backend: str = "eager", sizes=PROFILE_SIZES, context: int = CONTEXT,
                 repeats: int = ROUNDS) -> dict[int, float]:
    """Median seconds of one forward over n new tokens after a `context`-token cache.

    The sizes take turns, one forward each per round, after one warm-up round: a slow spell of the
    machine then lands on every size alike instead of skewing one (back-to-back repeats per size can make
    a smaller forward look slower than a larger one).
    """
    dev = loaded.device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(loaded.vocab_size, 1000), (1, context + max(sizes)), generator=g).to(dev)
    session = open_session(backend, loaded, context + max(sizes))
    try:
        session.forward(ids[:, :context], keep=1)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(repeats + 1):  # the first round is a warm-up
            for n in sizes:
                device_sync(dev)
                t0 = time.perf_counter()
                session.forward(ids[:, context:context + n])
                device_sync(dev)
                times[n].append(time.perf_counter() - t0)
                session.crop(context)
        return {n: statistics.median(t[1:]) for n, t in times.items()}
    finally:
        session.close()


def profile_key(loaded, backend: str = "eager", threads: int | None = None) -> str:
    threads = threads or torch.get_num_threads()
    if backend == "compiled":  # its static verification sizes shape the curve
        backend = f"compiled|static={','.join(map(str, static_buckets())) or 'none'}"
        if cpp_wrapped(loaded.device):
            backend += "|wrapper=cpp"
    attn = "gqa" if gqa_attention_in_effect() else "default"
    return (f"{loaded.spec}|{loaded.device}|{processor(loaded.device)}|backend={backend}|threads={threads}"
            f"|torch={torch.__version__}|attn={attn}|rounds={ROUNDS}")


def cost_profile(loaded, backend: str = "eager", refresh: bool = False) -> dict[int, float]:
    """The cached profile for this model, device, backend and thread count (measured on first use, and again
    when the cached one lacks a size of PROFILE_SIZES: written by an older version)."""
    key = profile_key(loaded, backend)
    path = _profile_path()
    data = read_json(path)
    if refresh or key not in data or not {str(n) for n in PROFILE_SIZES} <= data[key].keys():
        measured = {str(n): t for n, t in measure_cost(loaded, backend).items()}
        data = read_json(path)  # another process may have written meanwhile
        data[key] = measured
        write_json(path, data)
    return {int(n): t for n, t in data[key].items()}


def profile_table(loaded, backends: list[str], threads: list[int | None], refresh: bool = False,
                  progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per (backend, thread count): the profile and what it was measured on."""
    rows = []
    before = torch.get_num_threads()
    try:
        for n_threads in threads:
            if n_threads:
                torch.set_num_threads(n_threads)
            for backend in backends:
                if progress:
                    progress(f"profiling {loaded.spec} on {backend} with {torch.get_num_threads()} threads...")
                rows.append({"model": loaded.spec, "device": str(loaded.device), "cpu": processor(loaded.device),
                             "backend": backend, "threads": torch.get_num_threads(),
                             "seconds": cost_profile(loaded, backend, refresh=refresh)})
    finally:
        torch.set_num_threads(before)
    return rows


def cached_profiles() -> list[dict[str, Any]]:
    """Every profile measured on this machine so far (for the app), parsed from the cache keys."""
    rows = []
    for key, prof in read_json(_profile_path()).items():
        # spec|device|cpu|backend=..[|static=..]|threads=..|torch=..; the spec itself may hold "|" (a
        # layer_skip view: "model|skip=3,4"), so the named fields are read from the right
        parts = key.split("|")
        fields = {}
        while parts and parts[-1].split("=", 1)[0] in KEY_FIELDS:
            name, _, value = parts.pop().partition("=")
            fields[name] = value
        if len(parts) < 3 or "backend" not in fields:
            continue  # written by an older version
        rows.append({"model": "|".join(parts[:-2]), "device": parts[-2], "cpu": parts[-1],
                     "backend": fields["backend"], "static": fields.get("static"),
                     "threads": int(fields.get("threads", 0)), "seconds": {int(n): t for n, t in prof.items()}})
    return rows


class CostModel:
    """What forwards cost here: the cost-aware drafters' one reader of the machine's cached profiles.

    A drafter gets it as `DrafterEnv.costs` and never reads the machine itself, so a test hands
    a drafter a stand-in (a subclass whose `profile` returns chosen seconds) through the env.
    """

    def profile(self, lm, backend: str = "eager") -> dict[int, float]:
        """Seconds of one forward over n new tokens, for the profile's sizes n (measured on first use)."""
        return cost_profile(lm, backend)

    def seconds(self, lm, backend: str, n: int) -> float:
        """Seconds of one forward over n new tokens (interpolated between the profile's sizes)."""
        return interpolate(self.profile(lm, backend), n)

    def forward_ratios(self, lm, backend: str, most: int) -> tuple[list[float], float]:
        """r[k] = t(k + 1) / t(1) for k = 0..most: what one forward verifying k drafted tokens (and the bonus)
        costs in one-token forwards; and t(1) in seconds."""
        profile = self.profile(lm, backend)
        one = interpolate(profile, 1)
        return [interpolate(profile, k + 1) / one for k in range(most + 1)], one


def interpolate(profile: dict[int, float], n: int) -> float:
    sizes = sorted(profile)
    if n <= sizes[0]:
        return profile[sizes[0]]
    for a, b in zip(sizes, sizes[1:]):
        if n <= b:
            return profile[a] + (profile[b] - profile[a]) * (n - a) / (b - a)
    a, b = sizes[-2], sizes[-1]
    return profile[b] + (profile[b] - profile[a]) * (n - b) / (b - a)
