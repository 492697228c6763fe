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

Trusting a profile. Every size is timed in ROUNDS rounds (the sizes take turns, after
a warm-up round); the cached entry keeps each size's median, its *spread* (the
interquartile range of its rounds over their median), the rounds, when it was measured
(UTC, ISO 8601) and how long measuring took. The repeats *disagree* when at least
NOISY_SHARE of the sizes (4 of the 15) spread by more than SPREAD_BOUND: on a quiet
2-core EPYC every size of SmolLM2-135M and of the tiny test model stays under 12%,
while another process computing at the same time pushes most of them past 25%. Such a
measurement is never cached: it is taken again (MEASURE_TRIES in all, each announced
"the machine looks busy ..., measuring again") and then refused with BusyMachineError,
one line saying the machine is busy. On a machine that is always shared (a CI runner,
the test suite, which runs two processes at once) WORKBENCH_NOISY_PROFILES=keep keeps
the least noisy of the tries instead, cached marked noisy (its spread shows it), and
every run reading it says so in a note. A profile cached by an older version (a bare
{size: seconds}: no spread, no date, no noise check) is still listed, as undated, but
measured again before a cost-aware method reads it.

Checked against runs. After a run the engine hands `CostModel.run_notes` the seconds of
each verification forward; when their median ratio to what the profile predicts lies
outside RUNTIME_BOUNDS over at least RUNTIME_MIN_FORWARDS forwards, the run carries a
note and the cached profile is marked stale, so the next cost-aware run measures it again
(announced like a first measurement). A profile measured *because* it was marked stale
and contradicted again is kept, and the note says the difference is the runs' own (a
longer context than the profile's 128 positions, the verification's own work, a busy
spell during the run): the automatic re-measurement happens once, `workbench profile
--refresh` measures again at will.

Profiles of other machines (`workbench profile --import`, workbench.backend.profile_files)
are listed by `cached_profiles()` marked imported, and never read by CostModel.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from ..config import ConfigError
from ..device import device_sync, processor
from ..kernels import plan_for
from ..kernels.build import build_tag
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
# "kbuild" names the build of the workbench's CPU kernels (their source, flags, CPU and torch): a profile measured
# with the kernels of another version of the workbench is measured again, even under the same plan's label
KEY_FIELDS = ("backend", "static", "wrapper", "threads", "torch", "attn", "rounds", "kernels", "kbuild")

# When repeats disagree (see the module docstring): a size whose rounds spread (IQR / median) by more than
# SPREAD_BOUND is unsteady; a measurement with at least NOISY_SHARE of its sizes unsteady is noisy.
SPREAD_BOUND = 0.25
NOISY_SHARE = 0.25
MEASURE_TRIES = 3  # measurements of one profile before refusing it
# A run's verification forwards against the profile: median measured / predicted seconds outside these
# bounds, over at least RUNTIME_MIN_FORWARDS forwards, marks the profile stale. Wide on purpose: a
# verification step also samples and keeps cache entries, and runs at another context length than the
# profile's CONTEXT (a false alarm costs a re-measurement: 10 s to a minute or two on a CPU).
RUNTIME_BOUNDS = (0.5, 2.0)
RUNTIME_MIN_FORWARDS = 8
NOISY_POLICIES = ("refuse", "keep")  # $WORKBENCH_NOISY_PROFILES: what the last of MEASURE_TRIES noisy tries does
THIS_MACHINE = "this machine"  # the `name` of this machine's own rows (imported ones carry theirs)

Timer = Callable[[], float]
Progress = Callable[[str], None]


class BusyMachineError(ConfigError):
    """A cost profile whose repeats kept disagreeing: something else is using the machine (one line)."""


