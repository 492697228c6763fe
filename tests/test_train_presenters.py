"""The Train tab: presenters on hand-built training dicts, and its handlers over a real store."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest

from store import RunStore
from ui import presenters as P
from ui.common import AppContext
from ui.exposure import ExposurePolicy
from ui.tabs import train

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def _finished(**over) -> dict:
    t = {
        "id": "3f2a9c1e" + "0" * 24, "created_at": "2026-12-04T11:50:00+00:00",
        "finished_at": "2026-12-04T11:56:40+00:00", "status": "finished", "error": None, "kind": "medusa",
        "target": "smollm2-135m", "out_dir": "/home/me/heads/medusa-smollm2",
        "config": {"kind": "medusa", "steps": 300, "lr": 0.0003, "heads": 3, "prompts": "/home/me/data/prompts.jsonl",
                   "betas": [0.9, 0.95], "out": "/home/me/heads/medusa-smollm2"},
        "data": {"prompts": 64, "responses": 64, "tokens": 12288, "heldout_tokens": 1024},
        "curves": {"lr": [[0, 0.0], [150, 3e-4], [300, 1e-5]], "loss": [[0, 9.5], [150, 4.1], [300, 3.2]],
                   "token_loss": [[0, 9.0], [150, 3.9], [300, 3.0]]},
        "accuracy": {"top1": [0.61, 0.38, 0.22], "top5": [0.84, 0.66, 0.47], "acceptance_estimate": 1.93},
        "timings": {"generate_s": 250.0, "features_s": 20.5, "train_s": 125.0, "total_s": 395.5},
        "env": {"device": "cpu", "threads": 2}, "owner_pid": 1, "owner_host": "h", "owner_started": 0.0,
        "heartbeat_at": None,
    }
    t.update(over)
    return t


def _running_no_curves() -> dict:
    return _finished(status="running", finished_at=None, kind="eagle", curves={}, accuracy={}, timings={},
                     data={"prompts": 64}, created_at=(NOW - timedelta(minutes=3)).isoformat())


# ---------------------------------------------------------------- presenters


def test_table_of_trainings() -> None:
    df = P.trainings_frame([_finished(), _running_no_curves()], now=NOW)
    assert list(df.columns) == P.TRAINING_COLUMNS
    done, running = df.to_dict("records")
    assert done["id"] == "3f2a9c1e" and done["kind"] == "medusa" and done["status"] == "finished"
    assert (done["responses"], done["tokens"], done["steps"]) == (64, 12288, "300")
    assert done["top-1 per head"] == "0.61 · 0.38 · 0.22" and done["time"] == "6 min 36 s"
    assert running["steps"] == "" and running["top-1 per head"] == "" and running["time"] == "running 3 min 0 s"
    assert running["tokens"] is None or running["tokens"] != running["tokens"]  # missing, not 0
    empty = P.trainings_frame([])
    assert empty.empty and list(empty.columns) == P.TRAINING_COLUMNS


def test_running_training_shows_progress() -> None:
    t = _finished(status="running", finished_at=None, accuracy={}, timings={},
                  curves={"loss": [[0, 9.5], [10, 8.0], [20, None]]},
                  created_at=(NOW - timedelta(seconds=42)).isoformat())
    assert P.last_step(t) == 20 and P.planned_steps(t) == 300
    assert P.trainings_frame([t], now=NOW)["steps"][0] == "20 / 300"
    md = P.training_summary(t, now=NOW)
    assert "**running**" in md and "step 20 of 300 (7%)" in md and "42 s so far" in md and "Refresh" in md
    fig = P.loss_figure(t)
    assert [tr.name for tr in fig.data] == ["loss"] and list(fig.data[0].y) == [9.5, 8.0, None]  # NaN: a gap
    assert "comes when training ends" in _annotation(P.accuracy_figure(t))


def test_running_training_with_no_curves_yet() -> None:
    t = _running_no_curves()
    md = P.training_summary(t, now=NOW)
    assert "preparing data" in md and "3 min 0 s so far" in md
    assert "no curves yet" in _annotation(P.loss_figure(t))
    assert "comes when training ends" in _annotation(P.accuracy_figure(t))
    details = P.training_details(t)
    assert "**Data:** prompts 64" in details and "**Time:** —" in details and "Held-out" not in details


def _annotation(fig: go.Figure) -> str:
    assert not fig.data
    return fig.layout.annotations[0].text


def test_loss_curves_one_line_per_key_learning_rate_on_its_own_axis() -> None:
    fig = P.loss_figure(_finished())
    assert [tr.name for tr in fig.data] == ["loss", "token_loss", "lr"]
    loss, _, lr = fig.data
    assert list(loss.x) == [0, 150, 300] and list(loss.y) == [9.5, 4.1, 3.2] and loss.yaxis == "y"
    assert lr.yaxis == "y2" and fig.layout.yaxis2.overlaying == "y" and fig.layout.xaxis.title.text == "step"
    # malformed points are skipped, a single point is a marker
    fig = P.loss_figure(_finished(curves={"loss": [[5, 1.0], "bad", [None, 2.0], [6]], "feature_loss": []}))
    assert [tr.name for tr in fig.data] == ["loss"] and list(fig.data[0].x) == [5] and fig.data[0].mode == "markers"
    assert "no curves" in _annotation(P.loss_figure(_finished(curves={})))


def test_accuracy_bars_per_head_or_position() -> None:
    fig = P.accuracy_figure(_finished())
    assert fig.layout.barmode == "group" and [tr.name for tr in fig.data] == ["top-1", "top-5"]
    assert list(fig.data[0].x) == ["head 1", "head 2", "head 3"] and list(fig.data[1].y) == [0.84, 0.66, 0.47]
    eagle = P.accuracy_figure(_finished(kind="eagle", accuracy={"top1": [0.7, None], "top5": [0.9, 0.8],
                                                                "chain": [0.7, 0.3]}))
    assert [tr.name for tr in eagle.data] == ["top-1", "top-5", "chain"]
    assert list(eagle.data[0].x) == ["position 1", "position 2"] and list(eagle.data[0].y) == [0.7, None]
    assert "no held-out accuracy" in _annotation(P.accuracy_figure(_finished(accuracy={"note": "skipped"})))
    # what workbench.train writes: the heads' accuracy, and the acceptance of the saved head when served
    served = _finished(accuracy={"top1": [0.6, 0.3], "top5": [0.8, 0.5], "positions": [120, 110],
                                 "serving": {"tau": 1.84, "prompts": 4, "alpha_by_position": [0.55, 0.2]}},
                       data={"prompts": 30, "responses": 30, "tokens": 3000, "train_responses": 27,
                             "heldout_responses": 3, "heldout_tokens": 300},
                       timings={"generate_s": 30.0, "evaluate_s": 4.0, "total_s": 50.0})
    assert [tr.name for tr in P.accuracy_figure(served).data] == ["top-1", "top-5", "serving.alpha_by_position"]
    md = P.training_details(served)
    assert "serving.alpha_by_position 0.550 · 0.200; positions 120 · 110; serving.tau 1.84; serving.prompts 4" in md
    assert "training responses 27 · held-out responses 3 · held-out tokens 300" in md and "evaluate 4.0 s" in md


def test_details_and_the_exposure_policy() -> None:
    t = _finished(error="failed writing /home/me/heads/medusa-smollm2/heads.safetensors: disk full",
                  status="failed")
    md = P.training_details(t)
    assert "**Data:** prompts 64 · responses 64 · tokens 12,288 · held-out tokens 1,024" in md
    assert "**Time:** generate 4 min 10 s · features 20 s · train 2 min 5 s · total 6 min 36 s" in md
    assert "top-1 0.610 · 0.380 · 0.220; top-5 0.840 · 0.660 · 0.470; acceptance_estimate 1.93" in md
    assert "**Output folder:** `/home/me/heads/medusa-smollm2`" in md
    assert ("**Settings:** `steps=300` `lr=0.0003` `heads=3` `prompts=/home/me/data/prompts.jsonl` "
            "`betas=0.9 · 0.95` `out=/home/me/heads/medusa-smollm2`") in md  # kind and target are in the headline
    assert "**Environment:** device cpu · threads 2" in md
    assert "/home/me/heads/medusa-smollm2/heads.safetensors" in P.training_summary(t)

    shared = P.training_details(t, exposed=True) + P.training_summary(t, exposed=True)
    assert "/home/me" not in shared and "medusa-smollm2" not in shared and "`prompts=…/prompts.jsonl`" in shared
    assert f"**Output folder:** {P.HIDDEN}" in shared and f"`out={P.HIDDEN}`" in shared
    assert "…/heads.safetensors: disk full" in shared and "`smollm2-135m`" in shared
    local = _finished(target="/models/my-llama")
    assert "/models" not in P.trainings_frame([local], exposed=True)["target"][0]
    assert "…/my-llama" in P.training_label(local, exposed=True)
    assert P.redact_paths("HuggingFaceTB/SmolLM2-135M at ~/x/y and ./rel/z") == \
        "HuggingFaceTB/SmolLM2-135M at …/y and …/z"  # a hub id is not a local path


def test_durations() -> None:
    assert [P.duration_text(x) for x in (0.42, 42, 395.5, 3725, None, float("nan"), -1)] == \
        ["0.4 s", "42 s", "6 min 36 s", "1 h 02 min", "—", "—", "—"]
    t = _finished(timings={})  # no total_s: finished - created
    assert P.training_seconds(t) == 400.0
    assert P.training_seconds(_finished(timings={}, status="interrupted", finished_at=None)) is None


# ---------------------------------------------------------------- the tab over a store


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "train-ui.sqlite")
    yield s
    s.close()


def _ctx(store: RunStore, exposed: bool = False) -> AppContext:
    return AppContext(store=store, default_target="tiny-random", policy=ExposurePolicy(exposed=exposed))


def test_tab_with_an_empty_store(store) -> None:
    table, ids, pick, msg, summary, loss, acc, details = train.refresh(_ctx(store))
    assert table.empty and ids == [] and pick["choices"] == [] and pick["value"] is None
    assert "No trainings stored yet" in msg and "workbench train" in msg
    assert summary == "Pick a training." and details == "" and isinstance(loss, go.Figure)
    assert "workbench train --kind eagle --target smollm2-135m" in train.HELP


def test_tab_follows_a_running_training(store) -> None:
    ctx = _ctx(store)
    old = store.start_training(kind="medusa", target="tiny-random", out_dir="/tmp/wb-heads/m", config={"steps": 10},
                               env={})
    store.finish_training(old, accuracy={"top1": [0.5, 0.25], "top5": [0.75, 0.5]}, timings={"total_s": 12.0})
    tid = store.start_training(kind="eagle", target="tiny-random", out_dir="/tmp/wb-heads/e", config={"steps": 50},
                               env={"device": "cpu"})
    table, ids, pick, msg, summary, loss, acc, details = train.refresh(ctx)
    assert ids == [tid, old] and pick["value"] == tid and msg == "2 trainings, 1 running"
    assert list(table["kind"]) == ["eagle", "medusa"] and list(table["top-1 per head"]) == ["", "0.50 · 0.25"]
    assert "preparing data" in summary and not loss.data and "`/tmp/wb-heads/e`" in details

    store.update_training(tid, data={"responses": 16, "tokens": 2048},
                          curves={"loss": [[0, 5.0], [25, 3.0]], "lr": [[0, 0.0], [25, 1e-3]]})
    table, ids, pick, msg, summary, loss, acc, details = train.refresh(ctx, tid)
    assert table["steps"][0] == "25 / 50" and table["tokens"][0] == 2048
    assert "step 25 of 50 (50%)" in summary and [tr.name for tr in loss.data] == ["loss", "lr"]

    # picking the older one keeps it picked through a refresh
    summary, loss, acc, details = train.training_view(ctx, old[:8])
    assert "**finished**" in summary and [tr.name for tr in acc.data] == ["top-1", "top-5"]
    assert train.refresh(ctx, old)[2]["value"] == old
    evt = SimpleNamespace(row_value=[old[:8], "x"], index=[1, 0])
    assert train.select_row(ctx, ids, evt)[0] == old
    assert "no training with id" in train.training_view(ctx, "f" * 32)[0]

    # a shared server shows no output folders
    shared = train.refresh(_ctx(store, exposed=True), tid)
    assert "/tmp/wb-heads" not in shared[-1] and P.HIDDEN in shared[-1]
    json.dumps(store.get_training(tid), allow_nan=False)


def test_the_app_has_a_train_tab() -> None:
    import gradio as gr

    from ui.app import build_app

    demo = build_app(db=":memory:", default_target="tiny-random")
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"tab-train", "train-help", "train-refresh", "train-table", "train-loss", "train-acc"} <= ids
    tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    order = [t.id for t in tabs]
    assert order.index("train") == order.index("history") + 1  # right after History (the Advisor tab follows)
    demo.workbench_context.store.close()
