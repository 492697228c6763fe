"""Presenters on hand-built Traces: every figure and HTML view says what the Trace implies."""
from __future__ import annotations

import math
import re

import pytest

from ui import presenters as P
from workbench.trace import Step, Trace


def _trace() -> Trace:
    steps = [
        # prefill: the target's first token
        Step(index=0, kind="prefill", bonus_token=10, bonus_p=0.4, committed=[10], draft_s=0.01, verify_s=0.08,
             total_s=0.1, t_end=0.1),
        # chain of 3, first accepted, second rejected -> correction 14
        Step(index=1, kind="decode", tokens=[11, 12, 13], parents=[-1, 0, 1], q=[0.9, 0.8, 0.5],
             p=[0.95, 0.1, 0.3], accepted=[0], bonus_token=14, bonus_p=0.6, committed=[11, 14], draft_s=0.02,
             verify_s=0.05, total_s=0.08, t_end=0.18),
        # chain of 2, fully accepted -> bonus 17
        Step(index=2, kind="decode", tokens=[15, 16], parents=[-1, 0], q=[0.7, 0.6], p=[0.8, 0.9], accepted=[0, 1],
             bonus_token=17, bonus_p=0.5, committed=[15, 16, 17], draft_s=0.02, verify_s=0.04, total_s=0.065,
             t_end=0.245),
        # no draft: plain target token
        Step(index=3, kind="decode", bonus_token=18, bonus_p=0.9, committed=[18], draft_s=0.0, verify_s=0.03,
             total_s=0.031, t_end=0.276),
        # a tree: two roots' children (0, 1), then 2 under 0 and 3 under 1; path 1 -> 3 accepted, 3 is a leaf
        Step(index=4, kind="decode", tokens=[20, 21, 22, 23], parents=[-1, -1, 0, 1], q=[0.5, 0.3, 0.4, 0.6],
             p=[0.1, 0.7, 0.2, 0.8], accepted=[1, 3], bonus_token=24, bonus_p=0.55, committed=[21, 23, 24],
             draft_s=0.03, verify_s=0.05, total_s=0.09, t_end=0.366),
    ]
    return Trace(method="speculative", params={"gamma": 3}, prompt_ids=[1, 2, 3], steps=steps, wall_s=0.37)


TEXTS = [f"t{i}" for i in range(11)]
KINDS = ["plain", "draft", "correction", "draft", "draft", "bonus", "plain", "draft", "draft", "bonus"]


def _spans(html: str) -> list[tuple[str, str, str]]:
    """(class, style, title) of each token span."""
    return re.findall(r'<span class="wb-tok (wb-tok-\w+)" data-step="\d+" style="([^"]*)" title="([^"]*)">', html)


def test_token_kinds_follow_the_trace():
    rows = P.token_rows(_trace())
    assert [r["token"] for r in rows] == [10, 11, 14, 15, 16, 17, 18, 21, 23, 24]
    assert [r["kind"] for r in rows] == KINDS


def test_token_html_classes_colours_and_titles():
    html = P.token_html(_trace(), TEXTS)
    spans = _spans(html)
    assert [c for c, _, _ in spans] == [f"wb-tok-{k}" for k in KINDS]
    for (cls, style, _), kind in zip(spans, KINDS):
        assert f"background:{P.ORIGIN_COLORS[kind]}" in style
    # hover: step, how it came, q and p
    _, _, title = spans[1]
    assert "step 1" in title and "accepted draft token" in title and "q=0.900" in title and "p=0.950" in title
    _, _, title = spans[2]
    assert "step 1" in title and "correction" in title and "p=0.600" in title
    assert "bonus token" in spans[5][2] and "step 2" in spans[5][2]
    assert ">t0<" in html and ">t9<" in html


def test_token_html_escapes_and_shows_invisible_tokens():
    tr = Trace(method="autoregressive", params={}, prompt_ids=[1],
               steps=[Step(index=0, kind="prefill", bonus_token=5, committed=[5]),
                      Step(index=1, kind="decode", bonus_token=6, committed=[6]),
                      Step(index=2, kind="decode", bonus_token=7, committed=[7])])
    html = P.token_html(tr, ["<b>", "\n", "\x05"])
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "↵" in html and "\u2405" in html


def test_token_html_highlights_a_step():
    html = P.token_html(_trace(), TEXTS, highlight_step=2)
    outlined = [m for m in re.findall(r'data-step="(\d+)" style="([^"]*)"', html) if "outline" in m[1]]
    assert [s for s, _ in outlined] == ["2", "2", "2"]


