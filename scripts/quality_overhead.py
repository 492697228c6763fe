"""What the quality accounting adds to a run: its seconds after the decode against the run's own wall time.

Runs `workbench.api.run` on the embedded model (greedy, a prompt of the built-in suite) into a fresh
run store: one warm-up, then --repeats rounds of plain decoding (its own baseline: one teacher-forced
forward for the first; a later one with the same output reuses that NLL) and of --method (measured against
the stored plain run: no forward when its output is the same, one when it differs), then scores an output
that differs from the plain one (one forward). Prints,
per run, the decode's wall time, the accounting's seconds (workbench.quality.Quality.accounting_s), and
the whole `run()` call with and without the accounting (quality=False), medians over the repeats.

Usage:
    .venv/bin/python scripts/quality_overhead.py [--method prompt_lookup] [--max-new-tokens 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="prompt_lookup")
    ap.add_argument("--target", default=None, help="default: the embedded model")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from store import RunStore
    from workbench.api import run
    from workbench.bench.suites import load_suite

    prompt = load_suite("builtin")[1].turns[0]
    store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")
    common = dict(target=args.target, max_new_tokens=args.max_new_tokens, store=store)
    run(args.method, prompt, quality=False, **common)  # warm-up: loading, first-call costs
    rows: dict[str, list[tuple[float, float, float, float]]] = {"autoregressive": [], args.method: []}
    for _ in range(args.repeats):
        for method in rows:
            t0 = time.perf_counter()
            res = run(method, prompt, **common)
            with_q = time.perf_counter() - t0
            t0 = time.perf_counter()
            run(method, prompt, quality=False, **common)
            without_q = time.perf_counter() - t0
            rows[method].append((res.trace.wall_s, res.quality.accounting_s, with_q, without_q))
    # an output that differs from its baseline: one forward over prompt + output (the baseline's NLL is stored)
    from workbench.accounting import measure_quality
    from workbench.models import EMBEDDED_DEFAULT, load_model

    tgt = load_model(args.target or EMBEDDED_DEFAULT)
    prompt_ids, base = res.trace.prompt_ids, res.output_ids
    changed = base[:8] + [(base[8] + 1) % tgt.vocab_size] + base[9:]
    diverged = [measure_quality(tgt, prompt_ids, changed, baseline_ids=base, baseline_nll=1.0).accounting_s
                for _ in range(args.repeats)]
    for method, got in rows.items():
        wall, acc, with_q, without_q = (statistics.median(x) for x in zip(*got))
        print(f"{method:<16} {res.summary.new_tokens} tokens | decode {wall:.3f} s | accounting {acc:.3f} s "
              f"= {acc / wall:.1%} of the decode | run() {with_q:.3f} s with, {without_q:.3f} s without "
              f"= {with_q / without_q - 1:+.1%} (median of {args.repeats}); accounting of each run: "
              + ", ".join(f"{a:.3f}" for _, a, _, _ in got) + " s")
    # finding the stored baseline (store queries), which the accounting above does not include
    from workbench.record import prompt_text, stored_baseline

    env = {"device": str(tgt.device), "dtype": str(tgt.dtype).replace("torch.", "")}
    lookups = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stored_baseline(store, target=tgt.spec, prompt=prompt_text(prompt), prompt_ids=prompt_ids,
                        sampling={"temperature": 0.0}, max_new_tokens=args.max_new_tokens, env=env)
        lookups.append(time.perf_counter() - t0)
    print(f"{'baseline lookup':<16} {statistics.median(lookups):.4f} s (median of {args.repeats})")
    acc = statistics.median(diverged)
    wall = statistics.median(x[0] for x in rows["autoregressive"])
    print(f"{'differing output':<16} accounting {acc:.3f} s = {acc / wall:.1%} of the plain decode "
          f"(one forward over {len(prompt_ids)} + {len(changed)} tokens; median of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
