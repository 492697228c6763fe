"""A lossy run is marked everywhere and never counted as lossless: the benchmark report (rows, Markdown, CSV,
JSON), the History table and comparison, the quality card and the speed-quality Pareto plot."""
from __future__ import annotations

import csv
import json
import math

import pytest

from store import RunStore
from ui import presenters as P
from workbench.bench.export import to_markdown, write_csv
from workbench.bench.report import ALL, benchmark_report
from workbench.config import ConfigError
from workbench.quality import compare
from workbench.trace import Step, Trace

BASE = [5, 6, 7, 8, 9, 10]
RELAXED = "relaxed acceptance: typical (eps=0.3)"


def _trace(method: str, ids: list[int], wall: float, lossy: list[str] | None = None) -> Trace:
    steps = [Step(index=i, kind="prefill" if i == 0 else "decode", bonus_token=t, committed=[t], verify_s=wall / 8,
                  total_s=wall / len(ids), t_end=wall * (i + 1) / len(ids)) for i, t in enumerate(ids)]
    return Trace(method=method, params={}, prompt_ids=[1, 2], steps=steps, wall_s=wall, lossy=list(lossy or []))


def _bench(store: RunStore, lossy_ids: list[int]) -> str:
    arms = [{"label": "autoregressive", "method": "autoregressive", "backend": "eager", "swept": {}},
            {"label": "prompt_lookup", "method": "prompt_lookup", "backend": "eager", "swept": {}},
            {"label": "relaxed[k=1]", "method": "prompt_lookup", "backend": "eager", "swept": {"k": 1}},
            {"label": "relaxed[k=2]", "method": "prompt_lookup", "backend": "eager", "swept": {"k": 2}}]
    bid = store.start_benchmark(suite="builtin", config={"arms": arms, "categories": ["qa"], "backends": ["eager"]},
                                env={})
    runs = [("autoregressive", "autoregressive", BASE, 1.0, None),
            ("prompt_lookup", "prompt_lookup", BASE, 0.8, None),
            ("relaxed[k=1]", "prompt_lookup", BASE, 0.7, [RELAXED]),  # identical output, still lossy
            ("relaxed[k=2]", "prompt_lookup", lossy_ids, 0.5, [RELAXED])]
    for label, method, ids, wall, lossy in runs:
        rid = store.start_run(method=method, target="tiny-random", draft=None, prompt="q",
                              params={"max_new_tokens": 6, "bench.arm": label, "bench.category": "qa",
                                      "bench.prompt": "1.1", "bench.repeat": 0, "bench.backend": "eager"},
                              sampling={"temperature": 0.0}, env={"backend": "eager"}, benchmark_id=bid)
        q = compare(ids, BASE, output_text=" ".join(map(str, ids)), baseline_text=" ".join(map(str, BASE)),
                    nll=1.0 if ids == BASE else 1.4, baseline_nll=1.0)
        store.finish_run(rid, _trace(method, ids, wall, lossy), "text", quality=q.to_dict())
    store.finish_benchmark(bid)
    return bid


