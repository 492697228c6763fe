"""How far a speedup can be trusted: its baseline's age, backend and machine, and its spread over repeats.

A speedup is this run's tokens/s over its plain-decoding baseline's (store.RunStore.baseline_for: the
same prompt, settings, device, dtype and backend). What the card then says about it, from plain data:

- ``baseline_facts(run, base, now)``: the baseline's run id, tokens/s, backend and age, and how its
  machine (CPU, GPU, cores) or its timing settings (torch threads, torch version) differ from the run's,
  read from each run's env (workbench.record.environment). A baseline older than STALE_AFTER_S, or from
  another machine or other settings, gets a "Re-run baseline" button (``rerun_label``).
- ``speedup_lines(facts, spread, variation)``: the card's lines: the baseline, then either the median
  and range over stored repeats (workbench.metrics.speedup_spread) or, for a single run, the measured
  run-to-run variation of single runs on this machine (workbench.metrics.run_to_run_variation), or a
  plain statement that one run is no measurement of noise when nothing was ever repeated here.

Runs come in as store.RunRecord objects or dicts with the same keys; nothing here reads the store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from workbench.metrics import SpeedupSpread, Variation

from .base import _get, _nan

# A baseline older than this is offered a re-run: since then the machine's load, clocks, torch or the
# thread count may have changed, and a speedup against it says less about now. A day.
STALE_AFTER_S = 24 * 3600
MACHINE_FIELDS = (("cpu", "CPU"), ("gpu", "GPU"), ("cpu_count", "cores"))  # what names the machine
SETTING_FIELDS = (("torch_threads", "torch threads"), ("torch", "torch"))  # what else sets the pace on it


@dataclass
class BaselineFacts:
    """The baseline a speedup is against, as the card shows it."""

    run_id: str
    tokens_per_s: float
    backend: str
    age_s: float | None  # None: its time is not known
    machine_diffs: list[str] = field(default_factory=list)  # "CPU X (this run: Y)", ...
    setting_diffs: list[str] = field(default_factory=list)  # "torch threads 4 (this run: 8)", ...

    @property
    def stale(self) -> bool:
        return self.age_s is not None and self.age_s > STALE_AFTER_S

    @property
    def other_machine(self) -> bool:
        return bool(self.machine_diffs)

    @property
    def rerun(self) -> bool:
        """Whether the card offers to run the baseline again (stale, another machine, other settings)."""
        return self.stale or self.other_machine or bool(self.setting_diffs)


def _as_utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _diffs(run_env: dict[str, Any], base_env: dict[str, Any], fields) -> list[str]:
    """Each field both envs record and disagree on: 'CPU X (this run: Y)'. A field either lacks is unknown, not
    a difference (runs stored before it was recorded)."""
    out = []
    for key, label in fields:
        a, b = run_env.get(key), base_env.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"{label} {b} (this run: {a})")
    return out


def baseline_facts(run: Any, base: Any, now: datetime | None = None) -> BaselineFacts:
    """What the card says about `base`, the plain-decoding baseline of `run` (both stored runs)."""
    now = now or datetime.now(timezone.utc)
    created = _as_utc(_get(base, "created_at"))
    run_env, base_env = _get(run, "env", None) or {}, _get(base, "env", None) or {}
    tps = (_get(base, "metrics", None) or {}).get("tokens_per_s")
    return BaselineFacts(run_id=str(_get(base, "id", "")), tokens_per_s=float("nan") if tps is None else float(tps),
                         backend=base_env.get("backend") or "eager",
                         age_s=None if created is None else max(0.0, (now - created).total_seconds()),
                         machine_diffs=_diffs(run_env, base_env, MACHINE_FIELDS),
                         setting_diffs=_diffs(run_env, base_env, SETTING_FIELDS))


def age_text(seconds: float | None) -> str:
    """'just now', '12 min old', '3 h old', '2 days old' ('age unknown' for None)."""
    if seconds is None or _nan(seconds):
        return "age unknown"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min old"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h old"
    return f"{seconds / 86400:.0f} days old"


def baseline_line(facts: BaselineFacts) -> str:
    """'vs 7.1 tok/s plain decoding · run ab12cd34 · eager · 3 h old · this machine'."""
    where = "another machine" if facts.other_machine else "this machine"
    return (f"vs {facts.tokens_per_s:.1f} tok/s plain decoding · run {facts.run_id[:8]} · {facts.backend} · "
            f"baseline {age_text(facts.age_s)} · {where}")


def rerun_reasons(facts: BaselineFacts) -> list[str]:
    """Why the baseline should be run again ([] when it need not be)."""
    out = []
    if facts.stale:
        out.append(f"older than {STALE_AFTER_S // 3600} h")
    if facts.machine_diffs:
        out.append("from another machine: " + ", ".join(facts.machine_diffs))
    if facts.setting_diffs:
        out.append("with other settings: " + ", ".join(facts.setting_diffs))
    return out


def spread_line(spread: SpeedupSpread) -> str:
    """'median 1.42× (1.31–1.55×) over 3 runs and 2 baselines of these settings'."""
    return (f"median {spread.median:.2f}× ({spread.low:.2f}–{spread.high:.2f}×) over {spread.n_runs} "
            f"run{'s' * (spread.n_runs != 1)} and {spread.n_baselines} baseline{'s' * (spread.n_baselines != 1)} "
            "of these settings")


def variation_line(variation: Variation | None) -> str:
    """What a single run's figure is worth on this machine: the measured variation, or that none was measured."""
    if variation is None:
        return ("one run, and one run is not a measurement of noise (nothing was repeated on this machine yet; "
                "run it again, or `workbench bench --repeats 3`, to see the spread)")
    return (f"one run; single runs on this machine vary by ±{100 * variation.typical:.0f}% typically "
            f"(up to ±{100 * variation.largest:.0f}%; measured over {variation.runs} runs of "
            f"{variation.groups} repeated setting{'s' * (variation.groups != 1)})")


def speedup_lines(facts: BaselineFacts, spread: SpeedupSpread | None = None,
                  variation: Variation | None = None) -> list[str]:
    """The speedup card's lines under its figure: the baseline, why to re-run it (if so), then the spread over
    repeats when this run or its baseline was repeated (more than one of either), else the single-run note."""
    lines = [baseline_line(facts)]
    reasons = rerun_reasons(facts)
    if reasons:
        lines.append("re-run the baseline: it is " + "; ".join(reasons))
    if spread is not None and (spread.n_runs > 1 or spread.n_baselines > 1):
        lines.append(spread_line(spread))
    else:
        lines.append(variation_line(variation))
    return lines


def rerun_label(facts: BaselineFacts | None) -> str | None:
    """The baseline button: "Run baseline" when there is none, "Re-run baseline" when it should be, else None."""
    if facts is None:
        return "Run baseline"
    return "Re-run baseline" if facts.rerun else None
