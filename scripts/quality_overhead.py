"""What the quality accounting adds to a run: its seconds after the decode against the run's own wall time.

Runs `workbench.api.run` on the embedded model (greedy, a prompt of the built-in suite) into a fresh
run store: one warm-up, then --repeats rounds of

- plain decoding (its own baseline; its NLLs come from its decode, and a later one with the same output
  reuses the stored NLL),
- --method (measured against the stored plain run: no forward when its output is the same),
- --method under the relaxed acceptance --relaxed (an output that diverges; its NLLs come from its decode),
- plain decoding under the KV-cache compression --kv (its logits are the compressed target's: one forward),

then scores the last --kv run's output again both ways (over the output alone after the prompt's keys/values
its prefill kept, and over prompt + output), then scores an output that differs from the plain one at token 8
with the baseline's per-token NLLs known (the forward's LM head reads only the tokens after the divergence)
and without them. Prints, per kind of run, the decode's wall time, the accounting's seconds
(workbench.quality.Quality.accounting_s), whether the output diverged from the plain one, and the whole `run()`
call with and without the accounting (quality=False), medians over the repeats.

Usage:
    .venv/bin/python scripts/quality_overhead.py [--method prompt_lookup] [--relaxed top_k:k=20]
        [--kv streaming:budget=0.5] [--max-new-tokens 64] [--repeats 5] [--question 1]
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
    ap.add_argument("--relaxed", default="top_k:k=20", help="the relaxed acceptance of the diverging run")
    ap.add_argument("--kv", default="streaming:budget=0.5", help="the KV-cache compression of the --kv run")
    ap.add_argument("--target", default=None, help="default: the embedded model")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--question", type=int, default=1,
                    help="which question of the built-in suite (its first turn): 1 has a 48-token prompt, 15 (rag) "
                         "a long one")
    args = ap.parse_args()

    from store import RunStore
    from workbench.api import run
    from workbench.bench.suites import load_suite
    from workbench.methods import get_method

    prompt = load_suite("builtin")[args.question].turns[0]
    store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")
    common = dict(target=args.target, max_new_tokens=args.max_new_tokens, store=store)
    # the method drafts every step (no cost-aware sizing, which needs a measured cost profile): its speed is not
    # what is measured here
    fixed = {"params": {"cost_aware": False}} if any(p.name == "cost_aware" for p in get_method(args.method).params) \
        else {}
    run(args.method, prompt, quality=False, **common, **fixed)  # warm-up: loading, first-call costs
    kinds = {"autoregressive": ("autoregressive", {}), args.method: (args.method, fixed),
             f"relaxed {args.relaxed}": (args.method, {"acceptance": args.relaxed, **fixed}),
             f"kv {args.kv}": ("autoregressive", {"kv": args.kv})}
    rows: dict[str, list[tuple[float, float, float, float, bool]]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind, (method, options) in kinds.items():
            t0 = time.perf_counter()
            res = run(method, prompt, **common, **options)
            with_q = time.perf_counter() - t0
            t0 = time.perf_counter()
            run(method, prompt, quality=False, **common, **options)
            without_q = time.perf_counter() - t0
            rows[kind].append((res.trace.wall_s, res.quality.accounting_s, with_q, without_q,
                               not res.quality.identical))
            if kind == "autoregressive":
                plain = res
            elif kind.startswith("kv "):
                squeezed = res
    for kind, got in rows.items():
        wall, acc, with_q, without_q = (statistics.median(x[i] for x in got) for i in range(4))
        print(f"{kind:<26} {plain.summary.new_tokens} tokens | decode {wall:.3f} s | accounting {acc:.4f} s "
              f"= {acc / wall:.1%} of the decode | run() {with_q:.3f} s with, {without_q:.3f} s without "
              f"= {with_q / without_q - 1:+.1%} | diverged {sum(x[4] for x in got)}/{len(got)} "
              f"(median of {args.repeats}); accounting of each run: " + ", ".join(f"{x[1]:.4f}" for x in got) + " s")

    from workbench.accounting import measure_quality
    from workbench.engine import generate
    from workbench.models import EMBEDDED_DEFAULT, load_model

    tgt = load_model(args.target or EMBEDDED_DEFAULT)
    prompt_ids, base, base_nll = plain.trace.prompt_ids, plain.output_ids, plain.trace.output_nll

    # the --kv run's output scored over the output alone (the prompt's keys/values from its prefill) and over
    # prompt + output, in turns
    from workbench.config import DecodeConfig, KVConfig

    kept = generate(tgt, "autoregressive", prompt_ids, decode=DecodeConfig(max_new_tokens=args.max_new_tokens),
                    kv=KVConfig.parse(args.kv), keep_prompt_kv=True)
    assert kept.output_ids == squeezed.output_ids
    wall = statistics.median(x[0] for x in rows[f"kv {args.kv}"])
    both: dict[str, list[float]] = {"over the output alone": [], "over prompt + output": []}
    for _ in range(args.repeats):
        for label, kv_rows in (("over the output alone", kept.prompt_kv), ("over prompt + output", None)):
            both[label].append(measure_quality(tgt, prompt_ids, kept.output_ids, baseline_ids=base, baseline_nll=1.0,
                                               baseline_token_nll=base_nll, prompt_kv=kv_rows).accounting_s)
    for label, secs in both.items():
        acc = statistics.median(secs)
        print(f"the --kv output scored {label}: accounting {acc:.3f} s = {acc / wall:.1%} of its decode "
              f"(prompt {len(prompt_ids)} tokens; median of {args.repeats})")

    # an output that differs from its baseline at token 8, scored by a forward (its decode gave no NLLs)
    changed = base[:8] + [(base[8] + 1) % tgt.vocab_size] + base[9:]
    wall = statistics.median(x[0] for x in rows["autoregressive"])
    for label, per in (("baseline's per-token NLLs known", base_nll), ("only the baseline's mean known", None)):
        secs = [measure_quality(tgt, prompt_ids, changed, baseline_ids=base, baseline_nll=1.0,
                                baseline_token_nll=per).accounting_s for _ in range(args.repeats)]
        acc = statistics.median(secs)
        print(f"differing output, {label}: accounting {acc:.3f} s = {acc / wall:.1%} of the plain decode "
              f"(one forward over {len(prompt_ids)} + {len(changed) - 1} tokens; median of {args.repeats})")

    # what the decode pays for its NLLs: one log-softmax row per committed token, on the clock
    import torch

    from workbench.sampling import token_nll_rows

    row = torch.randn(1, tgt.vocab_size)
    token_nll_rows(row, [0])
    per_row = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(100):
            token_nll_rows(row, [0])
        per_row.append((time.perf_counter() - t0) / 100)
    cost = statistics.median(per_row) * len(base)
    print(f"{'NLLs in the decode':<26} {statistics.median(per_row) * 1e6:.0f} us per token (V={tgt.vocab_size}), "
          f"{cost * 1e3:.1f} ms for {len(base)} tokens = {cost / wall:.2%} of the plain decode")

    # finding the stored baseline (store queries), which the accounting above does not include
    from workbench.record import prompt_text, stored_baseline

    env = {"device": str(tgt.device), "dtype": str(tgt.dtype).replace("torch.", "")}
    lookups = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stored_baseline(store, target=tgt.spec, prompt=prompt_text(prompt), prompt_ids=prompt_ids,
                        sampling={"temperature": 0.0}, max_new_tokens=args.max_new_tokens, env=env)
        lookups.append(time.perf_counter() - t0)
    print(f"{'baseline lookup':<26} {statistics.median(lookups):.4f} s (median of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
