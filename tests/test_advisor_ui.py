"""The app's Advisor tab, its handlers called directly (no browser), on the tiny random model."""
from __future__ import annotations

import pytest

from store import RunStore
from ui.common import AppContext
from ui.exposure import ExposurePolicy
from ui.presenters import advisor as AP
from ui.tabs import advisor


@pytest.fixture
def ctx(tmp_path):
    store = RunStore(tmp_path / "ui.sqlite")
    yield AppContext(store=store, default_target="tiny-random")
    store.close()


def _advise(ctx, **kw):
    args = dict(target="tiny-random", drafts=["tiny-random:bf16"], methods=["prompt_lookup", "speculative"],
                source=advisor.SOURCES[0], category="translation", pasted="", budget="3m", backend="eager", top=2,
                max_new=16)
    args.update(kw)
    return list(advisor.run_advice(ctx, *args.values()))


def test_advise_streams_progress_then_shows_the_stored_advice(ctx):
    outs = _advise(ctx)
    assert any(o[0].startswith("**Working:**") and "probing" in o[0] for o in outs[:-1])  # progress as it goes
    status, ranking, verification, explanation, ceiling, past, ids, pick, count = outs[-1]
    assert status.startswith("**Done:**") and "recommended" in status, status
    stored = ctx.store.list_advice()
    assert [a["id"] for a in stored] == ids and len(ids) == 1
    advice = stored[0]
    assert list(ranking["configuration"]) == [c["label"] for c in advice["result"]["configs"]]
    assert set(verification["configuration"]) == {r["label"] for r in advice["result"]["verification"]["rows"]}
    assert "Reproduce" in explanation and advice["command"] in explanation and "Ceiling here" in explanation
    assert any("ceiling here" in (t.name or "") for t in ceiling.data)
    assert any((t.name or "").startswith("predicted") for t in ceiling.data)
    assert list(past["id"]) == [advice["id"][:8]] and pick["value"] == advice["id"] and count == "1 advice stored"

    # the list reads back what was stored, and a past advice shows again
    table, ids2, pick2, msg, *shown = advisor.refresh(ctx)
    assert ids2 == ids and msg == "1 advice stored"
    assert list(shown[0]["configuration"]) == list(ranking["configuration"])
    assert shown[2] == AP.advice_markdown(ctx.store.get_advice(ids[0]))


@pytest.mark.parametrize("kw, msg", [
    (dict(source=advisor.SOURCES[1], pasted="only one prompt"), "paste at least two prompts"),
    (dict(budget="tomorrow"), "a budget is a duration"),
    (dict(methods=["eagle"], drafts=[]), "no drafter at hand applies to tiny-random"),
])
def test_bad_settings_are_one_status_line(ctx, kw, msg):
    outs = _advise(ctx, **kw)
    assert outs[-1][0].startswith("**Error:**") and msg in outs[-1][0], outs[-1][0]
    assert ctx.store.list_advice() == []


def test_a_shared_server_caps_the_budget(tmp_path):
    store = RunStore(tmp_path / "ui.sqlite")
    ctx = AppContext(store=store, default_target="tiny-random",
                     policy=ExposurePolicy(exposed=True))  # the built-in models are allowed
    outs = _advise(ctx, budget="1h")
    assert outs[-1][0].startswith("**Error:**") and "at most 10m00s" in outs[-1][0]
    store.close()


def test_the_app_has_an_advisor_tab():
    import gradio as gr

    from ui.app import build_app

    demo = build_app(db=":memory:", default_target="tiny-random")
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"tab-advisor", "adv-run", "adv-ranking", "adv-verification", "adv-ceiling", "adv-past"} <= ids
    assert [b.id for b in demo.blocks.values() if isinstance(b, gr.Tab)][-1] == "advisor"
    demo.workbench_context.store.close()


def test_no_advice_yet(ctx):
    table, ids, _, msg, ranking, verification, explanation, _fig = advisor.refresh(ctx)
    assert ids == [] and msg == advisor.NO_ADVICE and ranking.empty and explanation == ""