def noisy_policy() -> str:
    """$WORKBENCH_NOISY_PROFILES: "refuse" (the default: BusyMachineError) or "keep" (the least noisy try)."""
    value = os.environ.get("WORKBENCH_NOISY_PROFILES", "").strip().lower() or NOISY_POLICIES[0]
    if value not in NOISY_POLICIES:
        raise ConfigError(f"WORKBENCH_NOISY_PROFILES must be one of {', '.join(NOISY_POLICIES)}, got {value[:40]!r}")
    return value


def _profile_path():
    return cache_dir() / "cost_profiles.json"


def imported_path():
    """Where imported profiles are kept (workbench.backend.profile_files), apart from this machine's own."""
    return cache_dir() / "imported_profiles.json"


def utc_now() -> str:
    """Now, UTC, to the second: '2026-12-07T05:43:06Z'."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- measuring


@torch.inference_mode()
def measure_cost(loaded, backend: str = "eager", sizes=PROFILE_SIZES, context: int = CONTEXT,
                 repeats: int = ROUNDS, *, timer: Timer = time.perf_counter,
                 on_warmup: Callable[[float], None] | None = None) -> dict[int, list[float]]:
    """Seconds of one forward over n new tokens after a `context`-token cache: {n: one per timed round}.

    The sizes take turns, one forward each per round, after one warm-up round: a slow spell of the
    machine then lands on every size alike instead of skewing one (back-to-back repeats per size can make
    a smaller forward look slower than a larger one), and shows as a spread of the rounds.
    timer: the clock read around each forward (a test hands in a fake one); on_warmup(seconds): called
    once the warm-up round is done, with what it took (the timed rounds take about `repeats` times that).
    """
    dev = loaded.device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(loaded.vocab_size, 1000), (1, context + max(sizes)), generator=g).to(dev)
    session = open_session(backend, loaded, context + max(sizes))
    try:
        session.forward(ids[:, :context], keep=1)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(repeats + 1):  # the first round is a warm-up
            for n in sizes:
                device_sync(dev)
                t0 = timer()
                session.forward(ids[:, context:context + n])
                device_sync(dev)
                times[n].append(timer() - t0)
                session.crop(context)
            if r == 0 and on_warmup is not None:
                on_warmup(sum(t[0] for t in times.values()))
        return {n: t[1:] for n, t in times.items()}
    finally:
        session.close()


def relative_spread(times: list[float]) -> float:
    """How much repeated timings disagree: their interquartile range over their median (0 for fewer than two).

    With five rounds this is (4th - 2nd smallest) / median: one stray round changes nothing, two do."""
    if len(times) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return (q3 - q1) / med if med > 0 else 0.0


def summarize_rounds(rounds: dict[int, list[float]]) -> dict[str, Any]:
    """A measurement's entry: the median seconds, the relative spread and the rounds of each size."""
    return {"seconds": {n: statistics.median(t) for n, t in rounds.items()},
            "spread": {n: round(relative_spread(t), 4) for n, t in rounds.items()},
            "rounds": min((len(t) for t in rounds.values()), default=0)}


def unsteady_sizes(spread: dict[int, float]) -> list[int]:
    """The sizes whose repeats disagree: a spread above SPREAD_BOUND."""
    return [n for n, s in sorted(spread.items()) if s > SPREAD_BOUND]


def is_noisy(spread: dict[int, float]) -> bool:
    """Whether a measurement's repeats disagree: at least NOISY_SHARE of its sizes are unsteady."""
    return len(unsteady_sizes(spread)) >= max(1, math.ceil(NOISY_SHARE * len(spread)))


def noise_line(spread: dict[int, float]) -> str:
    """'the repeats of 6 of 15 sizes differ by more than 25%, up to 140%'."""
    bad = unsteady_sizes(spread)
    worst = max(spread.values(), default=0.0)
    return (f"the repeats of {len(bad)} of {len(spread)} sizes differ by more than {SPREAD_BOUND:.0%}, "
            f"up to {worst:.0%}")


