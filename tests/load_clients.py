"""Drive a running app with concurrent API clients: tests/test_concurrency.py and scripts/load_test.py share this.

Each client is a separate `gradio_client.Client` (its own Gradio session, so its
own `gr.State`) that runs prompts through the app's `/run` endpoint and, when
asked, `/baseline`, which repeats *that session's* latest prompt with plain
decoding. Afterwards `check_against_store` reads the run store and says whether
every run requested was stored and finished, whether any session saw another
session's run (a run id it got back whose stored prompt is not its own, or a
baseline of another session's prompt), and whether two decodes ever overlapped
on the device (the stored [created_at, finished_at] intervals of the runs).

Traffic only goes to the URL given, which the callers keep on loopback.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

RUN_ID = re.compile(r"Run id: `([0-9a-f]{32})`")
BASELINE_ID = re.compile(r"Baseline run `([0-9a-f]{8})`")


@dataclass
class ClientRun:
    client: int
    prompt: str
    submitted: float  # time.time() when the request was sent
    run_id: str | None = None
    baseline_prefix: str | None = None
    status: str = ""
    error: str | None = None


@dataclass
class LoadReport:
    requested: int
    runs: list[ClientRun] = field(default_factory=list)
    stored: int = 0
    finished: int = 0
    queue_wait_s: list[float] = field(default_factory=list)
    cross_session: list[str] = field(default_factory=list)
    overlaps: int = 0
    wall_s: float = 0.0

    @property
    def errors(self) -> list[str]:
        return [f"client {r.client}: {r.error}" for r in self.runs if r.error]

    def percentile(self, q: float) -> float:
        xs = sorted(self.queue_wait_s)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    def summary(self) -> str:
        clients = len({r.client for r in self.runs})
        return (f"{clients} clients, {len(self.runs)} prompts: runs requested {self.requested}, stored {self.stored}, "
                f"finished "
                f"{self.finished}; queue wait p50 {self.percentile(0.5):.2f} s, p95 {self.percentile(0.95):.2f} s, "
                f"max {max(self.queue_wait_s, default=float('nan')):.2f} s; errors {len(self.errors)}; "
                f"cross-session leaks {len(self.cross_session)}; overlapping decodes {self.overlaps}; "
                f"wall {self.wall_s:.1f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_app(db: str | Path, log: str | Path, target: str = "tiny-random", port: int | None = None,
              start_timeout_s: float = 120.0) -> Iterator[str]:
    """`workbench ui` in a subprocess on 127.0.0.1 over the store `db`; yields its URL, stops it after."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "--db", str(db), "ui", "--port", str(port),
                                 "--target", target], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited with {proc.returncode}: {Path(log).read_text()[-2000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the app did not answer within {start_timeout_s:.0f} s") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _required_blanks(client: Any) -> dict[str, Any]:
    """Values for the /run parameters that have no default (the hidden method-parameter slots)."""
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]
    return {p["parameter_name"]: (None if p["component"] == "Dropdown" else "")
            for p in info["parameters"] if not p.get("parameter_has_default")}


def drive(url: str, *, clients: int, runs_per_client: int, target: str = "tiny-random",
          method: str = "autoregressive", draft: str = "none", max_new_tokens: int = 24,
          baseline: bool = False, timeout_s: float = 300.0) -> LoadReport:
    """Start `clients` threads, each running `runs_per_client` distinct prompts through /run."""
    from gradio_client import Client

    report = LoadReport(requested=clients * runs_per_client * (2 if baseline else 1))
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s

    def one_client(k: int) -> None:
        try:
            client = Client(url, verbose=False)
            blanks = _required_blanks(client)
        except Exception as exc:  # noqa: BLE001 - counted as errors in the report
            with lock:
                report.runs.append(ClientRun(k, "", time.time(), error=f"connect: {exc}"))
            return
        for j in range(runs_per_client):
            if time.monotonic() > deadline:
                break
            rec = ClientRun(k, f"client {k} prompt {j}: count to ten.", time.time())
            try:
                out = client.predict(target=target, draft=draft, method=method, prompt=rec.prompt, chat=False,
                                     max_new_tokens=max_new_tokens, api_name="/run", **blanks)
                rec.status = str(out[0])
                m = RUN_ID.search(str(out[3]))
                rec.run_id = m.group(1) if m else None
                if rec.run_id is None:
                    rec.error = f"no run id in the page: {rec.status}"
                elif baseline:
                    b = client.predict(api_name="/baseline")
                    mb = BASELINE_ID.search(str(b[0]))
                    rec.baseline_prefix = mb.group(1) if mb else None
                    if rec.baseline_prefix is None:
                        rec.error = f"baseline: {b[0]}"
            except Exception as exc:  # noqa: BLE001
                rec.error = f"{type(exc).__name__}: {exc}"
            with lock:
                report.runs.append(rec)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one_client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    report.wall_s = time.monotonic() - t0
    return report


def check_against_store(report: LoadReport, store: Any) -> LoadReport:
    """Fill in stored/finished counts, queue waits, cross-session leaks and overlaps from the run store."""
    recs = {r.id: r for r in store.list_runs(limit=None)}
    report.stored = len(recs)
    report.finished = sum(r.status == "finished" for r in recs.values())
    for run in report.runs:
        if run.run_id is None:
            continue
        rec = recs.get(run.run_id)
        if rec is None:
            report.cross_session.append(f"client {run.client}: run {run.run_id} not in the store")
            continue
        if rec.prompt != run.prompt:
            report.cross_session.append(f"client {run.client} got run {run.run_id[:8]} of prompt {rec.prompt!r}")
        report.queue_wait_s.append(max(0.0, rec.created_at.timestamp() - run.submitted))
        if run.baseline_prefix:
            base = [r for rid, r in recs.items() if rid.startswith(run.baseline_prefix)]
            if len(base) != 1 or base[0].prompt != run.prompt or base[0].method != "autoregressive":
                report.cross_session.append(f"client {run.client}'s baseline {run.baseline_prefix} is not of its "
                                            "own prompt")
    spans = sorted((r.created_at, r.finished_at or datetime.now(timezone.utc)) for r in recs.values())
    report.overlaps = sum(1 for (_, end), (start, _) in zip(spans, spans[1:]) if start < end)
    return report
