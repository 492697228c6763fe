"""Tests of workbench.cluster: runs and benchmarks on Ray workers, on one local Ray instance (loopback, CPU).

One module-scoped `ray.init(num_cpus=2)`: room for two one-CPU workers. Tiny
random models only; nothing asserts a speed.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
from workbench.cluster.address import keep_local_on_loopback  # noqa: E402

keep_local_on_loopback()  # before Ray is imported: every port on 127.0.0.1
ray = pytest.importorskip("ray")

from workbench import api  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.cluster import ClusterError, WorkerDiedError, address, cluster_address  # noqa: E402
from workbench.cluster.pool import get_pool  # noqa: E402

TARGET, DRAFT = "tiny-random", "tiny-random:bf16"
LONG_PROMPT = "Once upon a time"  # tiny-random decodes it for hundreds of tokens before any EOS
TINY = ["--target", TARGET, "--draft", DRAFT, "--bandwidth-mib", "4", "--warmup-tokens", "2"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"  # loopback only: no traffic leaves the machine
    try:
        yield "local"
    finally:
        get_pool("local").shutdown()
        ray.shutdown()
        address._connected = None


def _store(tmp_path):
    from store import RunStore

    return RunStore(tmp_path / "runs.sqlite")


def _steps(store, run_id):
    return [(s.kind, s.tokens, s.accepted, s.committed) for s in store.load_trace(run_id).steps]


def _suite(tmp_path):
    rows = [
        {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it sadder."]},
        {"question_id": 161, "category": "translation", "turns": ["Translate German to English: Guten Morgen"]},
        {"question_id": 241, "category": "qa", "turns": ["Who wrote Hamlet?"]},
    ]
    path = tmp_path / "question.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- addresses (no Ray needed)


def test_addresses_are_checked_and_default_to_the_environment(monkeypatch):
    monkeypatch.delenv("WORKBENCH_CLUSTER", raising=False)
    assert cluster_address(None) is None
    assert cluster_address(" LOCAL ") == "local" and cluster_address("auto") == "auto"
    assert cluster_address("ray://10.0.0.5:10001") == "ray://10.0.0.5:10001"
    assert cluster_address("none") is None and cluster_address("") is None
    monkeypatch.setenv("WORKBENCH_CLUSTER", "ray://head:10001")
    assert cluster_address(None) == "ray://head:10001"
    for bad in ("10.0.0.5:6379", "ray://host", "ray://host:99999", "http://x:1"):
        with pytest.raises(ClusterError):
            cluster_address(bad)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError, match=r"pip install decoding-workbench\[cluster\]"):
        address.require_ray()


def test_unreachable_or_bad_address_fails_fast_with_one_line(capsys):
    t0 = time.monotonic()
    rc = main(["run", "--cluster", "ray://127.0.0.1:1", "--target", TARGET, "-p", "hi", "--no-log"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "cannot reach the Ray cluster at ray://127.0.0.1:1" in err
    assert time.monotonic() - t0 < 60  # a bound on hanging, not a speed
    assert main(["run", "--cluster", "bogus", "-p", "hi", "--no-log"]) == 2
    assert "local, auto or ray://HOST:PORT" in capsys.readouterr().err
    assert main(["bench", "--suite", "builtin", "--methods", "prompt_lookup", "--workers", "2"]) == 2
    assert "--workers needs --cluster" in capsys.readouterr().err


# ---------------------------------------------------------------- runs


def test_a_run_through_a_worker_equals_the_in_process_run(cluster, tmp_path, monkeypatch, recordings):
    store = _store(tmp_path)
    local = {}
    for method, draft in (("speculative", DRAFT), ("autoregressive", None)):
        here = local[method] = api.run(method, "Tell me about the sea.", target=TARGET, draft=draft,
                                       max_new_tokens=24, store=store)
        there = api.run(method, "Tell me about the sea.", target=TARGET, draft=draft, max_new_tokens=24,
                        store=store, cluster=cluster)
        assert there.output_ids == here.output_ids and there.output_text == here.output_text
        assert _steps(store, there.run_id) == _steps(store, here.run_id)
        rec = store.get_run(there.run_id)
        assert rec.status == "finished" and rec.source == "api"
        assert rec.env["cluster"] == "local" and rec.env["worker"]["pid"] != os.getpid()
        assert rec.env["worker"]["node_id"] and "torch" in rec.env and rec.env["device"] == "cpu"
        assert there.worker["pid"] == rec.env["worker"]["pid"]
        assert store.get_run(here.run_id).env.get("worker") is None
        # recorded by the same lifecycle as the run in this process (workbench.record)
        assert [(r["run_id"], r["ended"]) for r in recordings[-2:]] == [(here.run_id, "finished"),
                                                                          (there.run_id, "finished")]
    # Ray Client cannot stream generators; the long-poll path gives the same run
    monkeypatch.setattr("workbench.cluster.remote_run.is_client", lambda: True)
    polled = api.run("speculative", "Tell me about the sea.", target=TARGET, draft=DRAFT, max_new_tokens=24,
                     store=store, cluster=cluster)
    assert polled.output_ids == local["speculative"].output_ids
    assert _steps(store, polled.run_id) == _steps(store, local["speculative"].run_id)


def test_steps_stream_to_on_step_one_by_one_before_the_run_ends(cluster, tmp_path):
    store = _store(tmp_path)
    seen = []

    def on_step(step, trace):
        if step.index == 0:  # the worker is still decoding when the first step arrives here
            busy = [w for w in get_pool(cluster).workers() if w.busy]
            seen.append(("worker decoding", ray.get(busy[0].handle.status.remote())["busy"]))
        run = store.list_runs(limit=1)[0]
        seen.append((step.index, len(trace.steps), run.status, trace.stop_reason))

    res = api.run("autoregressive", LONG_PROMPT, target=TARGET, max_new_tokens=200, store=store, cluster=cluster,
                  on_step=on_step)
    assert seen[0] == ("worker decoding", True)
    steps = seen[1:]
    assert [s[0] for s in steps] == list(range(200)) and all(n == i + 1 for i, n, _, _ in steps)
    assert all(status == "running" and reason == "" for _, _, status, reason in steps)
    assert store.get_run(res.run_id).status == "finished"


def test_a_worker_that_dies_mid_run_leaves_the_run_interrupted(cluster, tmp_path, recordings):
    store = _store(tmp_path)

    def kill_at_step_2(step, _trace):
        if step.index == 2:
            pid = store.list_runs(status="running", limit=1)[0].env["worker"]["pid"]
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    with pytest.raises(WorkerDiedError, match="died mid-run"):
        api.run("autoregressive", LONG_PROMPT, target=TARGET, max_new_tokens=300, store=store, cluster=cluster,
                on_step=kill_at_step_2)
    rec = store.list_runs(limit=1)[0]
    assert rec.status == "interrupted" and "died" in rec.error and rec.stop_reason == "interrupted"
    assert recordings == [{"source": "api", "method": "autoregressive", "run_id": rec.id, "ended": "interrupted"}]
    assert 3 <= len(store.load_trace(rec.id).steps) < 300
    assert all(w.info["pid"] != rec.env["worker"]["pid"] for w in get_pool(cluster).workers())
    again = api.run("autoregressive", "Hello", target=TARGET, max_new_tokens=4, store=store, cluster=cluster)
    assert store.get_run(again.run_id).status == "finished"  # a new worker took over


def test_idle_workers_are_evicted_and_replaced(cluster, tmp_path):
    store = _store(tmp_path)
    first = api.run("autoregressive", "Hello", target=TARGET, max_new_tokens=4, store=store, cluster=cluster)
    pool = get_pool(cluster)
    assert pool.evict_idle(0.0) >= 1 and pool.workers() == []
    second = api.run("autoregressive", "Hello", target=TARGET, max_new_tokens=4, store=store, cluster=cluster)
    assert second.output_ids == first.output_ids and second.worker["pid"] != first.worker["pid"]


# ---------------------------------------------------------------- benchmarks


def _rows(report):
    return {(r["arm"], r["category"]): (r["method"], r["lossless_match"]) for r in report["rows"]}


def test_a_cluster_benchmark_gives_the_in_process_rows(cluster, tmp_path, capsys, recordings):
    suite = _suite(tmp_path)
    common = ["bench", "--suite", suite, "--methods", "speculative,prompt_lookup", "-n", "8", "-r", "1", "--json",
              *TINY]
    assert main(["--db", str(tmp_path / "here.sqlite"), *common]) == 0
    here = json.loads(capsys.readouterr().out)
    assert main(["--db", str(tmp_path / "there.sqlite"), *common, "--cluster", cluster, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    there = json.loads(captured.out)
    assert _rows(there) == _rows(here)
    assert set(there["categories"]) == set(here["categories"]) == {"mt_bench", "translation", "qa"}
    assert all(lossless == 1.0 for _, lossless in _rows(there).values())
    assert there["lossless_mismatches"] == [] and there["config"]["cluster"]["address"] == "local"
    assert sum("ETA" in line for line in captured.err.splitlines()) == 4 * 4  # 4 arms x 4 prompts

    from store import RunStore

    store = RunStore(tmp_path / "there.sqlite")
    runs = store.list_runs(limit=None)
    assert len(runs) == 4 * 4 and {r.status for r in runs} == {"finished"}
    there_ids = {r["run_id"] for r in recordings if r["source"] == "bench" and r["ended"] == "finished"}
    assert {r.id for r in runs} <= there_ids  # each stored through the same lifecycle as in process
    assert {r.env["worker"]["pid"] for r in runs} <= {w["pid"] for w in there["env"]["workers"]}
    by = {(r.params["bench.arm"], r.params["bench.prompt"]): r for r in runs}
    second = by[("speculative", "81.2")]  # turn 2 carries the baseline's own answer to turn 1
    assert second.prompt_json[1]["content"] == by[("autoregressive", "81.1")].output_text


def test_a_worker_killed_mid_benchmark_loses_and_doubles_nothing(cluster, tmp_path):
    from store import RunStore
    from workbench.api import run_benchmark
    from workbench.bench.runner import BenchConfig

    def crash_in_next_block(_worker):
        """Run in the worker's process (a closure, so Ray sends it by value): its next benchmark block ends the
        process after the block's first run, as a crash would (the warm-up decodes without runner._decode)."""
        import os

        from workbench.bench import runner

        decode = runner._decode

        def crashing(*args, **kwargs):
            decode(*args, **kwargs)
            os._exit(1)

        runner._decode = crashing

    pool = get_pool(cluster)
    workers = pool.acquire_many(2, TARGET, None)
    assert len(workers) == 2
    ray.get(workers[0].handle.__ray_call__.remote(crash_in_next_block))  # Ray's hook to run code in an actor
    for w in workers:
        pool.release(w, models=(TARGET, None))
    store = RunStore(tmp_path / "runs.sqlite")
    said = []
    cfg = BenchConfig(suite=_suite(tmp_path), methods=["speculative"], target=TARGET, draft=DRAFT, max_new_tokens=8,
                      repeats=2, trace_overhead=False, warmup_tokens=2, bandwidth_mib=4, cluster=cluster, workers=2)
    bench_id = run_benchmark(cfg, store, progress=said.append)
    assert any("died during" in m for m in said), said
    bench = store.get_benchmark(bench_id)
    assert bench["status"] == "finished"
    runs = store.list_runs(benchmark_id=bench_id, limit=None)
    counts = Counter((r.params["bench.arm"], r.params["bench.prompt"], r.params["bench.repeat"]) for r in runs)
    assert len(counts) == 2 * 4 * 2 and set(counts.values()) == {1}  # 2 arms x 4 prompts x 2 repeats, once each
    assert {r.status for r in runs} == {"finished"}