def measure_profile(loaded, backend: str = "eager", *, timer: Timer = time.perf_counter,
                    progress: Progress | None = None, tries: int = MEASURE_TRIES, why: str = "",
                    estimate_s: float | None = None) -> dict[str, Any]:
    """Measure a profile until its repeats agree (at most `tries` times) -> its entry; else BusyMachineError
    (or, with WORKBENCH_NOISY_PROFILES=keep, the least noisy try: its spread says it is noisy).

    progress gets the ongoing lines ('measuring this machine's cost profile for X on eager (~12 s)...',
    'the machine looks busy: ...; measuring ... again (2 of 3)...'); estimate_s: how long the last
    measurement of this model took, if known (else the estimate follows the warm-up round); why: why a
    cached one is measured again ('the cached one is stale (...)').
    """
    say = progress or (lambda _msg: None)
    threads = torch.get_num_threads()
    what = f"this machine's cost profile for {loaded.spec} on {backend} with {threads} thread{'s' * (threads != 1)}"

    def announce(eta: float | None) -> None:
        took = "" if not eta else f" (~{eta:.0f} s)" if eta >= 1 else " (under a second)"
        say(f"measuring {what}" + " again" * bool(why) + took + (f": {why}" if why else "") + "...")

    announce(estimate_s)

    def after_warmup(seconds: float) -> None:
        if not estimate_s:
            announce(seconds * ROUNDS)

    policy = noisy_policy()
    started = time.perf_counter()
    least: dict[str, Any] | None = None  # the try with the fewest unsteady sizes
    for attempt in range(1, tries + 1):
        entry = summarize_rounds(measure_cost(loaded, backend, timer=timer,
                                              on_warmup=after_warmup if attempt == 1 else None))
        entry.update(tries=attempt)
        if least is None or len(unsteady_sizes(entry["spread"])) < len(unsteady_sizes(least["spread"])):
            least = entry
        if not is_noisy(entry["spread"]):
            break
        if attempt < tries:
            say(f"the machine looks busy: {noise_line(entry['spread'])}; measuring {what} again ({attempt + 1} of "
                f"{tries})...")
    else:
        if policy != "keep":
            raise BusyMachineError(
                f"the machine looks busy: {what} was measured {tries} time{'s' * (tries != 1)} and its repeats "
                f"disagreed each time (the last: {noise_line(entry['spread'])}); stop what else is running and try "
                "again (or run without cost-aware sizing; WORKBENCH_NOISY_PROFILES=keep keeps the least noisy try)")
        entry = {**least, "tries": tries}
        say(f"the machine looks busy: kept the least noisy of {tries} measurements ({noise_line(entry['spread'])}), "
            "as WORKBENCH_NOISY_PROFILES=keep says")
    entry.update(measured_at=utc_now(), measure_s=round(time.perf_counter() - started, 2))
    return entry


# ---------------------------------------------------------------- the cache


def profile_key(loaded, backend: str = "eager", threads: int | None = None) -> str:
    threads = threads or torch.get_num_threads()
    if backend == "compiled":  # its static verification sizes shape the curve
        backend = f"compiled|static={','.join(map(str, static_buckets())) or 'none'}"
        if cpp_wrapped(loaded.device):
            backend += "|wrapper=cpp"
    attn = "gqa" if gqa_attention_in_effect() else "default"
    plan = plan_for(loaded)
    key = (f"{loaded.spec}|{loaded.device}|{processor(loaded.device)}|backend={backend}|threads={threads}"
           f"|torch={torch.__version__}|attn={attn}|rounds={ROUNDS}|kernels={plan.label()}")
    return key + f"|kbuild={build_tag()}" if plan.mode != "aten" else key


