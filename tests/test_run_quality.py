"""Every recorded run carries its quality against the target's plain decoding (workbench.api.run, the CLI):
a plain run is its own baseline, a later run of the same prompt is measured against it, and the
accounting runs after the decode."""
from __future__ import annotations

import json

import pytest

from store import RunStore
from workbench.api import run
from workbench.config import ConfigError
from workbench.quality import compare, identity_note

from .helpers import run_cli

PROMPT = "abcabcabcabc"


def test_a_run_is_measured_against_the_stored_plain_run(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    common = dict(target="tiny-random", max_new_tokens=24, chat=False, store=store)
    plain = run("autoregressive", PROMPT, **common)
    assert plain.quality.identical and plain.quality.nll is not None and plain.quality.baseline_run is None
    fast = run("prompt_lookup", PROMPT, task=("contains", ["abc"]), **common)
    q = fast.quality
    assert q.baseline_run == plain.run_id and q.agreement == 1.0 and q.first_divergence is None
    assert q.baseline_nll == plain.quality.nll and q.nll_gap == pytest.approx(0.0, abs=1e-6)
    assert q.task_check == "contains" and q.accounting_s > 0
    assert not any(n["kind"] == "not_identical" for n in fast.trace.notes)
    rec = store.get_run(fast.run_id)
    assert rec.lossless and rec.quality["agreement"] == 1.0 and rec.quality["baseline_run"] == plain.run_id
    # the accounting runs after the decode: the run's wall time is the trace's, fixed before it
    assert rec.metrics["wall_s"] == pytest.approx(fast.trace.wall_s)
    assert fast.to_json()["quality"]["agreement"] == 1.0 and fast.to_json()["lossless"] is True


def test_without_a_stored_baseline_plain_decoding_runs_once_unrecorded(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    res = run("prompt_lookup", PROMPT, target="tiny-random", max_new_tokens=16, chat=False, store=store)
    assert res.quality.agreement == 1.0 and res.quality.baseline_run is None
    assert [r.method for r in store.list_runs()] == ["prompt_lookup"]
    off = run("prompt_lookup", PROMPT, target="tiny-random", max_new_tokens=16, chat=False, store=store,
              quality=False)
    assert off.quality is None and store.get_run(off.run_id).quality is None


def test_a_bad_task_is_one_clear_error_and_nothing_is_stored(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ConfigError, match="^'check' must be one of exact, contains, number, got 'fuzzy'$"):
        run("autoregressive", PROMPT, target="tiny-random", max_new_tokens=4, store=store, task=("fuzzy", ["a"]))
    assert store.list_runs() == []


def test_a_lossless_run_that_differs_from_greedy_gets_a_note():
    broken = compare([1, 2, 9], [1, 2, 3])
    note = identity_note(broken, lossless=True, greedy=True)
    assert note["kind"] == "not_identical" and note["first_divergence"] == 2 and "token 2" in note["text"]
    assert identity_note(broken, lossless=False, greedy=True) is None  # a lossy run may differ
    assert identity_note(broken, lossless=True, greedy=False) is None  # a sample differs from another sample
    assert identity_note(compare([1], [1]), lossless=True, greedy=True) is None


def test_the_cli_shows_quality_and_filters_lossy_runs(capsys, tmp_path):
    db = str(tmp_path / "runs.sqlite")
    args = ("--target", "tiny-random", "--prompt", PROMPT, "--no-chat", "--max-new-tokens", "12")
    code, _, err = run_cli(capsys, "--db", db, "run", "--method", "prompt_lookup", *args)
    assert code == 0 and "lossless | quality vs plain decoding: agreement 1.000" in err
    rid = RunStore(db).list_runs()[0].id
    code, out, _ = run_cli(capsys, "--db", db, "runs", "show", rid[:8])
    assert code == 0 and "\nlossless\n" in out and "quality vs plain decoding: agreement 1.000" in out
    code, out, _ = run_cli(capsys, "--db", db, "runs", "list", "--lossy", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(capsys, "--db", db, "runs", "list", "--lossless")
    assert code == 0 and "lossless" in out and rid[:12] in out