def test_legend_names_every_origin():
    html = P.legend_html()
    for kind, label in P.ORIGIN_LABELS.items():
        assert P.ORIGIN_COLORS[kind] in html and label.split(" (")[0] in html


def _named(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace named {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def test_tree_figure_chain_with_correction():
    step = _trace().steps[1]
    fig = P.tree_figure(step, ["a", "b", "c"], root_text="r", bonus_text="X")
    acc = _named(fig, "accepted")
    assert [c[0] for c in acc.customdata] == [0]
    assert list(acc.text) == ["a"]
    assert set(acc.marker.color) == {P.TREE_COLORS["accepted"]}
    assert acc.customdata[0][1] == "0.900" and acc.customdata[0][2] == "0.950"  # q, p on hover
    rej = _named(fig, "rejected")
    assert [c[0] for c in rej.customdata] == [1, 2]
    assert set(rej.marker.color) == {P.TREE_COLORS["rejected"]} and rej.opacity < 1
    path = _named(fig, "accepted path")
    assert list(path.x) == [0.0, 1.0] and path.line.color == P.TREE_COLORS["accepted"]
    corr = _named(fig, "correction")
    assert list(corr.text) == ["X"] and corr.marker.color == P.TREE_COLORS["correction"]
    assert corr.x[0] == 2.0 and corr.y[0] < 0  # after the accepted node, on its own row
    assert list(_named(fig, "root").text) == ["r"]


def test_tree_figure_full_acceptance_marks_the_bonus_token():
    step = _trace().steps[2]
    fig = P.tree_figure(step, ["a", "b"], bonus_text="B")
    assert [c[0] for c in _named(fig, "accepted").customdata] == [0, 1]
    assert not [t for t in fig.data if t.name == "rejected"]
    bonus = _named(fig, "bonus token")
    assert bonus.marker.color == P.TREE_COLORS["bonus"] and bonus.x[0] == 3.0 and bonus.y[0] == 0.0
    assert list(_named(fig, "accepted path").x) == [0.0, 1.0, 2.0]


def test_tree_figure_branching_tree_highlights_the_accepted_branch():
    step = _trace().steps[4]
    fig = P.tree_figure(step, ["w", "x", "y", "z"], bonus_text="B")
    layout = P.tree_layout(step.parents)
    assert layout == [(1.0, 0.0), (1.0, -1.0), (2.0, 0.0), (2.0, -1.0)]
    acc = _named(fig, "accepted")
    assert [c[0] for c in acc.customdata] == [1, 3] and list(acc.text) == ["x", "z"]
    assert [c[0] for c in _named(fig, "rejected").customdata] == [0, 2]
    path = _named(fig, "accepted path")
    assert list(zip(path.x, path.y)) == [(0.0, 0.0), (1.0, -1.0), (2.0, -1.0)]
    assert _named(fig, "bonus token").y[0] == -1.0


def test_tree_figure_marks_a_block_drafted_in_one_forward():
    """A block drafter's step (draft_forwards == 1) gets a band around its nodes and says so with its draft and
    verify times; the same chain drafted token by token (draft_forwards 0) gets neither."""
    import dataclasses

    chain = _trace().steps[1]
    block = dataclasses.replace(chain, draft_forwards=1)
    fig = P.tree_figure(block, ["a", "b", "c"], bonus_text="X")
    assert "3 draft nodes in one forward, 1 accepted" in fig.layout.title.text
    [band] = [s for s in fig.layout.shapes if s.name == "one-forward block"]
    assert band.x0 < 1.0 and band.x1 > 3.0  # around depths 1..3: every node of the block
    [note] = [a.text for a in fig.layout.annotations if "one forward" in a.text]
    assert "20.0 ms" in note and "50.0 ms" in note  # draft_s, verify_s
    plain = P.tree_figure(chain, ["a", "b", "c"], bonus_text="X")
    assert "one forward" not in plain.layout.title.text and not plain.layout.shapes


def test_tree_figure_without_draft():
    fig = P.tree_figure(_trace().steps[0], [], bonus_text="first")
    assert "no draft" in fig.layout.title.text
    assert list(_named(fig, "target token").text) == ["first"]


def test_attention_mask_matches_the_engine_buffer():
    from workbench.draft import Draft

    for parents in ([-1, -1, 0, 1], [-1, 0, 1], [-1, 0, 0, 2, -1], []):
        ours = P.attention_mask(parents)
        theirs = Draft(list(range(len(parents))), list(parents)).ancestor_matrix().tolist()
        assert ours == theirs
    fig = P.mask_figure(_trace().steps[4], ["w", "x", "y", "z"])
    z = fig.data[0].z
    assert [list(r) for r in z] == [[int(v) for v in row] for row in P.attention_mask([-1, -1, 0, 1])]
    assert list(fig.data[0].x)[0] == "root" and len(fig.data[0].x) == 5


def test_is_chain():
    tr = _trace()
    assert P.is_chain(tr.steps[1]) and not P.is_chain(tr.steps[4])


def test_latency_bars_sum_to_step_time():
    tr = _trace()
    fig = P.latency_figure(tr)
    assert [t.name for t in fig.data] == ["draft", "verify", "other"] and fig.layout.barmode == "stack"
    for i, s in enumerate(tr.steps):
        total = sum(t.y[i] for t in fig.data)
        assert total == pytest.approx(1000 * s.total_s)
        assert fig.data[0].y[i] == pytest.approx(1000 * s.draft_s)


def test_tokens_over_time_and_overlay():
    tr = _trace()
    xs, ys = P.tokens_over_time(tr)
    assert xs == [0.0, 0.1, 0.18, 0.245, 0.276, 0.366]
    assert ys == [0, 1, 3, 6, 7, 10]
    fig = P.tokens_time_figure({"method": tr, "baseline": tr})
    assert [t.name for t in fig.data] == ["method", "baseline"]


def test_acceptance_histogram_counts():
    tr = _trace()
    assert P.acceptance_counts(tr) == [0, 1, 2]  # step 1 accepted 1, steps 2 and 4 accepted 2
    fig = P.acceptance_histogram_figure(tr)
    assert list(fig.data[0].y) == [0, 1, 2] and list(fig.data[0].x) == [0, 1, 2]


def test_acceptance_by_position_figure():
    tr = _trace()
    alphas = tr.summary().acceptance_by_position
    fig = P.acceptance_position_figure(tr)
    assert list(fig.data[0].x) == [k + 1 for k in range(len(alphas))]
    assert list(fig.data[0].y) == pytest.approx(alphas)


def test_metric_cards_and_speedup():
    tr = _trace()
    s = tr.summary()
    html = P.metric_cards_html(tr, baseline_tokens_per_s=s.tokens_per_s / 2)
    for key in ("tokens_per_s", "tau", "acceptance_rate", "target_forward_passes", "ttft", "speedup"):
        assert f'data-metric="{key}"' in html
    assert "2.00×" in html
    assert f"{s.mean_accepted_tokens:.2f}" in html and "100 ms" in html
    missing = P.metric_cards_html(tr, baseline_note="no baseline yet")
    assert "no baseline yet" in missing and "×" not in missing
    plain = P.metric_cards_html(Trace("autoregressive", {}, [1], tr.steps[:1], wall_s=0.1))
    assert "1.00×" in plain


def test_metric_cards_while_streaming_use_the_last_step_time():
    tr = _trace()
    tr.wall_s = 0.0
    html = P.metric_cards_html(tr)
    assert f"{10 / 0.366:.1f}" in html


def test_token_diff_marks_differences():
    html = P.token_diff_html(["a", "b", "c", "d"], ["a", "x", "c", "d", "e"], "A", "B")
    assert re.search(r'class="wb-diff-del"[^>]*>b<', html)
    assert re.search(r'class="wb-diff-ins"[^>]*>x<', html)
    assert re.search(r'class="wb-diff-ins"[^>]*>e<', html)
    assert len(re.findall(r'class="wb-diff-eq"', html)) == 3
    assert 'data-changed="2"' in html
    assert "3 matched · 1 substituted · 0 deleted · 1 inserted" in html
    same = P.token_diff_html(["a", "b"], ["a", "b"])
    assert "token-identical" in same and 'data-changed="0"' in same


def test_token_diff_aligns_a_shifted_output():
    """A 48-token pair that differs by one token up front is 1 deleted + 1 inserted, not dozens of positions."""
    a = list(range(48))
    b = [999] + a[:47]
    counts, _ = P.diff_counts(a, b)
    assert counts == {"matched": 47, "substituted": 0, "deleted": 1, "inserted": 1}
    texts_a, texts_b = [f"t{i}" for i in a], [f"t{i}" for i in b]
    html = P.token_diff_html(texts_a, texts_b, a_ids=a, b_ids=b)
    assert 'data-changed="2"' in html and 'data-matched="47"' in html and "aligned over token ids" in html
    for x, y in ((a, b), (a, a[:40]), ([1, 2, 3], [4, 5]), ([], [1]), (a, a[::-1])):
        n, _ = P.diff_counts(x, y)  # the counts always add up to both lengths
        assert n["matched"] + n["substituted"] + n["deleted"] == len(x)
        assert n["matched"] + n["substituted"] + n["inserted"] == len(y)


def test_token_diff_uses_ids_when_texts_agree():
    """Two different tokens that print alike ("a" as one token, or as another id) are a difference by id."""
    html = P.token_diff_html(["a", "b"], ["a", "b"], a_ids=[1, 2], b_ids=[1, 3])
    assert 'data-substituted="1"' in html
    assert "token-identical" in P.token_diff_html(["a", "b"], ["a", "b"])  # by text they are the same


def test_runs_and_compare_frames():
    from datetime import datetime, timezone

    recs = [
        {"id": "a" * 32, "created_at": datetime(2025, 1, 2, tzinfo=timezone.utc), "method": "speculative",
         "target": "t", "draft": "t:bf16", "prompt": "hello " * 30, "status": "finished",
         "metrics": {"tokens_per_s": 20.0, "mean_accepted_tokens": 3.0, "acceptance_rate": 0.8, "new_tokens": 12}},
        {"id": "b" * 32, "created_at": datetime(2025, 1, 1, tzinfo=timezone.utc), "method": "autoregressive",
         "target": "t", "draft": None, "prompt": "hello", "status": "finished",
         "metrics": {"tokens_per_s": 10.0, "mean_accepted_tokens": 1.0, "acceptance_rate": math.nan}},
    ]
    df = P.runs_frame(recs)
    assert list(df.columns) == P.RUN_COLUMNS
    assert list(df["id"]) == ["aaaaaaaa", "bbbbbbbb"] and df["α (path)"].isna().tolist() == [False, True]
    assert len(df["prompt"][0]) <= 60
    assert df["speedup"].isna().tolist() == [True, False] and df["speedup"][1] == 1.0  # no baseline given
    assert list(P.runs_frame(recs, baselines={"a" * 32: recs[1]})["speedup"]) == [2.0, 1.0]
    cmp = P.compare_frame(recs)
    assert list(cmp.columns) == ["", "aaaaaaaa", "bbbbbbbb"]
    row = cmp[cmp[""] == P.SPEEDUP_ROW].iloc[0]
    assert row["aaaaaaaa"] == "—" and row["bbbbbbbb"] == "1.00×"  # no stored baseline for the speculative run
    # against the run's own plain-decoding baseline, whatever the order of the selection
    for order in (recs, recs[::-1]):
        cmp = P.compare_frame(order, {"a" * 32: recs[1], "b" * 32: None})
        row = cmp[cmp[""] == P.SPEEDUP_ROW].iloc[0]
        assert row["aaaaaaaa"] == "2.00×" and row["bbbbbbbb"] == "1.00×"
        assert cmp[cmp[""] == P.BASELINE_ROW].iloc[0]["aaaaaaaa"] == "bbbbbbbb (10.0 tok/s)"


def test_metric_cards_show_the_backend_and_its_warm_up_apart():
    tr = _trace()
    assert 'data-metric="backend"' not in P.metric_cards_html(tr)  # notebooks: six cards as before
    eager = P.metric_cards_html(tr, backend="eager", warmup_s=0.0)
    assert 'data-metric="backend"' in eager and "not counted" not in eager
    compiled = P.metric_cards_html(tr, backend="compiled", warmup_s=95.4)
    assert "compiled in 95 s (not counted)" in compiled
    assert f"{tr.summary().tokens_per_s:.1f}" in compiled  # tokens/s leaves the warm-up out
    assert "already compiled" in P.metric_cards_html(tr, backend="compiled", warmup_s=0.0)


def test_compare_and_runs_frames_show_the_backend():
    recs = [{"id": "a" * 32, "method": "speculative", "target": "t", "status": "finished",
             "metrics": {"tokens_per_s": 20.0}, "env": {"backend": "compiled", "warmup_s": 61.7}},
            {"id": "b" * 32, "method": "autoregressive", "target": "t", "status": "finished",
             "metrics": {"tokens_per_s": 10.0}, "env": {}}]  # stored before backends existed: eager
    assert list(P.runs_frame(recs)["backend"]) == ["compiled", "eager"]
    cmp = P.compare_frame(recs)
    row = cmp[cmp[""] == "backend"].iloc[0]
    assert row["aaaaaaaa"] == "compiled · 62 s warm-up" and row["bbbbbbbb"] == "eager"


PROFILES = [  # made up: eager climbs with n, compiled stays flat, bf16 is slower on this CPU
    {"model": "m", "device": "cpu", "cpu": "Made-up CPU 9000", "backend": "eager", "threads": 2,
     "seconds": {1: 0.020, 2: 0.024, 4: 0.032, 8: 0.048, 16: 0.080}},
    {"model": "m", "device": "cpu", "cpu": "Made-up CPU 9000", "backend": "compiled", "threads": 2,
     "seconds": {1: 0.012, 2: 0.0125, 4: 0.013, 16: 0.020}},
    {"model": "m:bf16", "device": "cpu", "cpu": "Made-up CPU 9000", "backend": "eager", "threads": 1,
     "seconds": {1: 0.030, 8: 0.060}},
    {"model": "other", "device": "cpu", "cpu": "Made-up CPU 9000", "backend": "eager", "threads": 2,
     "seconds": {2: 0.5, 4: 0.6}},
]


def test_cost_figure_one_line_per_model_backend_threads():
    fig = P.cost_figure(PROFILES)
    assert [t.name for t in fig.data] == ["m · compiled · 2 threads", "m · eager · 2 threads",
                                          "m:bf16 · eager · 1 thread", "other · eager · 2 threads"]
    eager = fig.data[1]
    assert list(eager.x) == [1, 2, 4, 8, 16] and list(eager.y) == pytest.approx([20, 24, 32, 48, 80])
    assert eager.line.dash == "solid" and fig.data[0].line.dash == "dash"
    assert "Made-up CPU 9000" in fig.layout.title.text and fig.layout.xaxis.type == "log"
    assert fig.layout.yaxis.title.text.startswith("ms per forward") and fig.layout.yaxis.type == "log"
    rel = P.cost_figure(PROFILES, relative=True)
    assert list(rel.data[1].y) == pytest.approx([1, 1.2, 1.6, 2.4, 4])
    assert "one token" in rel.layout.yaxis.title.text
    assert len(P.cost_figure([]).data) == 0  # nothing measured: a note, no lines


def test_cost_at_interpolates_inside_the_measured_sizes_only():
    compiled = PROFILES[1]
    assert P.cost_at(compiled, 4) == 0.013
    assert P.cost_at(compiled, 8) == pytest.approx(0.013 + 0.007 * 4 / 12)
    assert P.cost_at(compiled, 32) is None and P.cost_at(PROFILES[3], 1) is None


def test_cost_summary_names_the_fastest_for_1_and_8_tokens():
    (line,) = P.cost_summary(PROFILES).split("  \n")  # "other" covers neither 1 nor 8 tokens: no line
    assert line.startswith("**m** fastest") and line.endswith("3 profiles measured")
    one, eight = line.split("; ")
    assert "for 1 token: `m · compiled · 2 threads` (12.00 ms)" in one
    assert "for 8 tokens: `m · compiled · 2 threads` (15.33 ms, 1.28× one token)" in eight
    assert "Measure this machine" in P.cost_summary([])
    assert [r["model"] for r in P.rows_for_model(PROFILES, "m:fp16")] == ["m", "m", "m:bf16"]


def test_profile_label_names_the_static_verification_sizes():
    from ui.presenters.costs import profile_label

    row = {"model": "m", "backend": "compiled", "static": "2,4,8,16", "threads": 2}
    assert profile_label(row) == "m · compiled (static 2,4,8,16) · 2 threads"
    assert profile_label({**row, "static": None}) == "m · compiled · 2 threads"


# ---------------------------------------------------------------- acceptance: one definition, labelled


def test_acceptance_card_shows_path_acceptance_and_labels_node_acceptance():
    """The big figure and its caption are the same quantity (path acceptance); node acceptance is labelled."""
    from workbench import metrics as M

    tr = _trace()
    acc = M.acceptance(tr.steps)
    # step 1: 1 accepted + the rejection; step 2: 2 accepted, whole chain; step 4: 2 accepted, ends at a leaf
    assert (acc.accepted, acc.path_positions, acc.drafted_nodes) == (5, 6, 9)
    html = P.metric_cards_html(tr)
    card = re.search(r'<div class="wb-card" data-metric="acceptance_rate"([^>]*)>(.*?)</div></div>', html).group(0)
    assert 'data-accepted="5" data-path-positions="6" data-drafted-nodes="9"' in card
    assert ">path acceptance α<" in card and ">83%<" in card  # 5 / 6
    assert "5 / 6 drafted positions on the verified path accepted" in card
    assert "node acceptance 56%: 5 / 9 drafted tree nodes accepted" in card
    s = tr.summary()
    assert s.acceptance_rate == pytest.approx(5 / 6) and s.path_positions == 6
    assert s.node_acceptance_rate == pytest.approx(5 / 9) and s.drafted_tokens == 9
    nothing = P.metric_cards_html(Trace("autoregressive", {}, [1], tr.steps[:1], wall_s=0.1))
    assert "nothing drafted" in nothing


def test_path_acceptance_of_a_tree_path_ending_at_a_shallow_leaf():
    """No rejection is counted when the accepted path ends at a leaf, however deep another branch goes."""
    from workbench import metrics as M

    leaf = Step(index=1, kind="decode", tokens=[5, 6, 7], parents=[-1, -1, 1], accepted=[0], committed=[5, 9])
    assert not M.rejected_on_path(leaf) and M.path_positions(leaf) == 1
    assert M.acceptance_rate([leaf]) == 1.0 and M.acceptance_by_position([leaf]) == [1.0]
    assert M.node_acceptance_rate([leaf]) == pytest.approx(1 / 3)
    rejected = Step(index=2, kind="decode", tokens=[5, 6, 7], parents=[-1, -1, 1], accepted=[1], committed=[6, 9])
    assert M.rejected_on_path(rejected) and M.path_positions(rejected) == 2  # node 2 under node 1 was rejected
    assert M.acceptance_by_position([leaf, rejected]) == [1.0, 0.0]
    none = Step(index=3, kind="decode", tokens=[5, 6], parents=[-1, 0], accepted=[], committed=[9])
    assert M.path_positions(none) == 1 and M.acceptance_rate([none]) == 0.0
    assert math.isnan(M.acceptance_rate([Step(index=4, kind="decode", committed=[1])]))


# ---------------------------------------------------------------- speedup: what it is worth


def _rec(rid, method="speculative", tps=10.0, created=None, **env):
    from datetime import datetime, timezone

    return {"id": rid * 32 if len(rid) == 1 else rid, "method": method, "metrics": {"tokens_per_s": tps},
            "created_at": created or datetime(2025, 1, 2, 12, tzinfo=timezone.utc),
            "env": {"backend": "eager", "cpu": "CPU A", "gpu": None, "cpu_count": 8, "torch_threads": 4,
                    "torch": "2.5", **env}}


def test_baseline_facts_age_backend_and_machine():
    from datetime import datetime, timedelta, timezone

    now = datetime(2025, 1, 2, 15, tzinfo=timezone.utc)
    run = _rec("a", tps=14.2, created=now)
    fresh = P.baseline_facts(run, _rec("b", "autoregressive", 7.1), now)
    assert fresh.age_s == 3 * 3600 and not fresh.rerun and P.rerun_label(fresh) is None
    line = P.baseline_line(fresh)
    assert line == "vs 7.1 tok/s plain decoding · run bbbbbbbb · eager · baseline 3 h old · this machine"
    old = P.baseline_facts(run, _rec("b", "autoregressive", 7.1, created=now - timedelta(hours=30)), now)
    assert old.stale and P.rerun_label(old) == "Re-run baseline" and "30 h old" in P.baseline_line(old)
    assert P.rerun_reasons(old) == ["older than 24 h"]
    other = P.baseline_facts(run, _rec("b", "autoregressive", 7.1, cpu="CPU B", torch_threads=2), now)
    assert other.other_machine and other.rerun and "another machine" in P.baseline_line(other)
    assert P.rerun_reasons(other) == ["from another machine: CPU CPU B (this run: CPU A)",
                                      "with other settings: torch threads 2 (this run: 4)"]
    unknown = P.baseline_facts(run, {**_rec("b", "autoregressive", 7.1), "env": {}}, now)
    assert not unknown.machine_diffs and unknown.backend == "eager"  # not recorded: not a difference
    assert P.rerun_label(None) == "Run baseline"
    assert [P.age_text(x) for x in (5, 600, 7200, 5 * 86400, None)] == \
        ["just now", "10 min old", "2 h old", "5 days old", "age unknown"]


def test_speedup_spread_and_run_to_run_variation():
    from workbench import metrics as M

    sp = M.speedup_spread([12.0, 14.0, 13.0], [10.0, 8.0])
    assert sp.median == pytest.approx(13 / 9) and sp.low == pytest.approx(12 / 10) and sp.high == pytest.approx(14 / 8)
    assert (sp.n_runs, sp.n_baselines) == (3, 2)
    assert M.speedup_spread([], [1.0]) is None and M.speedup_spread([1.0], [float("nan")]) is None
    v = M.run_to_run_variation([[10.0, 11.0], [20.0, 20.0, 22.0], [5.0]])
    # deviations from each group's median: 0.5/10.5 twice; 0, 0, 2/20
    assert (v.groups, v.runs) == (2, 5) and v.largest == pytest.approx(0.1)
    assert v.typical == pytest.approx(0.5 / 10.5)
    assert M.run_to_run_variation([[3.0]]) is None


def test_speedup_lines_say_spread_or_measured_noise_never_a_made_up_one():
    from workbench import metrics as M

    facts = P.baseline_facts(_rec("a"), _rec("b", "autoregressive", 7.1), _rec("a")["created_at"])
    single = P.speedup_lines(facts, M.speedup_spread([10.0], [7.1]), None)
    assert single[0].startswith("vs 7.1 tok/s plain decoding") and "not a measurement of noise" in single[-1]
    assert "±" not in " ".join(single)
    measured = P.speedup_lines(facts, None, M.run_to_run_variation([[10.0, 11.0], [20.0, 22.0]]))
    assert "single runs on this machine vary by ±5% typically (up to ±5%; measured over 4 runs of 2 repeated settings)" \
        in measured[-1]
    repeated = P.speedup_lines(facts, M.speedup_spread([12.0, 14.0, 13.0], [10.0, 8.0]))
    assert repeated[-1] == "median 1.44× (1.20–1.75×) over 3 runs and 2 baselines of these settings"
    now = _rec("a")["created_at"]
    other = P.baseline_facts(_rec("a"), _rec("b", "autoregressive", 7.1, cpu="CPU B"), now)
    lines = P.speedup_lines(other)
    assert lines[1].startswith("re-run the baseline: it is from another machine")
    html = P.metric_cards_html(_trace(), 7.1, baseline_note=lines[0], speedup_lines=lines[1:], speedup_warn=True)
    card = re.search(r'data-metric="speedup"[^>]*>(.*?)</div></div>', html).group(0)
    assert 'data-rerun="true"' in card and "another machine" in card and "not a measurement of noise" in card


# ---------------------------------------------------------------- the Playground's pickers


SPEEDS = [  # made up: int8 1.6x faster than fp32 per token, bf16 slower; rows=8 is another measurement
    {"spec": "m:int8", "baseline": "m", "rows": 1, "speedup": 1.6},
    {"spec": "m:bf16", "baseline": "m", "rows": 1, "speedup": 0.7},
    {"spec": "m:bf16", "baseline": "m", "rows": 8, "speedup": 3.0},
    {"spec": "slow:bf16", "baseline": "slow", "rows": 1, "speedup": 0.5},
]


def test_draft_choices_offer_every_precision_and_mark_the_fastest():
    assert P.precision_specs("m") == ["m", "m:bf16", "m:fp16", "m:int8"]
    specs = P.precision_specs("m") + P.precision_specs("slow") + ["other:bf16"]
    labels = dict((v, k) for k, v in P.draft_choices(specs, SPEEDS))
    assert labels["m:int8"] == "m:int8 · fastest here" and labels["m:bf16"] == "m:bf16"
    assert labels["slow"] == "slow · fastest here"  # fp32 itself when every reduced precision is slower
    assert labels["other:bf16"] == "other:bf16"  # nothing measured: nothing claimed
    assert "<b>m</b>: <code>m:int8</code> fastest here (per token vs fp32: bf16 0.70×, int8 1.60×)" \
        in P.fastest_note(SPEEDS)
    assert "No draft precision timed" in P.fastest_note()
    # the cost profiles, when nothing was timed in pairs: one backend and thread count at a time
    profiles = [{"model": "p", "backend": "eager", "threads": 2, "seconds": {1: 0.02}},
                {"model": "p:int8", "backend": "eager", "threads": 2, "seconds": {1: 0.01}},
                {"model": "p:bf16", "backend": "eager", "threads": 1, "seconds": {1: 0.001}},
                {"model": "p|skip=3", "backend": "eager", "threads": 2, "seconds": {1: 0.0001}}]
    assert P.fastest_precisions([], profiles)["p"][0] == "p:int8"
    assert P.fastest_precisions([], profiles[:1]) == {}  # one precision alone says nothing


HEADS = [  # as workbench.heads.list_heads gives them: yours first, then the shipped ones
    {"name": "m-eagle", "kind": "eagle", "target": "m", "where": "user", "origin": "trained", "path": "/u/m-eagle",
     "top1": [0.5]},
    {"name": "imported-eagle", "kind": "eagle", "target": "m", "where": "user", "origin": "imported",
     "path": "/u/imported-eagle", "top1": None},
    {"name": "m-medusa", "kind": "medusa", "target": "m", "where": "builtin", "origin": "shipped",
     "path": "/pkg/m-medusa", "top1": [0.275, 0.141]},
    {"name": "m-eagle", "kind": "eagle", "target": "m", "where": "builtin", "origin": "shipped",
     "path": "/pkg/m-eagle", "top1": [0.377]},
    {"name": "x-eagle", "kind": "eagle", "target": "x", "where": "builtin", "origin": "shipped",
     "path": "/pkg/x-eagle", "top1": [0.9]},
]


def test_head_choices_fit_the_target_with_their_accuracy():
    choices = P.head_choices(HEADS, "m:bf16", "eagle")
    assert choices == [("default: m-eagle (trained) · held-out top-1 50%", ""),
                       ("m-eagle · trained · held-out top-1 50%", "m-eagle"),
                       ("imported-eagle · imported · no held-out accuracy on its card", "imported-eagle"),
                       ("m-eagle · shipped · held-out top-1 38%", "/pkg/m-eagle")]  # hidden by yours: its directory
    assert P.head_choices(HEADS, "m", "medusa")[1] == ("m-medusa · shipped · held-out top-1 28/14% by head",
                                                        "m-medusa")
    assert P.head_choices(HEADS, "other", "eagle") == [
        ("default: other-eagle (none yet; train one with `workbench train --kind eagle`)", "")]


def test_an_imported_published_head_shows_its_layout_and_source():
    heads = [{"name": "m-eagle3-hub", "kind": "eagle3", "target": "m", "where": "user", "origin": "imported",
              "source": "owner/EAGLE3-m", "format": "speculators", "path": "/u/m-eagle3-hub", "top1": None}]
    assert P.head_choices(heads, "m", "eagle3")[1] == (
        "m-eagle3-hub · imported speculators from owner/EAGLE3-m · no held-out accuracy on its card", "m-eagle3-hub")


def test_method_choices_by_family_then_shown_name():
    groups = [("Plain decoding", [{"name": "autoregressive", "label": "Plain decoding (autoregressive)"}]),
              ("Draft model, chain", [{"name": "speculative", "label": "Speculative decoding (draft model)"}])]
    assert P.method_choices(groups) == [("Plain decoding › Plain decoding (autoregressive)", "autoregressive"),
                                        ("Draft model, chain › Speculative decoding (draft model)", "speculative")]


def test_runs_frame_tells_runs_with_other_settings_apart():
    recs = [{"id": "a" * 32, "method": "eagle", "status": "finished", "metrics": {},
             "params": {"depth": "3", "top_k": "4", "head": "", "max_new_tokens": "48", "chat": "true"},
             "sampling": {"temperature": 0.0, "seed": 5}},
            {"id": "b" * 32, "method": "eagle", "status": "finished", "metrics": {},
             "params": {"depth": "5", "top_k": "4", "head": "", "max_new_tokens": "48", "chat": "true",
                        "bench.repeat": "2"},
             "sampling": {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 1}}]
    df = P.runs_frame(recs, defaults={"eagle": {"depth": 5, "top_k": 4, "head": ""}})
    assert list(df["settings"]) == ["depth=3 · 48 new · chat", "defaults · 48 new · chat"]
    assert list(df["sampling"]) == ["greedy", "T 0.7 · top-p 0.9 · seed 1"]
    assert P.settings_text(recs[0]) == 'depth=3 head="" top_k=4 · 48 new · chat'  # no defaults known: all of them
