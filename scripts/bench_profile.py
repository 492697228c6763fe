"""Where does decoding time go? Forward-pass costs, per-step overhead, op-level and Python profiles.

    PYTHONPATH=. .venv/bin/python scripts/bench_profile.py --threads 1 --tokens 64

Prints, for the embedded model (fp32 target) and its bf16 draft:
1. forward latency by number of input tokens T at a realistic context length
   (the cost of verifying a (γ+1)-token draft against one plain step);
2. per-step overhead of the engine: step time minus draft and verify time;
3. the same prompt through our loop and transformers' generate, interleaved;
4. torch.profiler op totals and cProfile's top functions for each method.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch
from transformers import DynamicCache

from workbench import kv_cache as kv
from workbench.bench.hf import hf_run
from workbench.bench.suites import load_suite
from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.models import load_model


def forward_costs(lm, context: int, sizes=(1, 2, 3, 5, 8, 11), reps: int = 7) -> dict[int, float]:
    model = lm.model
    out = {}
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        kv.forward(model, torch.randint(100, 1000, (1, context)), cache, logits_to_keep=1)
        for t in sizes:
            times = []
            for _ in range(reps):
                kv.crop(cache, context)
                ids = torch.randint(100, 1000, (1, t))
                t0 = time.perf_counter()
                kv.forward(model, ids, cache)
                times.append(time.perf_counter() - t0)
            out[t] = statistics.median(times)
    return out


def step_overhead(tgt, drf, method: str, prompt_ids, n: int, params=None):
    res = generate(tgt, method, prompt_ids, draft=drf, params=params, decode=DecodeConfig(max_new_tokens=n))
    dec = [s for s in res.trace.steps if s.kind == "decode"]
    other = [s.other_s for s in dec]
    return res, {"steps": len(dec), "tok/s": res.summary.tokens_per_s,
                 "draft ms/step": 1000 * statistics.mean(s.draft_s for s in dec),
                 "verify ms/step": 1000 * statistics.mean(s.verify_s for s in dec),
                 "other ms/step": 1000 * statistics.mean(other),
                 "outside steps ms": 1000 * (res.trace.wall_s - sum(s.total_s for s in res.trace.steps))}


def torch_ops(fn, top: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def python_profile(fn, top: int = 18) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: fwd,steps,hf,ops,py")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    tgt, drf = load_model("smollm2-135m"), load_model("smollm2-135m:bf16")
    qs = {q.category: q for q in load_suite("builtin")}
    summ = tgt.encode_prompt([{"role": "user", "content": qs["summarization"].turns[0]}])
    chat = tgt.encode_prompt([{"role": "user", "content": qs["mt_bench"].turns[0]}])
    print(f"threads {torch.get_num_threads()} | summarization prompt {len(summ)} tokens, mt_bench {len(chat)}")
    generate(tgt, "speculative", chat, draft=drf, decode=DecodeConfig(max_new_tokens=4))  # warm-up

    if "fwd" not in skip:
        for lm in (tgt, drf):
            costs = forward_costs(lm, len(summ) + 64)
            base = costs[1]
            print(f"forward {lm.spec:<18} " + "  ".join(f"T={t}: {1000 * c:6.1f} ms ({c / base:4.2f}x)"
                                                         for t, c in costs.items()))

    if "steps" not in skip:
        for method, params, prompt in (("autoregressive", None, chat), ("speculative", {"gamma": 4}, chat),
                                       ("prompt_lookup", None, summ)):
            _, info = step_overhead(tgt, drf, method, prompt, args.tokens, params)
            print(f"steps   {method:<15} " + "  ".join(f"{k} {v:.2f}" for k, v in info.items()))

    if "hf" not in skip:
        ours, theirs = [], []
        for _ in range(3):
            r = generate(tgt, "autoregressive", chat, decode=DecodeConfig(max_new_tokens=args.tokens))
            ours.append(r.summary.tokens_per_s)
            out, tr = hf_run("hf.generate", tgt, chat, args.tokens)
            theirs.append(len(out) / tr.wall_s)
        print(f"plain   ours {statistics.median(ours):.2f} tok/s vs hf.generate {statistics.median(theirs):.2f} "
              f"(interleaved x3: {[round(x, 2) for x in ours]} / {[round(x, 2) for x in theirs]})")

    n = min(args.tokens, 32)
    runs = {
        "autoregressive": lambda: generate(tgt, "autoregressive", chat, decode=DecodeConfig(max_new_tokens=n)),
        "speculative": lambda: generate(tgt, "speculative", chat, draft=drf, decode=DecodeConfig(max_new_tokens=n)),
        "prompt_lookup": lambda: generate(tgt, "prompt_lookup", summ, decode=DecodeConfig(max_new_tokens=n)),
        "hf.assisted": lambda: hf_run("hf.assisted", tgt, chat, n, draft=drf),
    }
    for name, fn in runs.items():
        if "ops" not in skip:
            print(f"\n===== torch ops: {name} ({n} tokens)\n" + torch_ops(fn))
        if "py" not in skip:
            print(f"\n===== cProfile: {name} ({n} tokens)\n" + python_profile(fn))


if __name__ == "__main__":
    main()