def _sizes(value: Any, what: str) -> dict[int, float]:
    """{size: positive finite number} from a JSON object (keys as text); ValueError naming `what`."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{what} must be a non-empty object of token counts to numbers")
    out: dict[int, float] = {}
    for k, v in value.items():
        try:
            n, x = int(k), float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must map token counts to numbers, got {str(k)[:20]!r}: {str(v)[:20]!r}") \
                from None
        if n < 1 or not math.isfinite(x) or x < 0 or isinstance(v, bool):
            raise ValueError(f"{what} must map token counts >= 1 to finite numbers >= 0, got {n}: {v!r}")
        out[n] = x
    return out


def read_entry(raw: Any) -> dict[str, Any] | None:
    """A cached entry with int sizes: {seconds, spread, measured_at, rounds, tries, measure_s, stale,
    after_stale, legacy}; an older version's bare {size: seconds} is `legacy` (spread and date None);
    None for anything unreadable."""
    if not isinstance(raw, dict):
        return None
    legacy = "seconds" not in raw
    try:
        seconds = _sizes(raw if legacy else raw["seconds"], "seconds")
        spread = None if legacy or raw.get("spread") is None else _sizes(raw["spread"], "spread")
    except ValueError:
        return None
    if any(t <= 0 for t in seconds.values()):
        return None
    get = (lambda _k: None) if legacy else raw.get
    stale = get("stale")
    return {"seconds": seconds, "spread": spread, "measured_at": get("measured_at"), "rounds": get("rounds"),
            "tries": get("tries"), "measure_s": get("measure_s"),
            "stale": stale.get("reason") if isinstance(stale, dict) else None,
            "after_stale": get("after_stale"), "legacy": legacy}


def _stored(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as written to the cache (sizes as text; nothing transient)."""
    out = {"seconds": {str(n): t for n, t in entry["seconds"].items()},
           "spread": {str(n): s for n, s in entry["spread"].items()},
           "measured_at": entry["measured_at"], "rounds": entry["rounds"], "tries": entry["tries"],
           "measure_s": entry["measure_s"]}
    if entry.get("after_stale"):
        out["after_stale"] = entry["after_stale"]
    return out


def _usable(entry: dict[str, Any] | None) -> bool:
    """What a cost-aware method may read: measured by this version (with spreads), not stale, every size, and not
    noisy (unless WORKBENCH_NOISY_PROFILES=keep, which kept it)."""
    return (entry is not None and not entry["legacy"] and not entry["stale"]
            and set(PROFILE_SIZES) <= entry["seconds"].keys()
            and (not is_noisy(entry["spread"] or {}) or noisy_policy() == "keep"))


