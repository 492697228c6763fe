"""App handlers called directly (no browser) with the tiny random models."""
from __future__ import annotations

import csv
import html
import re
import time

import pytest

from store import RunStore
from ui.common import AppContext, new_session_state, token_pieces
from ui.tabs import history, latency, playground, tree_viewer

MAX_NEW = 12
SLOTS = [None] * (playground.N_SLOTS * len(playground.SLOT_KINDS))


@pytest.fixture
def ctx(tmp_path):
    store = RunStore(tmp_path / "ui.sqlite")
    yield AppContext(store=store, default_target="tiny-random")
    store.close()


def _run(ctx, state, method="speculative", prompt="Hello there", draft="tiny-random:bf16", slots=SLOTS,
         max_new=MAX_NEW, temperature=0.0):
    outs = list(playground.run_stream(ctx, state, "tiny-random", draft, method, prompt, False, max_new, temperature,
                                      1.0, 0, 0, *slots))
    assert outs, "the handler yielded nothing"
    return outs


def _update(x):
    return x if isinstance(x, dict) else {}


def test_run_streams_colours_and_records(ctx):
    outs = _run(ctx, new_session_state())
    status, output, cards, run_id_md, baseline_btn, state = outs[-1]
    assert status.startswith("**Done:**"), status
    assert output.count('class="wb-tok ') == MAX_NEW
    assert "wb-tok-draft" in output and 'title="step ' in output
    assert 'data-metric="speedup"' in cards and "Run baseline" in cards
    assert _update(baseline_btn).get("visible") is True  # no plain-decoding run of this prompt yet
    rid = state["last_run"]
    assert state["runs"] == [rid] and rid in run_id_md
    rec = ctx.store.get_run(rid)
    assert rec.status == "finished" and rec.source == "ui" and rec.draft == "tiny-random:bf16"
    assert len(outs) >= 3  # a starting line, progress, the end: the page hears as it goes
    assert any(o[0].startswith("**Working:**") for o in outs[:-1])


def test_baseline_runs_once_then_is_reused(ctx):
    state = _run(ctx, new_session_state())[-1][-1]
    outs = list(playground.run_baseline(ctx, state))
    status, cards, btn, state = outs[-1]
    assert status.startswith("**Done:**") and "Baseline run" in status, status
    assert "×" in cards and _update(btn).get("visible") is False
    assert len(state["runs"]) == 2
    base = ctx.store.get_run(state["runs"][1])
    assert base.method == "autoregressive" and base.status == "finished"
    # the same prompt and settings again: the stored baseline is found, no button
    status, output, cards, _, btn, state = _run(ctx, state)[-1]
    assert "×" in cards and f"run {base.id[:8]}" in cards
    assert _update(btn).get("visible") is False
    # other settings (another length) have no baseline
    *_, btn, _ = _run(ctx, state, max_new=MAX_NEW - 2)[-1]
    assert _update(btn).get("visible") is True


def test_errors_are_messages_not_exceptions(ctx):
    state = new_session_state()
    status, *_ = _run(ctx, state, prompt="   ")[-1]
    assert status.startswith("**Error:**") and "prompt is empty" in status
    status, *_ = _run(ctx, state, draft="none")[-1]
    assert "needs a draft model" in status
    bad = list(SLOTS)
    bad[0] = 65  # gamma = 65 is out of range
    status, *_ = _run(ctx, state, slots=bad)[-1]
    assert status.startswith("**Error:**") and "gamma" in status
    status, *_ = list(playground.run_stream(ctx, state, "no-such-model-anywhere", "none", "autoregressive", "hi",
                                            False, 4, 0, 1, 0, 0, *SLOTS))[-1]
    assert status.startswith("**Error:**") and "no-such-model-anywhere" in status
    status, *_ = list(playground.run_baseline(ctx, new_session_state()))[-1]
    assert "Run something first" in status
    assert ctx.store.list_runs() == []  # bad input never leaves a row
    # the app still works afterwards
    assert _run(ctx, state)[-1][0].startswith("**Done:**")


