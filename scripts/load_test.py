"""Load test of the app: N concurrent API clients against a real `workbench ui` on 127.0.0.1.

    .venv/bin/python scripts/load_test.py --clients 16 --runs 2            # starts its own app (tiny model)
    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:7860/ --db ~/.local/share/decoding-workbench/runs.sqlite

Bounded in count (clients x runs) and time (--timeout); loopback only. Prints runs
requested vs stored, p50/p95 queue wait (request sent -> run started on the device),
errors, cross-session leaks and overlapping decodes, read back from the run store.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.load_clients

from store import RunStore  # noqa: E402
from tests.load_clients import check_against_store, drive, local_app  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--runs", type=int, default=2, help="prompts per client")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--method", default="autoregressive")
    ap.add_argument("--target", default="tiny-random")
    ap.add_argument("--baseline", action="store_true", help="also run each prompt's baseline")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--url", default=None, help="an app already running on this machine (needs --db)")
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.runs <= 20):
        ap.error("--clients must be 1..64 and --runs 1..20 (the test is bounded)")

    def run(url: str, db: str) -> int:
        report = drive(url, clients=args.clients, runs_per_client=args.runs, target=args.target,
                       method=args.method, max_new_tokens=args.max_new_tokens, baseline=args.baseline,
                       timeout_s=args.timeout)
        with RunStore(db) as store:
            check_against_store(report, store)
        print(report.summary())
        for line in report.errors[:10] + report.cross_session[:10]:
            print("  ", line)
        return 0 if not report.errors and not report.cross_session and not report.overlaps else 1

    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            ap.error("the load test only sends traffic to this machine (127.0.0.1 / localhost)")
        if not args.db:
            ap.error("--url needs --db, the app's run store, to count what was stored")
        return run(args.url, args.db)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.sqlite"
        with local_app(db, Path(tmp) / "app.log", target=args.target) as url:
            return run(url, str(db))


if __name__ == "__main__":
    sys.exit(main())
