"""Several users at once: a real app in a subprocess with parallel API clients, and Stop that never overlaps.

The app is started the way a user starts it (`workbench ui`, on 127.0.0.1) with the
tiny random model; four `gradio_client` clients (four Gradio sessions) run prompts and
their baselines in parallel. Everything is checked against the run store: every run
requested is stored and finished, no session gets another's run or baseline, and the
stored decode intervals never overlap (one decode at a time on the device).
"""
from __future__ import annotations

import threading
import time

import pytest

from store import RunStore
from ui.common import AppContext
from ui.tabs import playground
from workbench.config import SamplingConfig

from .load_clients import check_against_store, drive, local_app


@pytest.fixture
def app_url(tmp_path):
    db = tmp_path / "app.sqlite"
    with local_app(db, tmp_path / "app.log") as url:
        yield url, db


@pytest.mark.slow  # an app in a subprocess
def test_four_concurrent_sessions_each_see_only_their_own_runs(app_url):
    url, db = app_url
    report = drive(url, clients=4, runs_per_client=2, max_new_tokens=24, baseline=True, timeout_s=240)
    with RunStore(db) as store:
        check_against_store(report, store)
    print(report.summary())
    assert report.errors == []
    assert len(report.runs) == 8 and report.requested == 16
    assert report.stored == report.finished == 16  # 8 runs + 8 baselines, all finished
    assert report.cross_session == []
    assert report.overlaps == 0


def test_stop_never_lets_two_decodes_overlap(tmp_path, monkeypatch):
    """Stop closes the page's stream at once; the next run still waits for the stopped one's last step."""
    import workbench.api as api

    real_run = api.run
    active = {"now": 0, "max": 0}
    guard = threading.Lock()

    def slow_run(*args, on_step=None, **kwargs):
        with guard:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        try:
            def step(st, tr):
                time.sleep(0.2)  # a slow device: the stopped run is mid-step when the next one is asked for
                on_step(st, tr)
            return real_run(*args, on_step=step, **kwargs)
        finally:
            with guard:
                active["now"] -= 1

    monkeypatch.setattr(api, "run", slow_run)
    store = RunStore(tmp_path / "stop.sqlite")
    ctx = AppContext(store=store, default_target="tiny-random")
    args = dict(method="autoregressive", prompt="first", target="tiny-random", draft=None, params={},
                sampling=SamplingConfig(), max_new_tokens=200, chat=False)
    first = playground.stream_run(ctx, **args)
    for kind, _, _ in first:
        if kind == "tokens":
            break
    first.close()  # what Stop does to the event: the generator is closed, its slot freed
    second = list(playground.stream_run(ctx, **{**args, "prompt": "second", "max_new_tokens": 5}))
    assert second[-1][0] == "done", second[-1]
    assert active["max"] == 1
    runs = {r.prompt: r for r in store.list_runs()}
    assert runs["second"].status == "finished"
    assert runs["first"].status != "running" and len(store.load_trace(runs["first"].id).output_ids) < 200
    store.close()


@pytest.mark.slow  # an app in a subprocess
def test_api_has_stable_names_and_reads_metrics(app_url):
    """What a user of "Use via API" sees: named user-facing endpoints, and a run's metrics as data."""
    from gradio_client import Client

    url, _ = app_url
    client = Client(url, verbose=False)
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/run", "/stop", "/baseline", "/tree", "/tree_step", "/latency", "/history", "/compare", "/delete",
            "/export", "/benchmarks", "/benchmark", "/run_metrics"} <= named
    assert not [n for n in named if n.startswith("/partial")], named
    blanks = {p["parameter_name"]: (None if p["component"] == "Dropdown" else "")
              for p in client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]["parameters"]
              if not p.get("parameter_has_default")}
    out = client.predict(target="tiny-random", draft="tiny-random:bf16", method="speculative", prompt="Hello there",
                         chat=False, max_new_tokens=16, api_name="/run", **blanks)
    run_id = out[3].split("`")[1]
    info = client.predict(run_id, api_name="/run_metrics")
    assert info["status"] == "finished" and info["method"] == "speculative"
    assert info["metrics"]["new_tokens"] == 16 and info["metrics"]["mean_accepted_tokens"] >= 1.0
