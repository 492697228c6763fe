"""Tests of `workbench bench` (workbench/bench/): suites, arms, the CLI, store round trips, HF comparison.

All on tiny-random models with a few tokens; no test asserts a speed.
"""
from __future__ import annotations

import csv
import json
import math

import pytest

from workbench.bench import benchmark_report, benchmark_table
from workbench.bench.arms import TRACE_OFF_LABEL, build_arms, parse_params, parse_sweeps
from workbench.bench.suites import CATEGORIES, categories_of, filter_questions, load_suite, prompt_units
from workbench.cli import main
from workbench.config import ConfigError

TINY = ["--target", "tiny-random", "--draft", "tiny-random:bf16", "--bandwidth-mib", "4", "--warmup-tokens", "2"]


def _spec_bench_file(path):
    rows = [
        {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it sadder."]},
        {"question_id": 161, "category": "translation", "turns": ["Translate German to English: Guten Morgen"],
         "reference": ["Good morning"]},
        {"question_id": 162, "category": "translation", "turns": ["Translate French to English: Bonjour"]},
        {"question_id": 163, "category": "translation", "turns": ["Translate Spanish to English: Hola"]},
        {"question_id": 241, "category": "qa", "turns": ["Who wrote Hamlet?"]},
        {"question_id": 321, "category": "summarization", "turns": ["Summarize: the cat sat on the mat. " * 4]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _store(db):
    from store import RunStore

    return RunStore(db)


# ---------------------------------------------------------------- suites


def test_builtin_suite_has_every_spec_bench_category():
    questions = load_suite("builtin")
    assert categories_of(questions) == list(CATEGORIES)
    for cat in CATEGORIES:
        assert sum(q.category == cat for q in questions) == 3
    assert all(len(q.turns) == 2 for q in questions if q.category == "mt_bench")
    assert all(len(q.turns) == 1 for q in questions if q.category != "mt_bench")
    summaries = [q for q in questions if q.category == "summarization"]
    assert all(len(q.turns[0].split()) > 100 for q in summaries)  # a passage prompt lookup can copy from
    assert all("Context:" in q.turns[0] and "Question:" in q.turns[0] for q in questions if q.category == "rag")
    units = prompt_units(questions)
    assert len(units) == 18 + 3  # three two-turn questions


def test_spec_bench_file_loads_and_filters(tmp_path):
    questions = load_suite(str(_spec_bench_file(tmp_path / "question.jsonl")))
    assert len(questions) == 6
    assert questions[0].category == "mt_bench" and questions[0].subcategory == "writing"
    assert [q.key for q in filter_questions(questions, ["translation"])] == ["161", "162", "163"]
    assert [q.key for q in filter_questions(questions, ["translation"], limit=2)] == ["161", "162"]
    assert [q.key for q in filter_questions(questions, limit=1)] == ["81", "161", "241", "321"]
    assert [q.key for q in filter_questions(questions, ["writing", "qa"])] == ["81", "241"]
    with pytest.raises(ConfigError, match="no question in category"):
        filter_questions(questions, ["poetry"])


def test_bad_suite_files_fail_with_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "qa", "turns": ["ok"]}\n{"question_id": 2, "turns": ["x"]}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: missing field\(s\) category"):
        load_suite(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(ConfigError, match="bad.jsonl:1: not valid JSON"):
        load_suite(str(bad))
    with pytest.raises(ConfigError, match="no suite"):
        load_suite(str(tmp_path / "missing.jsonl"))


def test_multi_turn_messages_carry_the_earlier_answers():
    q = next(q for q in load_suite("builtin") if q.category == "mt_bench")
    first, second = prompt_units([q])
    with pytest.raises(RuntimeError):
        second.messages()
    first.history.append("ANSWER ONE")
    assert [m["role"] for m in second.messages()] == ["user", "assistant", "user"]
    assert second.messages()[1]["content"] == "ANSWER ONE"


# ---------------------------------------------------------------- arms


def test_arms_baseline_first_and_sweep_grid():
    arms = build_arms(["speculative", "prompt_lookup"], parse_params(["speculative.schedule=adaptive"]),
                      parse_sweeps(["speculative.gamma=2,4", "speculative.max_gamma=8,16"]))
    labels = [a.label for a in arms]
    assert labels[:2] == ["autoregressive", TRACE_OFF_LABEL]
    assert labels[2:6] == ["speculative[gamma=2,max_gamma=8]", "speculative[gamma=2,max_gamma=16]",
                           "speculative[gamma=4,max_gamma=8]", "speculative[gamma=4,max_gamma=16]"]
    assert labels[6] == "prompt_lookup"
    assert all(a.params["schedule"] == "adaptive" for a in arms[2:6])
    assert not build_arms(["prompt_lookup"], trace_overhead=False)[0].swept
    assert [a.label for a in build_arms(["prompt_lookup"], trace_overhead=False)] == ["autoregressive",
                                                                                     "prompt_lookup"]
    # the two-parameter limit is per method: three methods each sweep on their own in one benchmark
    three = build_arms([], sweeps=parse_sweeps(["speculative.gamma=2,4", "prompt_lookup.num_draft=4,8",
                                                "medusa.tree=chain4,binary3"]), trace_overhead=False)
    assert [a.label for a in three][1:] == ["speculative[gamma=2]", "speculative[gamma=4]",
                                           "prompt_lookup[num_draft=4]", "prompt_lookup[num_draft=8]",
                                           "medusa[tree=chain4]", "medusa[tree=binary3]"]


# ---------------------------------------------------------------- the command


def test_small_bench_through_the_cli(tmp_path, capsys):
    db, md, out_csv = tmp_path / "runs.sqlite", tmp_path / "r.md", tmp_path / "r.csv"
    rc = main(["--db", str(db), "bench", "--suite", "builtin", "--categories", "summarization,qa", "--limit", "1",
               "--methods", "speculative,prompt_lookup", "-n", "8", "-r", "1", "--json",
               "--markdown", str(md), "--csv", str(out_csv), *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report["config"]["n_prompts"] == 2
    assert "ETA" in captured.err  # one progress line per (method, prompt, repeat)
    assert sum("ETA" in line for line in captured.err.splitlines()) == 4 * 2

    store = _store(db)
    benches = store.list_benchmarks()
    assert len(benches) == 1 and benches[0]["status"] == "finished"
    bench_id = benches[0]["id"]
    assert report["benchmark_id"] == bench_id
    runs = store.list_runs(limit=None)
    assert len(runs) == 4 * 2  # baseline, untraced baseline, two methods x two prompts
    assert {r.benchmark_id for r in runs} == {bench_id}
    assert {r.source for r in runs} == {"bench"}
    env = benches[0]["env"]
    assert env["torch"] and env["copy_bandwidth_Bps"] > 0 and env["read_bandwidth_Bps"] > 0

    rows = {(r["arm"], r["category"]): r for r in report["rows"]}
    for arm in ("autoregressive", TRACE_OFF_LABEL, "speculative", "prompt_lookup"):
        assert rows[(arm, "all")]["lossless_match"] == 1.0
        assert rows[(arm, "all")]["tokens_per_s"] > 0
    assert rows[("autoregressive", "all")]["speedup"] == pytest.approx(1.0)
    assert rows[("autoregressive", "all")]["tau"] == pytest.approx(1.0)
    assert report["lossless_mismatches"] == []
    assert report["trace_overhead"]["overhead_pct"] is not None
    roof = report["roofline"]
    assert roof["roofline_tokens_per_s"] > 0
    # the roofline's bandwidth: the larger of the read and the copy, both shown, each the median of the ones
    # measured right before each plain run (two prompts: two measurements, in each plain run's env)
    plain = [r for r in runs if r.method == "autoregressive" and r.params.get("bench.arm") == "autoregressive"]
    assert len(plain) == 2 and all(r.env["read_bandwidth_Bps"] > 0 for r in plain)
    read = sorted(r.env["read_bandwidth_Bps"] for r in plain)
    copy = sorted(r.env["copy_bandwidth_Bps"] for r in plain)
    assert roof["bandwidth_measurements"] == 2
    assert roof["read_bandwidth_GBps"] == pytest.approx(sum(read) / 2 / 1e9)
    assert roof["bandwidth_GBps"] == pytest.approx(max(sum(read), sum(copy)) / 2 / 1e9)
    assert roof["roofline_tokens_per_s"] == pytest.approx(roof["bandwidth_GBps"] * 1e9 / env["target_weight_bytes"])
    assert "read bandwidth" in md.read_text() and "medians of 2 measurements" in md.read_text()
    assert roof["decode_tokens_per_s"] > 0  # the plain runs after their first token
    assert 0 < roof["decode_fraction"]
    assert "After the first token" in md.read_text()
    spec = rows[("speculative", "all")]
    assert spec["theoretical_speedup"] is not None and spec["gamma"] > 0 and spec["c"] is not None

    assert "Speedup against plain decoding" in md.read_text()
    with out_csv.open() as fh:
        lines = list(csv.DictReader(fh))
    assert {line["arm"] for line in lines} == {"autoregressive", TRACE_OFF_LABEL, "speculative", "prompt_lookup"}

    table = benchmark_table(store, bench_id)
    assert list(table.columns) == ["summarization", "qa", "all"]
    assert list(table.index) == ["autoregressive", TRACE_OFF_LABEL, "speculative", "prompt_lookup"]
    assert table.loc["autoregressive", "all"] == pytest.approx(1.0)

    rep = benchmark_report(store, bench_id)
    assert rep.overall("speculative")["lossless_match"] == 1.0
    assert len(rep.frame()) == 4 * 3  # four arms x (two categories + "all")

    # the report is a function of the store: --show reproduces it
    assert main(["--db", str(db), "bench", "--show", bench_id[:8], "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rows"] == report["rows"]


def test_sweep_gives_one_row_per_value_and_multi_turn_uses_baseline_answer(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    rc = main(["--db", str(db), "bench", "--suite", "builtin", "--categories", "mt_bench", "--limit", "1",
               "--methods", "speculative", "--sweep", "speculative.gamma=1,3", "--no-trace-overhead",
               "-n", "6", "-r", "1", *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    store = _store(db)
    bench_id = store.list_benchmarks()[0]["id"]
    table = benchmark_table(store, bench_id)
    assert list(table.index) == ["autoregressive", "speculative[gamma=1]", "speculative[gamma=3]"]
    assert "Speedup against plain decoding" in captured.out

    runs = store.list_runs(benchmark_id=bench_id, limit=None)
    by = {(r.params["bench.arm"], r.params["bench.prompt"]): r for r in runs}
    q = by[("autoregressive", "1.1")]
    for arm in ("autoregressive", "speculative[gamma=1]", "speculative[gamma=3]"):
        second = by[(arm, "1.2")]
        assert [m["role"] for m in second.prompt_json] == ["user", "assistant", "user"]
        assert second.prompt_json[1]["content"] == q.output_text
    assert by[("speculative[gamma=3]", "1.1")].typed_params["gamma"] == 3


@pytest.mark.slow  # transformers' generate beside ours
def test_compare_hf_outputs_match_ours(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    rc = main(["--db", str(db), "bench", "--suite", "builtin", "--categories", "summarization", "--limit", "1",
               "--methods", "speculative,prompt_lookup", "--compare-hf", "--no-trace-overhead",
               "-n", "12", "-r", "1", "--json", *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    hf = {h["hf"]: h for h in report["hf_comparison"]}
    assert set(hf) == {"hf.generate", "hf.generate+static+compile", "hf.assisted", "hf.prompt_lookup"}
    for h in hf.values():
        assert h["identical_to_ours"] == 1.0 and h["identical_to_baseline"] == 1.0
        assert h["ours_over_hf"] is not None
    assert hf["hf.assisted"]["params"]["num_assistant_tokens"] >= 1
    store = _store(db)
    for rec in store.list_runs(source="bench-hf", limit=None):  # traces rebuilt from forward hooks add up
        trace = store.load_trace(rec.id)
        assert trace.output_ids == rec.output_ids
        assert sum(len(s.committed) for s in trace.steps) == len(rec.output_ids)
        assert all(s.n_accepted <= s.n_draft for s in trace.steps)


@pytest.mark.compiled
def test_every_arm_runs_on_each_backend_against_its_own_baseline(tmp_path, capsys):
    """--backends eager,compiled: one process, interleaved, compiling before timing; both speedups; lossless.

    The only test here that compiles (about 30-40 s per model the first time in a process).
    """
    db = tmp_path / "runs.sqlite"
    rc = main(["--db", str(db), "bench", "--suite", "builtin", "--categories", "summarization", "--limit", "1",
               "--methods", "autoregressive,speculative,prompt_lookup", "--backends", "eager,compiled",
               "--compare-hf", "--no-trace-overhead", "-n", "12", "-r", "1", "--json", *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report["backends"] == report["config"]["backends"] == ["eager", "compiled"]
    assert report["cpu"] and report["cpu"] == report["env"]["cpu"]
    assert set(report["warmup_s"]) == {"eager", "compiled"}
    assert set(report["hf_warmup_s"]) == {"hf.generate", "hf.generate+static+compile", "hf.assisted",
                                          "hf.prompt_lookup"}
    err = captured.err
    assert err.index("compiling tiny-random for the compiled backend") < err.index("ETA")  # compiled before timing
    assert err.index("compiling hf.generate+static+compile") < err.index("ETA")
    assert sum("ETA" in line for line in err.splitlines()) == 3 * 2 + 4  # 3 arms x 2 backends + 4 HF arms

    rows = {(r["arm"], r["backend"]): r for r in report["rows"] if r["category"] == "all"}
    ours = [(a, b) for b in ("eager", "compiled") for a in ("autoregressive", "speculative", "prompt_lookup")]
    assert set(ours) <= set(rows)
    assert rows[("hf.generate", "eager")] and rows[("hf.generate+static+compile", "compiled")]
    for key, row in rows.items():
        assert row["lossless_match"] == 1.0, key
        assert row["speedup"] is not None and row["speedup_vs_eager"] is not None, key
        assert row["lossless_vs"] == key[1]
    assert rows[("autoregressive", "eager")]["speedup"] == pytest.approx(1.0)
    assert rows[("autoregressive", "eager")]["speedup_vs_eager"] == pytest.approx(1.0)
    assert rows[("autoregressive", "compiled")]["speedup"] == pytest.approx(1.0)
    assert rows[("autoregressive", "compiled")]["speedup_vs_eager"] == pytest.approx(
        rows[("autoregressive", "compiled")]["tokens_per_s"] / rows[("autoregressive", "eager")]["tokens_per_s"])
    assert report["lossless_mismatches"] == []
    hf = {h["hf"]: h for h in report["hf_comparison"]}
    static = hf["hf.generate+static+compile"]
    assert (static["ours"], static["ours_backend"], static["hf_backend"]) == ("autoregressive", "compiled", "compiled")
    assert static["identical_to_ours"] == 1.0 and static["warmup_s"] is not None
    assert static["params"]["cache_implementation"] == "static" and static["params"]["max_cache_len"] >= 12

    store = _store(db)
    bench_id = report["benchmark_id"]
    runs = store.list_runs(benchmark_id=bench_id, limit=None)
    assert len(runs) == 3 * 2 + 4
    for r in runs:  # each run says where it ran, with that backend's warm-up, as api.run records it
        assert r.env["backend"] == r.params["bench.backend"] and r.env["warmup_s"] is not None
    compiled_spec = next(r for r in runs if r.method == "speculative" and r.env["backend"] == "compiled")
    base = store.baseline_for(compiled_spec)
    assert base.benchmark_id == bench_id and base.env["backend"] == "compiled"

    table = benchmark_table(store, bench_id)
    assert "speculative@compiled" in table.index and "hf.generate+static+compile" in table.index
    assert table.loc["autoregressive@compiled", "all"] == pytest.approx(1.0)
    assert main(["--db", str(db), "bench", "--show", bench_id]) == 0
    text = capsys.readouterr().out
    assert "| method | backend |" in text and "vs eager" in text and "Speedup against eager plain decoding" in text
    assert f"CPU {report['cpu']}" in text and "warm-up before timing" in text


@pytest.mark.parametrize("extra, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--methods", "speculative", "--param", "gamma=4"], "--param expects METHOD.KEY=VALUE"),
    (["--methods", "speculative", "--param", "speculative.nope=4"], "has no parameter"),
    (["--methods", "speculative", "--param", "speculative.gamma=many"], "expects int"),
    (["--methods", "speculative", "--sweep", "speculative.gamma"], "--sweep expects METHOD.KEY=V1,V2"),
    (["--methods", "speculative", "--sweep", "speculative.gamma=1,,2"], "no empty value"),
    (["--methods", "speculative", "--sweep", "speculative.gamma=1,2", "--sweep", "speculative.schedule=fixed",
      "--sweep", "speculative.max_gamma=8"], "at most 2 --sweep options per method"),
    (["--methods", "prompt_lookup", "--repeats", "0"], "--repeats must be a positive"),
    (["--methods", "prompt_lookup", "--categories", "poetry"], "no question in category"),
    (["--methods", "speculative", "--target", "tiny-random"], "needs a draft model"),
    (["--methods", "prompt_lookup", "--max-new-tokens", "x"], "invalid int value"),
    (["--methods", "prompt_lookup", "--backends", "eager,nope"], "unknown backend 'nope'"),
    (["--methods", "prompt_lookup", "--backends", ","], "--backends is empty"),
    (["--methods", "prompt_lookup", "--backend", "nope"], "invalid choice: 'nope'"),
    (["--methods", "prompt_lookup", "--backends", "eager,compiled", "--cluster", "local"], "runs in process only"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    db = tmp_path / "runs.sqlite"
    rc = main(["--db", str(db), "bench", "--suite", "builtin", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert _store(db).list_benchmarks() == []


def test_a_mismatch_reports_the_probability_margin_at_the_first_difference():
    """Identity holds up to floating-point ties: the report says how close the tie was."""
    from workbench.bench.report import _lossless, _Run
    from workbench.trace import Step

    def run(arm, ids, ps):
        steps = [Step(index=i, kind="prefill" if i == 0 else "decode", bonus_token=t, bonus_p=p, committed=[t])
                 for i, (t, p) in enumerate(zip(ids, ps))]
        return _Run(id=arm, arm=arm, method=arm, category="qa", prompt="q1", repeat=0, new_tokens=len(ids),
                    wall_s=1.0, forwards=len(ids), draft_s=0.0, verify_s=1.0, drafted=0, peak_mem_mb=0.0,
                    output_ids=list(ids), steps=steps)

    base = run("autoregressive", [5, 6, 7, 8], [0.9, 0.8, 0.41, 0.7])
    ours = run("speculative", [5, 6, 9, 8], [0.9, 0.8, 0.40, 0.7])
    frac, (m,) = _lossless([ours], {"q1": base})
    assert frac == 0.0 and m["first_diff"] == 2
    assert m["p_baseline"] == 0.41 and m["p_ours"] == 0.40 and abs(m["p_margin"] - 0.01) < 1e-12


def test_the_decode_rate_leaves_out_the_first_step():
    from types import SimpleNamespace as S

    from workbench import metrics as M

    # the prompt's forward ends at 0.5 s with one token; two steps of 0.1 s add one and three tokens
    steps = [S(committed=[1], t_end=0.5), S(committed=[2], t_end=0.6), S(committed=[3, 4, 5], t_end=0.7)]
    assert M.decode_tokens_per_s(steps, 0.7) == pytest.approx(4 / 0.2)
    assert 5 / 0.7 < M.decode_tokens_per_s(steps, 0.7)  # tokens/s counts the prompt's forward in
    assert math.isnan(M.decode_tokens_per_s(steps[:1], 0.5))  # one step: nothing after the first


def test_the_roofline_takes_the_larger_bandwidth_and_reads_older_benchmarks():
    from workbench.bench.roofline import roofline

    # a copy that measured less than a read stream: the read bounds a step, which only reads its weights
    r = roofline(1000, copy=30e9, measured_tokens_per_s=20e6, read=40e9)
    assert r["bandwidth_GBps"] == 40 and r["roofline_tokens_per_s"] == pytest.approx(40e6)
    assert r["achieved_fraction"] == pytest.approx(0.5)
    assert roofline(1000, copy=30e9, read=20e9)["bandwidth_GBps"] == 30  # a reader slower than the memory
    old = roofline(1000, copy=30e9)  # stored before read bandwidths were measured
    assert old["read_bandwidth_GBps"] is None and old["roofline_tokens_per_s"] == pytest.approx(30e6)


def test_the_read_bandwidth_takes_the_kernels_stream_where_they_are_loaded(monkeypatch):
    """The read bandwidth is the fastest of a sum and, where the workbench kernels are loaded, their one-row
    linear over the same bytes as a packed weight (without and with prefetch): a reader slower than the weights'
    stream would understate the roofline."""
    import torch

    from workbench.bench import roofline
    from workbench.kernels import build
    from workbench.kernels.linear import arena

    if not build.load_extension():
        pytest.fail(f"the kernels should build on the test machine: {build.unavailable_reason()}")
    src = arena(4096 * 16 * 4 * 3).view(torch.float32).fill_(1.0)  # three panels of K = 4096
    readers = roofline._kernel_readers(src)
    assert len(readers) == 2
    for read in readers:  # each reads every byte: a one-row linear of ones over a weight of ones
        assert torch.equal(read(), torch.full((1, 48), 4096.0))
    assert roofline._kernel_readers(src[:-1]) == []  # not whole panels: the sum alone
    calls = []
    monkeypatch.setattr(roofline, "_kernel_readers", lambda s: [lambda: calls.append(s.numel())])
    assert roofline.read_bandwidth(mib=1, repeats=2) > 0 and calls == [2**18] * 3  # a warm-up and two timed
    monkeypatch.undo()
    monkeypatch.setattr(build, "_STATE", {"ok": False, "reason": "no compiler"})
    assert roofline._kernel_readers(src) == []  # not loaded here: the sum alone
