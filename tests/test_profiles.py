"""Cost profiles a user can trust: a busy spell is caught (fake clock) and measured again or refused, old entries
are measured again, runs check the profile, profiles travel as files; and a run whose cost-aware sizing chose
not to draft says so, and why (Trace notes, the store, the CLI, the cards)."""
from __future__ import annotations

import json

import pytest

import workbench.backend.profile as profile
from store import RunStore
from workbench import engine
from workbench.backend.profile import (PROFILE_SIZES, ROUNDS, BusyMachineError, CostModel, cached_profiles,
                                       profile_entry, profile_key)
from workbench.backend.profile_files import ProfileFileError, export_profiles, import_profiles, load_profile_file
from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.methods.sizing import SizingLog
from workbench.trace import Trace

from .helpers import PROMPTS, FlatCosts, run_cli

SIZES = list(PROFILE_SIZES)
PER_TRY = len(SIZES) * (ROUNDS + 1)  # forwards of one measurement, its warm-up round included


class FakeClock:
    """time.perf_counter for measure_cost: every second reading ends a forward, which 'takes' 1 ms + 0.05 ms per
    token, five times that during a busy spell: the (try, round) pairs in `busy` (round 0 is the warm-up)."""

    def __init__(self, busy=(), slow: float = 5.0) -> None:
        self.busy, self.slow = set(busy), slow
        self.reads, self.now = 0, 0.0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:
            attempt, i = divmod(self.reads // 2 - 1, PER_TRY)
            rnd, k = divmod(i, len(SIZES))
            seconds = 1e-3 * (1 + 0.05 * SIZES[k])
            self.now += seconds * (self.slow if (attempt, rnd) in self.busy else 1.0)
        return self.now


def busy_tries(tries) -> set[tuple[int, int]]:
    """Two of the five timed rounds of each of `tries` slowed down: enough to move every size's quartiles."""
    return {(t, r) for t in tries for r in (2, 4)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_NOISY_PROFILES", "refuse")  # the default a user gets
    return tmp_path / "cache"


def _stored(cache_dir) -> dict:
    return json.loads((cache_dir / "cost_profiles.json").read_text())


def test_a_busy_spell_is_detected_and_measured_again(tiny, cache):
    said = []
    entry = profile_entry(tiny, "eager", progress=said.append, timer=FakeClock(busy_tries([0])))
    assert entry["tries"] == 2 and entry["fresh"]  # the first measurement was noisy, the second clean
    assert entry["seconds"][1] == pytest.approx(1.05e-3) and entry["seconds"][64] == pytest.approx(4.2e-3)
    assert max(entry["spread"].values()) == 0.0
    assert said[0].startswith("measuring this machine's cost profile for tiny-random on eager")
    assert said[1].endswith("(under a second)...")  # the estimate, after the warm-up round (5 x 31 fake ms)
    busy = [s for s in said if "the machine looks busy" in s]
    assert len(busy) == 1 and "15 of 15 sizes differ by more than 25%" in busy[0] and "(2 of 3)" in busy[0]
    stored = _stored(cache)[profile_key(tiny, "eager")]
    assert stored["tries"] == 2 and stored["measured_at"].endswith("Z") and set(stored["spread"]) == set(
        map(str, SIZES))
    (row,) = cached_profiles()
    assert row["spread"] == {n: 0.0 for n in SIZES} and row["measured_at"] == stored["measured_at"]
    assert not row["noisy"] and not row["stale"] and not row["legacy"] and row["name"] == "this machine"
    # cached now: read, not measured (a clock that would see a busy spell is never read)
    clock = FakeClock(busy_tries([0, 1, 2]))
    assert profile_entry(tiny, "eager", timer=clock)["seconds"] == entry["seconds"] and clock.reads == 0


def test_repeated_noise_is_refused_in_one_line_or_kept_when_asked(tiny, cache, monkeypatch):
    said = []
    with pytest.raises(BusyMachineError) as info:
        profile_entry(tiny, "eager", progress=said.append, timer=FakeClock(busy_tries([0, 1, 2])))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("the machine looks busy:") and "measured 3 times" in msg
    assert "stop what else is running" in msg and len([s for s in said if "looks busy" in s]) == 2
    assert not (cache / "cost_profiles.json").exists()  # nothing cached
    code, _, err = run_cli_profile(monkeypatch, FakeClock(busy_tries([0, 1, 2])))
    *said, last = err.strip().splitlines()  # the progress lines (measuring, looks busy), then one error line
    assert code == 2 and last.startswith("error: the machine looks busy:") and len(said) >= 3

    monkeypatch.setenv("WORKBENCH_NOISY_PROFILES", "keep")  # a machine that is always shared (CI)
    costs = CostModel(timer=FakeClock(busy_tries([0, 1, 2])))
    assert costs.profile(tiny, "eager")[1] > 0
    (row,) = cached_profiles()
    assert row["noisy"] and max(row["spread"].values()) > 0.25
    kinds = [n["kind"] for n in costs.run_notes(tiny, "eager", [])]
    assert kinds == ["profile_noisy", "profile_measured"]
    monkeypatch.setenv("WORKBENCH_NOISY_PROFILES", "refuse")  # kept from a busy machine: not good enough now
    said = []
    profile_entry(tiny, "eager", progress=said.append, timer=FakeClock())
    assert "again" in said[0] and "kept from a busy machine" in said[0]
    monkeypatch.setenv("WORKBENCH_NOISY_PROFILES", "sometimes")
    with pytest.raises(profile.ConfigError, match="WORKBENCH_NOISY_PROFILES must be one of refuse, keep"):
        profile_entry(tiny, "eager", refresh=True, timer=FakeClock())


def run_cli_profile(monkeypatch, clock, *args):
    """`workbench profile --target tiny-random ARGS` with measure_cost reading `clock`."""
    import contextlib
    import io

    from workbench.cli import main

    measure = profile.measure_cost
    monkeypatch.setattr(profile, "measure_cost", lambda *a, **kw: measure(*a, **{**kw, "timer": clock}))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["profile", "--target", "tiny-random", *args])
    monkeypatch.setattr(profile, "measure_cost", measure)
    return code, out.getvalue(), err.getvalue()


def test_an_older_versions_entry_is_listed_undated_and_measured_again(tiny, cache):
    key = profile_key(tiny, "eager")
    cache.mkdir(parents=True, exist_ok=True)  # loading the kernels for the key may have made it already
    (cache / "cost_profiles.json").write_text(json.dumps({key: {str(n): 0.002 for n in SIZES}}))
    (row,) = cached_profiles()
    assert row["legacy"] and row["measured_at"] is None and row["spread"] is None and row["seconds"][1] == 0.002
    said = []
    entry = profile_entry(tiny, "eager", progress=said.append, timer=FakeClock())
    assert entry["fresh"] and entry["seconds"][1] == pytest.approx(1.05e-3)
    assert "again" in said[0] and "older version" in said[0]
    (row,) = cached_profiles()
    assert not row["legacy"] and row["measured_at"]


def test_runtime_disagreement_marks_the_profile_stale_once(tiny, cache):
    costs = CostModel(timer=FakeClock())
    one = costs.profile(tiny, "eager")[1]
    slow = [(1, 3 * one)] * 8
    assert costs.run_notes(tiny, "eager", slow[:7])[1:] == []  # too few forwards to judge: only "measured"
    assert costs.run_notes(tiny, "eager", [(1, 1.4 * one)] * 20)[1:] == []  # within the bounds
    notes = costs.run_notes(tiny, "eager", slow)
    assert [n["kind"] for n in notes] == ["profile_measured", "profile_stale"]
    assert notes[1]["ratio"] == pytest.approx(3.0) and notes[1]["forwards"] == 8
    assert "took 3.00x what the cost profile" in notes[1]["text"] and "marked stale" in notes[1]["text"]
    (row,) = cached_profiles()
    assert row["stale"] == "a run's verification forwards took 3.00x its prediction"

    said = []  # the next cost-aware run measures it again, and says why
    again = CostModel(progress=said.append, timer=FakeClock())
    again.profile(tiny, "eager")
    assert "again" in said[0] and "stale" in said[0]
    (row,) = cached_profiles()
    assert not row["stale"]
    notes = again.run_notes(tiny, "eager", slow)  # contradicted again: the runs' own difference, kept
    assert [n["kind"] for n in notes] == ["profile_measured", "profile_disagrees"]
    assert "it is kept" in notes[1]["text"] and not cached_profiles()[0]["stale"]
    # a stand-in serving its own seconds is never checked
    assert FlatCosts().run_notes(tiny, "eager", slow) == []


def test_profiles_export_and_import_round_trip(tiny, cache, tmp_path, capsys):
    CostModel(timer=FakeClock()).profile(tiny, "eager")
    mine = cached_profiles()
    path = tmp_path / "box.json"
    assert export_profiles(path, name="my-box") == 1
    doc = json.loads(path.read_text())
    assert doc["format"] == "decoding-workbench cost profiles" and doc["version"] == 1 and doc["machine"] == "my-box"
    (p,) = doc["profiles"]
    assert {"model", "device", "cpu", "backend", "threads", "torch", "attn", "seconds", "spread",
            "measured_at", "rounds"} <= set(p)
    rows = load_profile_file(path)
    assert rows[0]["name"] == "my-box" and rows[0]["imported"] and rows[0]["seconds"] == mine[0]["seconds"]
    before = (cache / "cost_profiles.json").read_text()

    code, out, err = run_cli(capsys, "profile", "--import", str(path), "--as", "colleague-gpu")
    assert code == 0 and "imported 1 profile as 'colleague-gpu'" in err and "colleague-gpu: tiny-random" in out
    assert (cache / "cost_profiles.json").read_text() == before  # this machine's own are untouched
    listed = cached_profiles()
    assert [(r["name"], r["imported"]) for r in listed] == [("this machine", False), ("colleague-gpu", True)]
    assert listed[1]["seconds"] == mine[0]["seconds"] and listed[1]["spread"] == mine[0]["spread"]
    assert listed[1]["measured_at"] == mine[0]["measured_at"] and listed[1]["source"] == str(path.resolve())
    assert [r["name"] for r in import_profiles(path, "colleague-gpu")] == ["colleague-gpu"]  # replaced, not added
    assert len(cached_profiles()) == 2 and cached_profiles(imported=False) == mine

    code, _, err = run_cli(capsys, "profile", "--export", str(tmp_path / "all.json"))  # no --target: all cached
    assert code == 0 and "wrote 1 profile" in err
    assert json.loads((tmp_path / "all.json").read_text())["machine"] == mine[0]["cpu"]


@pytest.mark.parametrize("content, match", [
    ("not json", "is not JSON"),
    ('{"profiles": []}', "is not a cost-profile export"),
    ('{"format": "decoding-workbench cost profiles", "version": 9, "profiles": []}', "format version 9"),
    ('{"format": "decoding-workbench cost profiles", "version": 1, "profiles": []}', "non-empty list"),
    ('{"format": "decoding-workbench cost profiles", "version": 1, "profiles": [{"model": "m", "backend": "eager", '
     '"cpu": "X", "seconds": {"one": 0.1}}]}', "profile 1 of 1: seconds must map token counts to numbers"),
    ('{"format": "decoding-workbench cost profiles", "version": 1, "profiles": [{"model": "m", "backend": "eager", '
     '"seconds": {"1": 0.1}}]}', "needs a non-empty text 'cpu'"),
    ('{"format": "decoding-workbench cost profiles", "version": 1, "profiles": [{"model": "m", "backend": "eager", '
     '"cpu": "X", "seconds": {"1": -2}}]}', "finite numbers >= 0"),
])
def test_a_malformed_profile_file_is_refused_in_one_line(tmp_path, capsys, cache, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ProfileFileError, match=match):
        load_profile_file(path)
    code, _, err = run_cli(capsys, "profile", "--import", str(path))
    assert code == 2 and err.count("\n") == 1 and str(path) in err
    assert not (cache / "imported_profiles.json").exists()
    code, _, err = run_cli(capsys, "profile", "--import", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err


# ---------------------------------------------------------------- "drafted nothing", and why

DEAR = FlatCosts(draft_scale=1.0, verify_x=3.0)  # verifying 2 tokens costs 4x one, a draft token as much as one


@pytest.mark.parametrize("method, params", [("speculative", {"gamma": 0}), ("tree_dynamic", {}), ("sequoia", {}),
                                            ("eagle", {}), ("layer_skip", {})])
def test_a_run_whose_sizing_chose_not_to_draft_says_why(tiny, tiny_bf16, method, params):
    draft = tiny_bf16 if method in ("speculative", "tree_dynamic", "sequoia") else None
    out = generate(tiny, method, PROMPTS[1], draft=draft, params=params, decode=DecodeConfig(max_new_tokens=24),
                   costs=DEAR)
    note = out.trace.note("no_draft")
    assert note is not None, out.trace.notes
    assert note["steps"] >= note["of"] / 2 and note["of"] == len(out.trace.steps) - 1
    assert note["text"].startswith("cost-aware sizing chose not to draft in ")
    assert "verifying 2 tokens measured 4.0x one token here" in note["reason"]
    assert "plain decoding's" in note["text"]


def test_a_run_that_drafts_has_no_such_note(tiny, tiny_bf16):
    out = generate(tiny, "speculative", PROMPTS[1], draft=tiny_bf16, params={"gamma": 0},
                   decode=DecodeConfig(max_new_tokens=24), costs=FlatCosts())  # a GPU's flat curve, cheap drafts
    assert out.summary.drafted_tokens > 0 and out.trace.note("no_draft") is None


def test_the_sizing_log_counts_only_steps_left_without_a_draft():
    log = SizingLog()
    for drafted in (False, False, True, False):
        log.decline("cost", "verifying 2 tokens measured 3.6x one token here, so drafting cannot pay")
        log.step(drafted)
    log.step(False)  # a plain step with no sizing decision (nothing to copy, say) gives no reason
    assert log.plain_steps == 3 and log.note(5)["text"].startswith("cost-aware sizing chose not to draft in 3 of 5")
    assert log.note(7) is None  # under half of the steps


def test_the_no_draft_note_is_stored_printed_and_shown(tiny, capsys, tmp_path, monkeypatch):
    from ui import presenters as P

    monkeypatch.setattr(engine, "CostModel", lambda progress=None: DEAR)  # what `workbench run` measures here
    db = str(tmp_path / "notes.sqlite")
    code, _, err = run_cli(capsys, "--db", db, "run", "--method", "speculative", "--target", "tiny-random",
                           "--draft", "tiny-random:bf16", "--param", "gamma=0", "--prompt", "one two one two one",
                           "--no-chat", "--max-new-tokens", "20")
    assert code == 0, err
    assert "note: cost-aware sizing chose not to draft in" in err and "4.0x one token here" in err
    store = RunStore(db)
    (rec,) = store.list_runs()
    assert rec.notes[0]["kind"] == "no_draft"
    trace = store.load_trace(rec.id)
    assert trace.notes == rec.notes and Trace.from_dict(trace.to_dict()).notes == trace.notes
    code, out, _ = run_cli(capsys, "--db", db, "runs", "show", rec.id)
    assert code == 0 and "note   cost-aware sizing chose not to draft" in out

    cards = P.metric_cards_html(trace, 10.0)  # a speedup that is plain decoding's speed, said so on the card
    assert 'data-no-draft="true"' in cards and "nothing drafted" in cards and "not a win of the method" in cards
    assert 'data-note="no_draft"' in cards and "4.0x one token here" in cards
    assert P.notes_status(trace).startswith("Cost-aware sizing chose not to draft in ")
    plain = Trace("autoregressive", {}, [1], notes=[])
    assert "data-no-draft" not in P.metric_cards_html(plain, 10.0) and P.notes_status(plain) == ""


def test_the_cost_curve_shows_spread_date_and_flags():
    from ui import presenters as P

    base = {"model": "m", "device": "cpu", "cpu": "X", "backend": "eager", "threads": 1,
            "seconds": {1: 0.01, 2: 0.02}, "spread": {1: 0.1, 2: 0.4}, "measured_at": "2026-12-07T05:43:06Z",
            "stale": None, "noisy": False, "legacy": False, "imported": False, "name": "this machine"}
    rows = [base, {**base, "stale": "a run's verification forwards took 3.00x its prediction", "threads": 2},
            {**base, "imported": True, "name": "gpu-box", "cpu": "H100"},
            {**base, "legacy": True, "spread": None, "measured_at": None, "threads": 4}]
    fig = P.cost_figure(rows)
    assert list(fig.data[0].error_y.array) == pytest.approx([0.5, 4.0])  # half the spread each side, in ms
    assert "measured 2026-12-07" in fig.layout.title.text and "measured 2026-12-07 05:43 UTC" in \
        fig.data[0].hovertemplate
    assert [t.name for t in fig.data] == ["m · eager · 1 thread", "m · eager · 1 thread · from gpu-box",
                                          "m · eager · 2 threads · stale", "m · eager · 4 threads · undated"]
    lines = P.profile_notes(rows).split("  \n")
    assert lines[0] == "`m · eager · 1 thread`: measured 2026-12-07 05:43 UTC; spread up to 40% (typically 40%)"
    assert "⚠ stale" in lines[1] and "imported from gpu-box (H100)" in lines[2]
    assert lines[3].startswith("`m · eager · 4 threads`: undated; spread unknown; measured by an older version")


def test_a_profile_measured_with_other_kernels_is_another_profile(tiny, cache, monkeypatch):
    """The key names the build of the CPU kernels, not only the plan's label: another version's kernels (another
    source under the same label) measure a profile of their own."""
    from workbench.kernels import plan_for
    from workbench.kernels.build import build_tag

    key = profile_key(tiny, "eager")
    fields = profile.parse_key(key)
    if plan_for(tiny).mode == "aten":  # no kernels here: nothing to name
        assert "kbuild" not in fields
        return
    assert fields["kbuild"] == build_tag() and fields["kernels"] == plan_for(tiny).label()
    monkeypatch.setattr(profile, "build_tag", lambda: "0123456789abcdef")
    other = profile_key(tiny, "eager")
    assert other != key and profile.parse_key(other)["kbuild"] == "0123456789abcdef"


def test_the_default_machine_name_fits_the_longest_processor_name():
    """An export without --as is named for its processor: a 48-character CPU model name and every ISA flag the
    workbench records (an Intel Xeon with AMX names 104 characters) must fit; a longer name given is refused."""
    from workbench.backend.profile_files import MAX_NAME, ProfileFileError, machine_name
    from workbench.device import ISA_FLAGS

    longest = "x" * 48 + " [" + " ".join(ISA_FLAGS) + "]"
    assert machine_name(None, [{"cpu": longest}]) == longest
    with pytest.raises(ProfileFileError, match=f"at most {MAX_NAME} characters"):
        machine_name("y" * (MAX_NAME + 1), [])