@pytest.fixture
def report(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    return benchmark_report(store, _bench(store, [5, 6, 7, 0, 9, 0]))


def test_a_lossy_arm_is_never_reported_as_lossless(report, tmp_path):
    rows = {r["arm"]: r for r in report.rows if r["category"] == ALL}
    assert rows["prompt_lookup"]["lossless"] and rows["prompt_lookup"]["lossless_match"] == 1.0
    for arm in ("relaxed[k=1]", "relaxed[k=2]"):
        assert rows[arm]["lossless"] is False and rows[arm]["lossy"] == [RELAXED], arm
        assert math.isnan(rows[arm]["lossless_match"]), arm  # identity is no claim of a lossy arm
    assert rows["relaxed[k=1]"]["agreement"] == 1.0  # what it got right shows as quality, not as lossless
    assert rows["relaxed[k=2]"]["agreement"] == pytest.approx(4 / 6)
    assert rows["relaxed[k=2]"]["nll_gap"] == pytest.approx(0.4) and rows["relaxed[k=2]"]["swept"] == {"k": 2}
    assert report.mismatches == []  # a lossy arm's differences are not lossless mismatches

    md = to_markdown(report)
    lines = [line for line in md.splitlines() if line.startswith("| relaxed[")]
    assert not any("| yes |" in line for line in lines)
    assert sum("| LOSSY |" in line for line in lines) == 6  # per method, quality, speed vs quality
    assert "## Quality against plain decoding" in md and RELAXED in md

    out = write_csv(report, tmp_path / "r.csv")
    for row in csv.DictReader(out.open()):
        if row["arm"].startswith("relaxed"):
            assert row["lossless"] == "False" and row["lossy"] == RELAXED and row["lossless_match"] == ""
    js = json.loads(json.dumps(report.to_json()))
    assert all(r["lossless"] is False for r in js["rows"] if r["arm"].startswith("relaxed"))


def test_history_and_compare_mark_lossy_runs(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    _bench(store, [5, 6, 7, 0, 9, 0])
    recs = store.list_runs()
    df = P.runs_frame(recs).set_index("method")
    marks = {(r.id[:8], r.lossless) for r in recs}
    assert {(i, v == "yes") for i, v in zip(P.runs_frame(recs)["id"], P.runs_frame(recs)["lossless"])} == marks
    assert (df.loc["autoregressive", "lossless"], df.loc["autoregressive", "agreement"]) == ("yes", 1.0)
    lossy = [r for r in recs if not r.lossless]
    cmp = P.compare_frame(lossy).set_index("")
    assert all(v.startswith("LOSSY: " + RELAXED) for v in cmp.loc[P.LOSSLESS_ROW])
    assert all(v.startswith("agreement") for v in cmp.loc[P.QUALITY_ROW])


def test_the_quality_card():
    q = compare([1, 2, 9], [1, 2, 3], nll=2.0, baseline_nll=1.5).to_dict()
    card = P.quality_card_html(q, [RELAXED])
    assert "LOSSY" in card and "token 2" in card and "+0.500" in card and RELAXED in card
    assert "lossless" in P.quality_card_html(compare([1], [1]).to_dict(), []) and "LOSSY" not in \
        P.quality_card_html(None, [])


def test_pareto_points_front_and_figure(report, tmp_path):
    points = P.bench_points(report.rows, "agreement")
    by = {p["label"]: p for p in points}
    assert by["prompt_lookup"]["quality"] == 1.0 and by["prompt_lookup"]["lossless"]
    assert by["relaxed[k=2]"]["quality"] == pytest.approx(4 / 6) and not by["relaxed[k=2]"]["lossless"]
    # speedups 1.25 (lossless), 1.43 (lossy, identical), 2.0 (lossy, 4/6): the first is beaten by the second
    front = [p["label"] for p in P.pareto_front(points, "agreement")]
    assert front == ["relaxed[k=1]", "relaxed[k=2]"]
    fig = P.pareto_figure(points, "agreement", speed_label="speedup")
    names = [t.name for t in fig.data]
    assert "Pareto front" in names and "lossless" in names and "lossy" in names
    assert any(n.startswith("sweep: prompt_lookup (k") for n in names)
    # the NLL gap: lower is better, lossless on the 0 line
    gap = {p["label"]: p["quality"] for p in P.bench_points(report.rows, "nll_gap")}
    assert gap["prompt_lookup"] == 0.0 and gap["relaxed[k=2]"] == pytest.approx(0.4)
    with pytest.raises(ConfigError, match="unknown quality measure 'speed'"):
        P.pareto_figure(points, "speed")


def test_pareto_points_of_stored_runs(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    _bench(store, [5, 6, 7, 0, 9, 0])
    points = P.run_points(store.list_runs(), "rouge_l")
    assert len(points) == 4 and sum(not p["lossless"] for p in points) == 2
    assert all(p["quality"] == 1.0 for p in points if p["lossless"])
    assert P.pareto_figure(points, "rouge_l").layout.xaxis.title.text == "tokens/s"


def test_the_history_tab_filters_and_plots_lossy_runs(tmp_path):
    from ui.common import AppContext
    from ui.tabs import history, playground

    store = RunStore(tmp_path / "runs.sqlite")
    bid = _bench(store, [5, 6, 7, 0, 9, 0])
    ctx = AppContext(store=store, default_target="tiny-random")
    table, ids, _, _ = history.history_table(ctx, "", [], [], None, "lossy only")
    assert len(ids) == 2 and set(table["lossless"]) == {"LOSSY"}
    table, ids, _, _ = history.history_table(ctx, "", [], [], None, "lossless only")
    assert len(ids) == 2 and set(table["lossless"]) == {"yes"}
    assert len(history.history_table(ctx, "", [], [])[1]) == 4
    msg, fig = history.runs_pareto(ctx, "", [], [], "all runs", "rouge_l")
    assert msg.startswith("4 finished listed runs; 2 lossless") and len(fig.data) >= 2
    msg, _ = history.runs_pareto(ctx, "", [], [], "all runs", "rouge_l", ids[:1])
    assert msg.startswith("1 finished selected runs; 1 lossless")
    msg, _ = history.runs_pareto(ctx, "", [], [], "all runs", "bleu")
    assert "unknown quality measure 'bleu'" in msg
    names = [t.name for t in history.bench_pareto(ctx, bid, "agreement").data]
    assert "lossy" in names and any(n.startswith("sweep: ") for n in names)
    assert history.run_summary(ctx, ids[0])["lossless"] is True
    lossy = store.list_runs(lossless=False)[0]
    cards, _ = playground._cards(ctx, store.load_trace(lossy.id), lossy.id)
    assert "LOSSY" in cards and "Quality vs plain decoding" in cards and RELAXED in cards


def test_bench_sweep_stores_quality_and_draws_its_curve(tmp_path, capsys):
    """`bench --sweep` on the task suite: every run carries its quality (against the baseline arm's run of the
    same prompt) and its task score; the report's speed-quality section and --pareto plot show the sweep."""
    from workbench.cli import main

    db, md, page = tmp_path / "runs.sqlite", tmp_path / "r.md", tmp_path / "p.html"
    rc = main(["--db", str(db), "bench", "--suite", "tasks", "--categories", "task_arithmetic", "--limit", "1",
               "--methods", "prompt_lookup", "--sweep", "prompt_lookup.num_draft=2,4", "-n", "8", "-r", "1",
               "--no-trace-overhead", "--markdown", str(md), "--pareto", str(page), "--quality-measure", "rouge_l",
               "--target", "tiny-random", "--bandwidth-mib", "4", "--warmup-tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sum(" agree 1.00 | ETA" in line for line in err.splitlines()) == 3  # each run's progress line
    runs = RunStore(db).list_runs()
    assert len(runs) == 3 and all(r.quality is not None and r.lossless for r in runs)
    assert all(r.quality["agreement"] == 1.0 and r.quality["task_check"] == "number" for r in runs)
    text = md.read_text()
    assert "## Speed vs quality (ROUGE-L" in text and "| prompt_lookup[num_draft=2] |" in text
    assert page.read_text().count("sweep: prompt_lookup (num_draft") >= 1


@pytest.mark.parametrize("extra, message", [
    (["--quality-measure", "bleu"], "unknown quality measure 'bleu'; choose one of agreement"),
    (["--pareto", "plot.png"], "--pareto writes an HTML page: give a file name ending in .html"),
])
def test_bad_quality_options_are_one_clear_error(tmp_path, capsys, extra, message):
    from workbench.cli import main

    db = tmp_path / "runs.sqlite"
    rc = main(["--db", str(db), "bench", "--suite", "tasks", "--methods", "prompt_lookup", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not db.exists() or RunStore(db).list_benchmarks() == []