def _why_again(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if entry["stale"]:
        return f"the cached one is stale ({entry['stale']})"
    if entry["legacy"]:
        return "the cached one was measured by an older version, without a check for a busy machine"
    if is_noisy(entry["spread"] or {}):
        return "the cached one was kept from a busy machine"
    return "the cached one lacks sizes"


def _estimate(data: dict[str, Any], key: str, loaded) -> float | None:
    """Seconds the last measurement of this model took (this key's, else another backend's or thread count's)."""
    prefix = f"{loaded.spec}|{loaded.device}|"
    seen = [raw.get("measure_s") for k, raw in data.items()
            if (k == key or k.startswith(prefix)) and isinstance(raw, dict)]
    seen = [float(s) for s in seen if isinstance(s, (int, float)) and s > 0]
    return max(seen) if seen else None


def profile_entry(loaded, backend: str = "eager", refresh: bool = False, *, progress: Progress | None = None,
                  timer: Timer = time.perf_counter) -> dict[str, Any]:
    """The cached profile entry for this model, device, backend and thread count (read_entry's fields), measured
    (measure_profile) when there is none, or it is stale, legacy or lacks a size of PROFILE_SIZES, or `refresh`;
    a measured entry also has "fresh": True (not stored)."""
    key = profile_key(loaded, backend)
    path = _profile_path()
    data = read_json(path)
    cached = read_entry(data.get(key))
    if not refresh and _usable(cached):
        return cached
    entry = measure_profile(loaded, backend, timer=timer, progress=progress, why="" if refresh else _why_again(cached),
                            estimate_s=_estimate(data, key, loaded))
    entry.update(stale=None, legacy=False, after_stale=cached["stale"] if cached and cached["stale"] else None)
    data = read_json(path)  # another process may have written meanwhile
    data[key] = _stored(entry)
    write_json(path, data)
    return {**entry, "fresh": True}


def cost_profile(loaded, backend: str = "eager", refresh: bool = False,
                 progress: Progress | None = None) -> dict[int, float]:
    """The cached profile's seconds {n: s} (profile_entry: measured on first use, and again when stale, legacy
    or lacking a size)."""
    return profile_entry(loaded, backend, refresh, progress=progress)["seconds"]


def mark_stale(loaded, backend: str, reason: str, measured_at: str | None) -> bool:
    """Mark the cached profile measured at `measured_at` stale, so the next cost-aware run measures it again;
    False when the cache holds another one by now (measured since, by another run or process)."""
    key = profile_key(loaded, backend)
    path = _profile_path()
    data = read_json(path)
    raw = data.get(key)
    if not isinstance(raw, dict) or raw.get("measured_at") != measured_at:
        return False
    raw["stale"] = {"reason": reason, "at": utc_now()}
    write_json(path, data)
    return True


def timing_ratio(seconds: dict[int, float], forwards: list[tuple[int, float]]) -> tuple[float, int] | None:
    """(median of measured / predicted seconds, forwards counted) over (tokens, seconds) forwards; None with
    fewer than RUNTIME_MIN_FORWARDS."""
    ratios = [s / interpolate(seconds, n) for n, s in forwards if n >= 1 and s > 0]
    if len(ratios) < RUNTIME_MIN_FORWARDS:
        return None
    return statistics.median(ratios), len(ratios)


# ---------------------------------------------------------------- listing


def parse_key(key: str) -> dict[str, Any] | None:
    """A cache key's fields: model, device, cpu and KEY_FIELDS' (threads as int); None for an older key."""
    # spec|device|cpu|backend=..[|static=..]|threads=..|torch=..; the spec itself may hold "|" (a
    # layer_skip view: "model|skip=3,4"), so the named fields are read from the right
    parts = key.split("|")
    fields: dict[str, Any] = {}
    while parts and parts[-1].split("=", 1)[0] in KEY_FIELDS:
        name, _, value = parts.pop().partition("=")
        fields[name] = value
    if len(parts) < 3 or "backend" not in fields:
        return None  # written by an older version
    try:
        threads = int(fields.pop("threads", 0))
    except ValueError:
        return None
    fields.pop("rounds", None)  # the entry's own
    return {"model": "|".join(parts[:-2]), "device": parts[-2], "cpu": parts[-1], "static": None, **fields,
            "threads": threads}


def _row(key: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    fields = parse_key(key)
    if fields is None:
        return None
    spread = entry["spread"]
    return {**fields, "seconds": dict(entry["seconds"]), "spread": dict(spread) if spread else None,
            "measured_at": entry["measured_at"], "rounds": entry["rounds"], "stale": entry["stale"],
            "noisy": bool(spread) and is_noisy(spread), "legacy": entry["legacy"], "imported": False,
            "name": THIS_MACHINE}


def profile_table(loaded, backends: list[str], threads: list[int | None], refresh: bool = False,
                  progress: Progress | None = None) -> list[dict[str, Any]]:
    """One row per (backend, thread count): the profile and what it was measured on (cached_profiles' rows)."""
    rows = []
    before = torch.get_num_threads()
    try:
        for n_threads in threads:
            if n_threads:
                torch.set_num_threads(n_threads)
            for backend in backends:
                if progress:
                    progress(f"profiling {loaded.spec} on {backend} with {torch.get_num_threads()} threads...")
                entry = profile_entry(loaded, backend, refresh=refresh, progress=progress)
                rows.append(_row(profile_key(loaded, backend), entry))
    finally:
        torch.set_num_threads(before)
    return rows


def cached_profiles(imported: bool = True) -> list[dict[str, Any]]:
    """Every profile measured on this machine so far (for the app), parsed from the cache keys, then (unless
    imported=False) those imported from other machines (`imported_profiles`).

    A row: model, device, cpu, backend, static, threads, the other key fields (torch, attn, ...), seconds
    {n: s}, spread {n: IQR / median} (None: measured by an older version), measured_at (UTC ISO; None: the
    same), rounds, stale (the reason, or None), noisy, legacy, imported and name (THIS_MACHINE, or the
    imported machine's name)."""
    rows = []
    for key, raw in read_json(_profile_path()).items():
        entry = read_entry(raw)
        row = _row(key, entry) if entry is not None else None
        if row is not None:
            rows.append(row)
    return rows + (imported_profiles() if imported else [])


def profile_row(d: Any) -> dict[str, Any]:
    """A profile row from JSON (an export's or the imported store's), checked: model, backend and cpu text,
    seconds {n >= 1: s > 0}; spread, measured_at and the other fields optional. ValueError says what is wrong."""
    if not isinstance(d, dict):
        raise ValueError("a profile must be a JSON object")
    for name in ("model", "backend", "cpu"):
        if not isinstance(d.get(name), str) or not d[name].strip():
            raise ValueError(f"a profile needs a non-empty text {name!r}")
    seconds = _sizes(d.get("seconds"), "seconds")
    if any(t <= 0 for t in seconds.values()):
        raise ValueError("seconds must be positive")
    spread = None if d.get("spread") is None else _sizes(d["spread"], "spread")
    threads = d.get("threads") or 0
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads must be a whole number, got {threads!r}")
    text = {k: str(v) for k, v in d.items() if k not in ("seconds", "spread", "threads") and
            isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    return {"device": "", "static": None, "measured_at": None, "rounds": None, "stale": None, **text,
            "threads": threads, "seconds": seconds, "spread": spread,
            "noisy": bool(spread) and is_noisy(spread), "legacy": spread is None}


def imported_profiles() -> list[dict[str, Any]]:
    """Profiles imported from other machines (`workbench profile --import`; workbench.backend.profile_files),
    as cached_profiles' rows with imported True, name (the machine's), imported_at and source (the file).
    CostModel never reads them: what a colleague's GPU box measured only ever answers "what if"."""
    rows = []
    for name, machine in sorted(read_json(imported_path()).items()):
        if not isinstance(machine, dict) or not isinstance(machine.get("profiles"), list):
            continue
        for d in machine["profiles"]:
            try:
                row = profile_row(d)
            except ValueError:
                continue  # edited by hand since: skipped, the rest still listed
            row.update(imported=True, name=name, imported_at=machine.get("imported_at"),
                       source=machine.get("source"))
            rows.append(row)
    return rows


# ---------------------------------------------------------------- what drafters read


class CostModel:
    """What forwards cost here: the cost-aware drafters' one reader of the machine's cached profiles.

    A drafter gets it as `DrafterEnv.costs` and never reads the machine itself, so a test hands
    a drafter a stand-in (a subclass whose `profile` returns chosen seconds) through the env.
    progress: where 'measuring this machine's cost profile ...' lines go when a profile must be measured
    first (the run's status line); timer: the clock measuring reads.
    """

    def __init__(self, progress: Progress | None = None, timer: Timer = time.perf_counter) -> None:
        self.progress, self.timer = progress, timer
        self.served: dict[str, tuple[str, str, dict[str, Any]]] = {}  # profile key -> (spec, backend, entry)

    def _served(self) -> dict[str, tuple[str, str, dict[str, Any]]]:
        return vars(self).setdefault("served", {})  # a stand-in subclass may not call __init__

    def profile(self, lm, backend: str = "eager") -> dict[int, float]:
        """Seconds of one forward over n new tokens, for the profile's sizes n (measured on first use)."""
        key = profile_key(lm, backend)
        served = self._served()
        if key not in served:
            entry = profile_entry(lm, backend, progress=getattr(self, "progress", None),
                                  timer=getattr(self, "timer", time.perf_counter))
            served[key] = (lm.spec, backend, entry)
        return served[key][2]["seconds"]

    def seconds(self, lm, backend: str, n: int) -> float:
        """Seconds of one forward over n new tokens (interpolated between the profile's sizes)."""
        return interpolate(self.profile(lm, backend), n)

    def forward_ratios(self, lm, backend: str, most: int) -> tuple[list[float], float]:
        """r[k] = t(k + 1) / t(1) for k = 0..most: what one forward verifying k drafted tokens (and the bonus)
        costs in one-token forwards; and t(1) in seconds."""
        profile = self.profile(lm, backend)
        one = interpolate(profile, 1)
        return [interpolate(profile, k + 1) / one for k in range(most + 1)], one

    def run_notes(self, lm, backend: str, forwards: list[tuple[int, float]]) -> list[dict[str, Any]]:
        """What a run should say about the profiles it read (see the module docstring): each one measured for it
        first, and `lm`'s on `backend` when its verification `forwards` ((tokens, seconds) each) disagree with
        it, which marks it stale. [] for a stand-in that serves its own seconds."""
        served = self._served()
        notes = []
        for spec, b, entry in served.values():
            if is_noisy(entry["spread"] or {}):
                notes.append({"kind": "profile_noisy", "model": spec, "backend": b,
                              "text": f"the cost profile of {spec} on {b} was measured on a busy machine "
                                      f"({noise_line(entry['spread'])}) and kept (WORKBENCH_NOISY_PROFILES=keep): "
                                      "cost-aware decisions may be off"})
            if entry.get("fresh"):
                tries, took = entry.get("tries") or 1, entry.get("measure_s") or 0.0
                notes.append({"kind": "profile_measured", "model": spec, "backend": b, "seconds": took,
                              "text": f"measured this machine's cost profile for {spec} on {b} first ("
                                      + (f"{took:.0f} s" if took >= 1 else "under a second")
                                      + (f", {tries} tries: the machine looked busy" if tries > 1 else "")
                                      + "), before the run's clock started"})
        key = profile_key(lm, backend) if served else None
        if key not in served:
            return notes
        entry = served[key][2]
        checked = timing_ratio(entry["seconds"], forwards)
        if checked is None or RUNTIME_BOUNDS[0] <= checked[0] <= RUNTIME_BOUNDS[1]:
            return notes
        ratio, n = checked
        text = (f"this run's {n} verification forwards took {ratio:.2f}x what the cost profile of {lm.spec} on "
                f"{backend} (measured {entry['measured_at']}) predicts (median): the "
                "machine was busier than when it was measured, or the profile is out of date")
        if entry.get("after_stale"):
            kind = "profile_disagrees"
            text += ("; it was measured again after an earlier run disagreed too, so the difference is the runs' own "
                     "(a longer context than the profile's, the verification's own work, a busy spell): it is kept")
        else:
            kind = "profile_stale"
            mark_stale(lm, backend, f"a run's verification forwards took {ratio:.2f}x its prediction",
                       entry.get("measured_at"))
            del served[key]
            text += "; it is marked stale and the next cost-aware run measures it again"
        notes.append({"kind": kind, "model": lm.spec, "backend": backend, "ratio": round(ratio, 3),
                      "forwards": n, "text": text})
        return notes


def interpolate(profile: dict[int, float], n: int) -> float:
    sizes = sorted(profile)
    if n <= sizes[0]:
        return profile[sizes[0]]
    for a, b in zip(sizes, sizes[1:]):
        if n <= b:
            return profile[a] + (profile[b] - profile[a]) * (n - a) / (b - a)
    a, b = sizes[-2], sizes[-1]
    return profile[b] + (profile[b] - profile[a]) * (n - b) / (b - a)