def test_method_form_and_params():
    updates = playground.method_form("speculative")
    assert len(updates) == 1 + playground.N_SLOTS * len(playground.SLOT_KINDS)
    assert "lossless" in updates[0]
    number0, choice1 = updates[1], updates[1 + len(playground.SLOT_KINDS) + 1]
    assert number0["visible"] and number0["label"] == "gamma" and number0["value"] == 4
    assert choice1["visible"] and choice1["choices"] == ["fixed", "adaptive"]
    slots = list(SLOTS)
    slots[0] = 3.0
    slots[len(playground.SLOT_KINDS) + 1] = "adaptive"
    assert playground.collect_params("speculative", slots) == {"gamma": 3, "schedule": "adaptive"}
    assert playground.collect_params("autoregressive", slots) == {}
    assert "needs a draft model" in playground.draft_note("speculative", "none")
    assert playground.draft_note("speculative", "tiny-random:bf16") == ""


def test_history_filter_compare_delete_export(ctx, tmp_path):
    state = _run(ctx, new_session_state(), prompt="alpha beta")[-1][-1]
    state = _run(ctx, state, method="autoregressive", prompt="alpha beta", draft="none")[-1][-1]
    state = _run(ctx, state, method="prompt_lookup", prompt="gamma delta", draft="none")[-1][-1]
    spec, plain, lookup = state["runs"]

    table, ids, sel, msg = history.history_table(ctx, "", [], [])
    assert len(table) == 3 and ids == [lookup, plain, spec] and msg.startswith("3 runs")
    table, ids, *_ = history.history_table(ctx, "", ["autoregressive"], [])
    assert ids == [plain] and list(table["method"]) == ["autoregressive"]
    _, ids, *_ = history.history_table(ctx, "gamma", [], [])
    assert ids == [lookup]
    _, ids, *_ = history.history_table(ctx, "", [], ["failed"])
    assert ids == []
    assert history.toggle_selection([spec, plain], [], plain[:8]) == [plain]
    assert history.toggle_selection([spec, plain], [plain], plain[:8]) == []
    assert history.toggle_selection([spec, plain], [plain], "zzzz") == [plain]

    msg, metrics, fig, diff = history.compare_runs(ctx, [spec, plain])
    assert "Comparing 2 runs" in msg
    assert list(metrics["value"].columns)[1:] == [spec[:8], plain[:8]]
    assert len(fig.data) == 2
    assert 'class="wb-diff"' in diff and "token-identical" in diff  # speculative is lossless under greedy
    assert "two or more" in history.compare_runs(ctx, [spec])[0]

    f, msg = history.export_csv(ctx, "", [], [])
    with open(f["value"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {"id", "method", "tokens_per_s"} <= set(rows[0])

    msg, confirm = history.ask_delete([spec, lookup])
    assert "Delete 2 runs" in msg and confirm["visible"]
    msg, confirm, table, ids, sel = history.delete_selected(ctx, [spec, lookup], "", [], [])
    assert "Deleted 2 runs" in msg and ids == [plain] and len(table) == 1
    assert [r.id for r in ctx.store.list_runs()] == [plain]


def test_tree_and_latency_views(ctx):
    state = _run(ctx, new_session_state())[-1][-1]
    rid = state["last_run"]
    choices = tree_viewer.refresh_runs(ctx, "tree_seen", state, None)
    assert choices["value"] == rid
    slider, info, fig, mask, tokens, state = tree_viewer.load_run(ctx, state, rid)
    assert slider["value"] == 1 and slider["maximum"] >= 1
    assert "Step 1" in info and "drafted" in info
    assert any(t.name == "accepted path" for t in fig.data)
    assert mask["visible"] is False  # speculative drafts chains
    assert "outline" in tokens
    info, fig, mask, tokens = tree_viewer.step_view(ctx, rid, 0)
    assert "no draft" in info
    info, *_ = tree_viewer.step_view(ctx, None, 0)
    assert "No run yet" in info

    md, bars, time_fig, hist, alpha, state = latency.latency_view(ctx, state, rid)
    assert "No plain-decoding run" in md
    assert [t.name for t in bars.data] == ["draft", "verify", "other"] and len(time_fig.data) == 1
    state = list(playground.run_baseline(ctx, state))[-1][-1]
    md, bars, time_fig, *_ = latency.latency_view(ctx, state, rid)
    assert "Baseline" in md and len(time_fig.data) == 2


def test_tree_view_of_a_branching_draft_shows_the_mask(ctx):
    from workbench.trace import Step, Trace

    steps = [Step(index=0, kind="prefill", bonus_token=72, committed=[72], total_s=0.01, t_end=0.01),
             Step(index=1, kind="decode", tokens=[101, 105, 32], parents=[-1, -1, 0], q=[0.5, 0.3, 0.4],
                  p=[0.6, 0.1, 0.2], accepted=[0], bonus_token=33, bonus_p=0.5, committed=[101, 33],
                  total_s=0.02, t_end=0.03)]
    rid = ctx.store.start_run(method="speculative", target="tiny-random", draft="tiny-random:bf16", prompt="x",
                              params={"max_new_tokens": 3, "chat": False}, sampling={}, env={})
    ctx.store.finish_run(rid, Trace("speculative", {}, [65], steps, wall_s=0.03), "He!")
    info, fig, mask, tokens = tree_viewer.step_view(ctx, rid, 1)
    assert "(tree)" in info and "correction" in info
    assert mask["visible"] is True
    assert [list(r) for r in mask["value"].data[0].z] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert [c[0] for c in next(t for t in fig.data if t.name == "rejected").customdata] == [1, 2]
    assert list(next(t for t in fig.data if t.name == "root").text) == ["H"]
    assert list(next(t for t in fig.data if t.name == "correction").text) == ["!"]


def test_stopping_a_run_cancels_the_decode(ctx):
    gen = playground.run_stream(ctx, new_session_state(), "tiny-random", "tiny-random:bf16", "speculative",
                                "Hello", False, 400, 0.0, 1.0, 0, 0, *SLOTS)
    for out in gen:
        if "Decoding" in out[0]:
            break
    gen.close()  # what Gradio does when the Stop button cancels the event
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = ctx.store.list_runs()
        if runs and runs[0].status != "running":
            break
        time.sleep(0.2)
    assert runs[0].status == "failed" and "stopped" in runs[0].error
    assert 0 < len(runs[0].output_ids) < 400


def test_target_change_moves_the_draft():
    assert playground.draft_for_target("tiny-random:seed=1", "smollm2-135m:bf16")["value"] == \
        "tiny-random:seed=1:bf16"
    assert playground.draft_for_target("tiny-random", "none") == {"__type__": "update"}
    assert playground.draft_for_target("smollm2-135m:bf16", "x")["value"] == "smollm2-135m:bf16"


def test_benchmark_section(ctx, monkeypatch):
    import sys

    import pandas as pd

    choices, msg = history.list_benchmarks(ctx)
    assert choices["choices"] == [] and "No benchmarks" in msg
    assert "Pick a benchmark" in history.show_benchmark(ctx, None)[0]
    bid = ctx.store.start_benchmark(suite="builtin", config={}, env={})
    choices, msg = history.list_benchmarks(ctx)
    assert choices["value"] == bid and "builtin" in choices["choices"][0][0]

    calls = []

    def fake_table(store, benchmark_id):
        calls.append(benchmark_id)
        return pd.DataFrame({"qa": [1.0, 1.23456]}, index=pd.Index(["autoregressive", "speculative"], name="method"))

    import workbench.bench as bench

    monkeypatch.setattr(bench, "benchmark_table", fake_table)
    msg, table = history.show_benchmark(ctx, bid)
    assert calls == [bid] and list(table.columns) == ["method", "qa"] and table["qa"][1] == 1.235
    monkeypatch.setitem(sys.modules, "workbench.bench", None)  # as if the module were missing
    msg, table = history.show_benchmark(ctx, bid)
    assert msg.startswith("**Error:**") and "not available" in msg and table.empty


def test_token_pieces_keep_multibyte_characters_whole():
    from workbench.models import load_model

    tiny = load_model("tiny-random")
    ids = tiny.tokenizer("é ok", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tiny.decode, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == "é ok"


def test_build_app():
    import gradio as gr

    from ui.app import build_app

    demo = build_app(db=":memory:", default_target="tiny-random")
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"pg-run", "pg-output", "pg-cards", "tree-plot", "lat-bars", "hist-table", "hist-diff"} <= ids


def test_run_on_choice_is_per_session_and_reaches_the_run(ctx, monkeypatch):
    """'in process' keeps a session's runs (and baselines) here even when the app serves a cluster."""
    import workbench.api as api

    seen = []
    real = api.run

    def spy(*args, cluster=None, **kwargs):
        seen.append(cluster)
        return real(*args, cluster="none", **kwargs)  # the test has no cluster: decode here either way

    monkeypatch.setattr(api, "run", spy)
    mine = playground.set_run_on(new_session_state(), "in process")
    other = new_session_state()
    state = _run(ctx, mine, method="autoregressive", draft="none")[-1][-1]
    _run(ctx, other, method="autoregressive", draft="none")
    list(playground.run_baseline(ctx, state))
    assert seen == ["none", None, "none"]  # session 1 in process (run and baseline), session 2 follows the app


# ---------------------------------------------------------------- backends (eager / compiled)


def _spy_backends(monkeypatch):
    """api.run records the backend each call asked for, then decodes eagerly (tests never compile)."""
    import workbench.api as api

    seen = []
    real = api.run

    def spy(*args, backend=None, **kwargs):
        seen.append(backend)
        return real(*args, backend="eager", **kwargs)

    monkeypatch.setattr(api, "run", spy)
    return seen


def test_backend_choice_reaches_the_run_and_its_baseline(ctx, monkeypatch):
    seen = _spy_backends(monkeypatch)
    inputs = ("tiny-random", "none", "autoregressive", "Hello there", False, 6, 0.0, 1.0, 0, 0, *SLOTS)
    # the page sends the Backend dropdown as the keyword `backend` (/run's `backend`); each session its own
    state = list(playground.run_stream(ctx, new_session_state(), *inputs[:2], "prompt_lookup", *inputs[3:],
                                       backend="compiled"))[-1][-1]
    assert state["last_settings"]["backend"] == "compiled"
    other = list(playground.run_stream(ctx, new_session_state(), *inputs))[-1]  # no choice: the app's default
    assert other[0].startswith("**Done:**") and other[-1]["last_settings"]["backend"] == "eager"
    status, *_ = list(playground.run_baseline(ctx, state))[-1]  # the baseline runs on its run's backend
    assert status.startswith("**Done:**") and "(compiled)" in status, status
    assert seen == ["compiled", "eager", "compiled"]
    # `workbench ui --backend compiled`: the default of every session that does not choose
    ctx.default_backend = "compiled"
    list(playground.run_stream(ctx, new_session_state(), *inputs))
    assert seen[-1] == "compiled"


def test_unknown_backend_is_a_message(ctx):
    status, *_ = list(playground.run_stream(ctx, new_session_state(), "tiny-random", "none", "autoregressive",
                                            "Hello", False, 4, 0.0, 1.0, 0, 0, *SLOTS, backend="turbo"))[-1]
    assert status.startswith("**Error:**") and "unknown backend 'turbo'" in status
    assert ctx.store.list_runs() == []


def test_compiling_shows_in_the_status_and_the_cards(ctx, monkeypatch):
    """What api.run says while compiling reaches the status line, ticking; the compile time is shown apart."""
    import workbench.api as api

    def fake_warm_up(backend, models, n_prompt, max_new_tokens, progress=None):
        progress("compiling tiny-random for the compiled backend (about 40 s, as last time)...")
        time.sleep(2.5)
        progress("compiled tiny-random in 95 s")
        return {"backend": "compiled", "warmup_s": 95.2}

    monkeypatch.setattr(api, "prepare_run", fake_warm_up)  # the run itself decodes eagerly
    outs = _run(ctx, new_session_state(), method="autoregressive", draft="none")
    statuses = [o[0] for o in outs]
    compiling = [s for s in statuses if "compiling tiny-random" in s]
    assert compiling and compiling[0].startswith("**Working:**") and "about 40 s" in compiling[0]
    assert any(s.endswith("s so far") for s in compiling), compiling  # the line ticks while it lasts
    status, output, cards, *_ = outs[-1]
    assert "Compiled in 95 s before the run (not counted)" in status, status
    assert 'data-metric="backend"' in cards and "compiled in 95 s (not counted)" in cards


def test_cards_name_the_backend(ctx):
    status, output, cards, *_ = _run(ctx, new_session_state())[-1]
    assert 'data-metric="backend"' in cards and "eager" in cards and "not counted" not in cards


def test_app_backend_default_and_bad_backend():
    import gradio as gr

    from ui.app import build_app, launch
    from workbench.config import ConfigError

    demo = build_app(db=":memory:", default_target="tiny-random", default_backend="compiled")
    drop = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-backend")
    assert isinstance(drop, gr.Dropdown) and drop.value == "compiled"
    assert [c[1] for c in drop.choices] == ["eager", "compiled"]
    demo = build_app(db=":memory:", default_target="tiny-random")
    assert next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-backend").value == "eager"
    with pytest.raises(ConfigError, match="unknown backend"):
        launch(port=1, default_target="tiny-random", backend="turbo", prevent_thread_lock=True)


def test_compare_shows_each_runs_backend(ctx):
    a = _run(ctx, new_session_state(), method="autoregressive", draft="none")[-1][-1]["last_run"]
    b = _run(ctx, new_session_state(), method="prompt_lookup", draft="none")[-1][-1]["last_run"]
    msg, frame, fig, diff = history.compare_runs(ctx, [a, b])
    df = frame["value"]
    row = df[df[""] == "backend"].iloc[0]
    assert row[a[:8]] == "eager" and row[b[:8]] == "eager"
    table, *_ = history.history_table(ctx, "", [], [])
    assert list(table["backend"]) == ["eager", "eager"]


# ---------------------------------------------------------------- cost of a forward on this machine

FAKE_PROFILES = [
    {"model": "tiny-random", "device": "cpu", "cpu": "Test CPU", "backend": "eager", "threads": 1,
     "seconds": {1: 0.010, 2: 0.012, 4: 0.016, 8: 0.030}},
    {"model": "tiny-random:bf16", "device": "cpu", "cpu": "Test CPU", "backend": "compiled", "threads": 1,
     "seconds": {1: 0.008, 2: 0.009, 4: 0.010, 8: 0.011}},
    {"model": "smollm2-135m", "device": "cpu", "cpu": "Test CPU", "backend": "eager", "threads": 1,
     "seconds": {1: 0.5, 8: 0.9}},
]


def test_cost_view_shows_the_targets_model(monkeypatch):
    import workbench.backend.profile as profile

    monkeypatch.setattr(profile, "cached_profiles", lambda: [dict(r) for r in FAKE_PROFILES])
    summary, fig = latency.cost_view("tiny-random", "ms")
    assert len(fig.data) == 2 and "Test CPU" in fig.layout.title.text  # both precisions of tiny-random only
    assert "tiny-random:bf16 · compiled" in summary and "smollm2" not in summary
    summary, fig = latency.cost_view("someone/other-model", "× one token")
    assert len(fig.data) == 3 and "Nothing measured for someone/other-model" in summary
    monkeypatch.setattr(profile, "cached_profiles", lambda: [])
    summary, fig = latency.cost_view("tiny-random", "ms")
    assert "Measure this machine" in summary


def test_measure_this_machine_profiles_eagerly(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))  # never touch the user's cached profiles
    outs = list(latency.measure_costs(ctx, "tiny-random", "eager", "ms"))
    assert any("profiling tiny-random on eager" in o[0] for o in outs), [o[0] for o in outs]
    status, summary, fig = outs[-1]
    assert status.startswith("**Done:**") and "tiny-random · eager" in status, status
    assert "**tiny-random** fastest for 1 token" in summary and len(fig.data) == 1
    from workbench.backend.profile import cached_profiles

    assert [(r["model"], r["backend"]) for r in cached_profiles()] == [("tiny-random", "eager")]
    status, *_ = list(latency.measure_costs(ctx, "tiny-random", "turbo", "ms"))[-1]
    assert status.startswith("**Error:**") and "unknown backend" in status


# ---------------------------------------------------------------- numbers the app can be trusted with


def _card_numbers(cards: str) -> dict:
    """The acceptance card's figure and counts, as the page shows them."""
    m = re.search(r'data-metric="acceptance_rate" data-accepted="(\d+)" data-path-positions="(\d+)" '
                  r'data-drafted-nodes="(\d+)"[^>]*>.*?class="wb-card-value"[^>]*>([^<]*)<(.*?)'
                  r'(?=<div class="wb-card" )', cards, re.S)
    assert m, cards
    lines = [html.unescape(x) for x in re.findall(r'class="wb-card-(?:hint|line)"[^>]*>([^<]*)<', m[5])]
    return {"accepted": int(m[1]), "path_positions": int(m[2]), "drafted_nodes": int(m[3]), "value": m[4],
            "lines": lines}


def test_acceptance_card_agrees_with_the_store(ctx, capsys):
    """A stored tree run: the card's figure and caption are the ones computed from the store's steps, the
    stored metrics hold the same, and `workbench runs show` prints them under the same names."""
    from workbench import metrics as M
    from workbench.cli import main

    *_, cards, _, _, state = _run(ctx, new_session_state(), method="tree_dynamic", draft="tiny-random:seed=1",
                                  max_new=24)[-1]
    rid = state["last_run"]
    acc = M.acceptance(ctx.store.load_trace(rid).steps)
    assert acc.accepted < acc.path_positions < acc.drafted_nodes  # a tree that was partly rejected
    shown = _card_numbers(cards)
    reloaded = _card_numbers(playground._cards(ctx, ctx.store.load_trace(rid), rid)[0])
    for card in (shown, reloaded):
        assert (card["accepted"], card["path_positions"], card["drafted_nodes"]) == \
            (acc.accepted, acc.path_positions, acc.drafted_nodes)
        assert card["value"] == f"{100 * acc.path_rate:.0f}%"
        assert card["lines"] == [acc.path_caption(), f"{M.NODE_ACCEPTANCE} {100 * acc.node_rate:.0f}%: "
                                                     f"{acc.node_caption()}"]
    m = ctx.store.get_run(rid).metrics
    assert m["acceptance_rate"] == pytest.approx(acc.path_rate)
    assert m["node_acceptance_rate"] == pytest.approx(acc.node_rate)
    assert (m["accepted_draft_tokens"], m["path_positions"], m["drafted_tokens"]) == \
        (acc.accepted, acc.path_positions, acc.drafted_nodes)
    assert main(["--db", str(ctx.store.path), "runs", "show", rid]) == 0
    out = capsys.readouterr().out
    assert f"{M.PATH_ACCEPTANCE:<28} {100 * acc.path_rate:.1f}%  ({acc.path_caption()})" in out
    assert f"{M.NODE_ACCEPTANCE:<28} {100 * acc.node_rate:.1f}%  ({acc.node_caption()})" in out


def _set_env(ctx, run_id: str, hours_old: float = 0.0, **env) -> None:
    """Make a stored run older, or recorded on another machine (what a shared or copied store holds)."""
    from datetime import timedelta

    from sqlalchemy import update

    from store.models import Run, utcnow

    rec = ctx.store.get_run(run_id)
    with ctx.store.session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(
            env={**rec.env, **env}, created_at=utcnow() - timedelta(hours=hours_old)))


