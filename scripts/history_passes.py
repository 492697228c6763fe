"""Repeated tasks: how much `sam` with corpus=history gains when the same prompts come back.

Decodes the first turn of every question of a suite with `sam` (corpus=history) into
a fresh run store, pass after pass. Pass 1 finds nothing of the suite in the store
(only what earlier questions of the same pass wrote); from pass 2 on, every prompt's
own earlier output is there to copy (SuffixDecoding's setting: agents and repeated
tasks re-generate what they generated before). Prints tau and tokens/s per category
and pass. For the speedup against plain decoding on the same store, run afterwards:

    workbench --db STORE bench --suite SUITE --methods sam --param sam.corpus=history

Usage:
    .venv/bin/python scripts/history_passes.py --suite builtin --limit 1 --passes 2 [--db PATH] [--backend eager]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="builtin")
    ap.add_argument("--limit", type=int, default=1, help="questions per category")
    ap.add_argument("--categories", default="", help="comma-separated categories to keep")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--target", default=None)
    ap.add_argument("--backend", default="eager", choices=("eager", "compiled"))
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--db", default=None, help="run store to fill (default: a new temporary file)")
    args = ap.parse_args()

    db = args.db or str(Path(tempfile.mkdtemp(prefix="history-")) / "runs.sqlite")
    os.environ["WORKBENCH_DB"] = db  # sam's corpus=history reads the default store: this one

    from store import RunStore
    from workbench import api
    from workbench.bench.suites import filter_questions, load_suite

    cats = [c for c in args.categories.split(",") if c] or None
    questions = filter_questions(load_suite(args.suite), cats, args.limit)
    store = RunStore(db)
    print(f"store {db}; {len(questions)} prompts (first turns), {args.passes} passes, backend {args.backend}",
          file=sys.stderr)
    rows = []
    for p in range(1, args.passes + 1):
        for q in questions:
            res = api.run("sam", [{"role": "user", "content": q.turns[0]}], target=args.target,
                          params={"corpus": "history"}, max_new_tokens=args.max_new_tokens, store=store,
                          source="script", backend=args.backend)
            s = res.summary
            rows.append((p, q.category, s.mean_accepted_tokens, s.tokens_per_s))
            print(f"pass {p} {q.category:15s} tau {s.mean_accepted_tokens:5.2f} {s.tokens_per_s:6.1f} tok/s",
                  file=sys.stderr)
    store.close()
    table: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for p, cat, tau, tps in rows:
        table[(p, cat)].append((tau, tps))
        table[(p, "all")].append((tau, tps))
    cats_seen = list(dict.fromkeys(c for _, c, _, _ in rows)) + ["all"]
    print("| pass | " + " | ".join(cats_seen) + " |")
    print("|---" * (len(cats_seen) + 1) + "|")
    for p in range(1, args.passes + 1):
        cells = [f"tau {statistics.median(t for t, _ in table[(p, c)]):.2f}" for c in cats_seen]
        print(f"| {p} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