def _speedup_card(cards: str) -> str:
    return html.unescape(re.search(r'data-metric="speedup".*?(?=<div class="wb-card" |$)', cards, re.S).group(0))


def test_speedup_card_names_its_baseline_and_offers_a_rerun(ctx):
    state = _run(ctx, new_session_state())[-1][-1]
    status, cards, btn, state = list(playground.run_baseline(ctx, state))[-1]
    rid, bid = state["runs"]
    card = _speedup_card(cards)
    assert f"run {bid[:8]} · eager · baseline just now · this machine" in card
    assert "one run is not a measurement of noise" in card  # nothing was repeated here yet
    assert "±" not in card and _update(btn).get("visible") is False

    _set_env(ctx, bid, hours_old=30)
    cards, label = playground._cards(ctx, ctx.store.load_trace(rid), rid)
    assert label == "Re-run baseline" and "baseline 30 h old" in _speedup_card(cards)
    assert "re-run the baseline: it is older than 24 h" in _speedup_card(cards)
    _set_env(ctx, bid, cpu="Some other CPU")
    cards, label = playground._cards(ctx, ctx.store.load_trace(rid), rid)
    assert label == "Re-run baseline" and "another machine" in _speedup_card(cards)
    assert "CPU Some other CPU (this run: " in _speedup_card(cards)
    # the button runs a fresh baseline here, and the card is trusted again
    status, cards, btn, state = list(playground.run_baseline(ctx, state))[-1]
    assert status.startswith("**Done:**") and _update(btn).get("visible") is False
    assert "this machine" in _speedup_card(cards) and "re-run" not in _speedup_card(cards)


def test_speedup_card_shows_the_spread_of_repeats_or_the_measured_noise(ctx):
    state = _run(ctx, new_session_state())[-1][-1]
    state = list(playground.run_baseline(ctx, state))[-1][-1]
    rid = state["runs"][0]
    # another setting repeated on this machine: its spread is what a single run here is worth
    for _ in range(2):
        _run(ctx, new_session_state(), method="prompt_lookup", draft="none", prompt="other words")
    card = _speedup_card(playground._cards(ctx, ctx.store.load_trace(rid), rid)[0])
    assert re.search(r"one run; single runs on this machine vary by ±\d+% typically \(up to ±\d+%; measured over 2 runs "
                     r"of 1 repeated setting\)", card), card
    # this run repeated, and its baseline: the median and the range over them
    state = _run(ctx, state)[-1][-1]
    state = list(playground.run_baseline(ctx, state))[-1][-1]
    card = _speedup_card(playground._cards(ctx, ctx.store.load_trace(state["runs"][2]), state["runs"][2])[0])
    assert re.search(r"median \d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d×\) over 2 runs and 2 baselines of these settings",
                     card), card


def test_history_tells_settings_sampling_and_speedup_apart(ctx):
    state = _run(ctx, new_session_state(), method="prompt_lookup", draft="none", prompt="alpha beta")[-1][-1]
    slots = list(SLOTS)
    slots[0] = 2  # prompt_lookup's first parameter, max_ngram
    state = _run(ctx, state, method="prompt_lookup", draft="none", prompt="alpha beta", slots=slots)[-1][-1]
    state = _run(ctx, state, method="autoregressive", draft="none", prompt="alpha beta", temperature=0.7)[-1][-1]
    state = list(playground.run_baseline(ctx, {**state, "last_settings": {**state["last_settings"],
                                                                            "sampling": {"temperature": 0.0}}}))[-1][-1]
    default, changed, sampled, base = state["runs"]
    table, ids, *_ = history.history_table(ctx, "", [], [])
    row = {i: table.iloc[k] for k, i in enumerate(ids)}
    assert row[default]["settings"] != row[changed]["settings"] and "max_ngram=2" in row[changed]["settings"]
    assert row[default]["settings"].startswith("defaults · 12 new")
    assert row[sampled]["sampling"] == "T 0.7 · seed 0" and row[default]["sampling"] == "greedy"
    assert row[base]["speedup"] == 1.0 and row[default]["speedup"] > 0 and row[changed]["speedup"] > 0
    assert row[default]["backend"] == "eager"
    recs = ctx.store.list_runs()  # the table's one query applies the one baseline policy
    found = ctx.store.baselines_for(recs)
    assert {r.id: getattr(ctx.store.baseline_for(r), "id", None) for r in recs} == \
        {rid: getattr(b, "id", None) for rid, b in found.items()}
    assert found[default].id == found[changed].id == base and found[sampled] is None

    # compare: every row; the speedup against each run's own baseline, whatever the order
    for order in ([changed, base], [base, changed]):
        msg, frame, fig, diff = history.compare_runs(ctx, order)
        df = frame["value"]
        sp = df[df[""] == "speedup vs plain decoding"].iloc[0]
        assert sp[base[:8]] == "1.00×" and sp[changed[:8]] == f"{row[changed]['speedup']:.2f}×"
        assert "matched" in diff or "token-identical" in diff
    assert history.COMPARE_MAX_HEIGHT >= 40 * len(df)  # tall enough that no row hides behind a scroll

    # export: the selection, with each run's backend
    f, msg = history.export_csv(ctx, "", [], [], [changed, sampled])
    with open(f["value"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted([changed, sampled]) and "2 selected runs" in msg
    assert {r["backend"] for r in rows} == {"eager"} and all(r["env.cpu"] for r in rows)
    f, msg = history.export_csv(ctx, "", [], [])
    assert "4 listed runs" in msg


def test_compare_diff_aligns_token_ids(ctx):
    a = _run(ctx, new_session_state(), method="autoregressive", draft="none", max_new=16)[-1][-1]["last_run"]
    b = _run(ctx, new_session_state(), method="autoregressive", draft="none", max_new=16,
             temperature=1.0)[-1][-1]["last_run"]
    *_, diff = history.compare_runs(ctx, [a, b])
    counts = {k: int(v) for k, v in re.findall(r'data-(matched|substituted|deleted|inserted)="(\d+)"', diff)}
    assert counts["matched"] + counts["substituted"] + counts["deleted"] == 16
    assert counts["matched"] + counts["substituted"] + counts["inserted"] == 16


def test_methods_are_grouped_by_family_with_when_they_pay():
    from workbench.methods import FAMILIES, list_methods, methods_by_family

    for m in list_methods():
        assert m.family in FAMILIES and m.pays_when and not m.pays_when.endswith("."), m.name
    choices = [c for c in playground.P.method_choices(
        [(f, [m.facts() for m in ms]) for f, ms in methods_by_family()])]
    families = [label.split(" › ")[0] for label, _ in choices]
    assert families == sorted(families, key=FAMILIES.index)
    for f in FAMILIES:
        labels = [label.split(" › ")[1] for label, _ in choices if label.startswith(f + " › ")]
        assert labels == sorted(labels, key=str.casefold)
    info = playground.method_info_html("prompt_lookup")
    assert "Without a draft model" in info and "Pays when" in info
    assert "Advisor" in playground.ADVISOR_NOTE


def test_head_is_a_dropdown_of_the_heads_that_fit():
    updates = playground.method_form("eagle", "smollm2-135m:bf16")
    k = len(playground.SLOT_KINDS)
    number, choice, flag, text = updates[1:1 + k]
    assert choice["visible"] and choice["label"] == "head" and choice["value"] == ""
    assert not text["visible"] and choice["allow_custom_value"] is True
    values = [v for _, v in choice["choices"]]
    labels = [lbl for lbl, _ in choice["choices"]]
    assert values[0] == "" and "smollm2-135m-eagle" in values and "held-out top-1" in labels[0]
    assert not any("medusa" in v for v in values)
    slots = [None] * (playground.N_SLOTS * k)
    slots[playground.SLOT_KINDS.index("choice")] = "smollm2-135m-eagle"
    assert playground.collect_params("eagle", slots)["head"] == "smollm2-135m-eagle"
    # another target: its own heads (none shipped for tiny-random), the other slots untouched
    upd = playground.head_slot_update("medusa", "tiny-random")
    head = upd[playground.SLOT_KINDS.index("choice")]
    assert head["value"] == "" and [v for _, v in head["choices"]] == [""]
    assert all(u == {"__type__": "update"} for i, u in enumerate(upd) if i != playground.SLOT_KINDS.index("choice"))
    assert all(u == {"__type__": "update"} for u in playground.head_slot_update("speculative", "tiny-random"))


def test_draft_list_has_every_precision_and_marks_the_fastest_without_measuring(monkeypatch):
    import ui.common as common
    import workbench.backend.profile as profile
    import workbench.backend.speed as speed
    from ui.app import build_app

    def never(*a, **k):
        raise AssertionError("the app measured something at start")

    monkeypatch.setattr(speed, "_time_pair", never)
    monkeypatch.setattr(profile, "measure_cost", never)
    demo = build_app(db=":memory:", default_target="tiny-random")  # reads caches only
    drop = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-draft")
    values = [v for _, v in drop.choices]
    for model in ("smollm2-135m", "tiny-random", "tiny-random:seed=1"):
        assert {model, f"{model}:bf16", f"{model}:fp16", f"{model}:int8"} <= set(values)
    monkeypatch.setattr(common, "measured_here", lambda backend="eager": (
        [{"spec": "tiny-random:int8", "baseline": "tiny-random", "rows": 1, "speedup": 1.4}], []))
    demo = build_app(db=":memory:", default_target="tiny-random")
    drop = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-draft")
    assert ("tiny-random:int8 · fastest here", "tiny-random:int8") in drop.choices
    note = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-draft-speed")
    assert "<code>tiny-random:int8</code> fastest here" in note.value
    method = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-method")
    assert method.choices[0] == ("Plain decoding › Plain decoding (autoregressive)", "autoregressive")
