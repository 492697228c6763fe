"""Where a plain-decoding step's time goes on the compiled backend: the step taken apart, timed in one process.

    PYTHONPATH=. python scripts/step_profile.py --context 128 --tokens 64 --repeats 3 \
        [--cache-lens 512,1024] [--invariant] [--sdpa] [--ops] [--kernel-profile]

For the embedded model (or --target) after a prompt of `--context` tokens, the median over the decoded
tokens of each piece of a plain-decoding step, every piece timed on its own in this process:
- step: a whole step of `workbench.engine.generate` (autoregressive, greedy, traced), its verify_s
  (the target forward and the verification) and the rest (drafter, bookkeeping);
- session.forward: the backend call the engine makes (cache positions, mask, the compiled graph);
- graph: the compiled one-token graph alone, on inputs made beforehand;
- mask, cache positions: what `CompiledForward.call` builds before calling the graph;
- linears: every linear of the model on one row, back to back (the kernel's share of the graph);
- argmax + item, softmax for the trace: the greedy choice and the probability the trace records;
and, with --ops, torch.profiler's operator totals over each timed graph (attention, norms, the kernel calls).
--cache-lens 512,1024 times the graph alone over static caches of those sizes too, --invariant the invariant
mode's graph and --sdpa the graph with transformers' SDPA attention (ATen's flash attention) in place of the
row-attention kernel, in turns within each round. --kernel-profile compiles with inductor's per-kernel profile,
so that --ops names each generated kernel.
Only the graphs plain decoding calls are compiled (the one-token graph per cache size and mode), on their
first call, before anything is timed.
Figures go to docs/results/ with the machine they ran on.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.backend.compiled import CompiledForward, StaticSession, _acquire, cache_len_bucket
from workbench.config import DecodeConfig
from workbench.engine import DRAFT_ROOM, generate
from workbench.kernels import attention, plan_for, set_mode
from workbench.kernels.linear import StreamLinear, linear
from workbench.models import load_model


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def graph_ab(lm, prompt: list[int], lens: list[int], reps: int, invariant: bool, sdpa: bool,
             ops: int = 0) -> dict[str, float]:
    """The one-token graph alone after the prompt, over each cache size (and the invariant mode's graph, and the
    fast mode's with transformers' SDPA attention, over the first size), in turns: {label: median ms}. With
    `ops`, torch.profiler's operator totals over `ops` calls of each arm's graph are printed."""
    n = len(prompt)
    tok, pos = torch.tensor([[prompt[-1]]]), torch.tensor([[n]])
    arms = {}

    def arm(label: str, L: int, sdpa: bool = False) -> None:
        cf = CompiledForward(lm, L)  # activates the mode's plan, and with it its attention
        if sdpa:
            attention.use(lm.model, None)  # the attention the model had before the kernels
        session = StaticSession(cf)
        session.forward(torch.tensor([prompt]), keep=1)
        mask = cf.mask(n, 1, None, pos)
        for layer in cf.cache.layers:
            layer.cumulative_length.fill_(n)
        cf.one(tok.clone(), pos.clone(), mask)  # compiles, with the plan and attention set now
        arms[label] = (cf, mask)
        plan_for(lm)  # the mode's attention back

    for L in lens:
        arm(f"  graph alone, cache of {L}", L)
    if sdpa:
        arm(f"  graph alone, cache of {lens[0]}, SDPA attention", lens[0], sdpa=True)
    if invariant:
        set_mode("invariant")
        plan_for(lm)
        arm(f"  graph alone, cache of {lens[0]}, invariant kernels", lens[0])
        set_mode("fast")
        plan_for(lm)  # the fast plan and its attention back
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(5):
        for label, (cf, mask) in arms.items():
            times[label].append(median_ms(lambda: cf.one(tok.clone(), pos.clone(), mask), reps // 5))
    for label, (cf, mask) in arms.items() if ops else ():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(ops):
                cf.one(tok.clone(), pos.clone(), mask)
        print(f"{label.strip()}: operator totals over {ops} graphs")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=90))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens before decoding")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of generate; pieces are timed 5x --tokens times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", action="store_true", help="also torch.profiler's operator totals over the graph")
    ap.add_argument("--invariant", action="store_true", help="also time the invariant mode's one-token graph")
    ap.add_argument("--sdpa", action="store_true",
                    help="also time the one-token graph with transformers' SDPA attention instead of the kernel's")
    ap.add_argument("--kernel-profile", action="store_true",
                    help="compile the graphs with inductor's per-kernel profile, so that --ops names each kernel")
    ap.add_argument("--cache-lens", default="", help="comma-separated static cache sizes to time the graph over")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernel_profile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    set_mode("fast")
    lm = load_model(args.target)
    plan = plan_for(lm)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 1000, (args.context,), generator=g).tolist()
    max_len = args.context + args.tokens + DRAFT_ROOM
    lens = sorted({cache_len_bucket(max_len, None), *(int(x) for x in args.cache_lens.split(",") if x)})
    # marked warm: a graph compiles on its first call, so only the one-token graph is compiled
    run_cf = _acquire(lm, cache_len_bucket(max_len, None))
    run_cf.warmup_s, run_cf.busy = 0.0, False
    reps = 5 * args.tokens
    rows: dict[str, float] = {}

    with torch.inference_mode():
        # whole steps through the engine (the first run compiles or loads the graphs)
        generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=8), backend="compiled")
        steps, verify, per_token = [], [], []
        for _ in range(args.repeats):
            res = generate(lm, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=args.tokens),
                           backend="compiled")
            dec = [s for s in res.trace.steps if s.kind == "decode"]
            steps += [s.total_s for s in dec]
            verify += [s.verify_s for s in dec]
            per_token.append(res.trace.wall_s / len(res.output_ids))
        rows["step (engine, total_s)"] = 1000 * statistics.median(steps)
        rows["  verify_s (forward + verification)"] = 1000 * statistics.median(verify)
        rows["  rest of the step"] = rows["step (engine, total_s)"] - rows["  verify_s (forward + verification)"]
        rows["run wall / token"] = 1000 * statistics.median(per_token)

        session = StaticSession(run_cf)
        c = session.compiled
        try:
            session.forward(torch.tensor([prompt]), keep=1)
            n = args.context
            tok = torch.tensor([[prompt[-1]]])

            def one_forward():
                session.crop(n)
                session.forward(tok)

            rows["session.forward"] = median_ms(one_forward, reps)
            pos = torch.tensor([[n]])
            rows.update(graph_ab(lm, prompt, lens, reps, args.invariant, args.sdpa, args.tokens if args.ops else 0))
            mask = c.mask(n, 1, None, pos)
            for layer in c.cache.layers:
                layer.cumulative_length.fill_(n)
            rows["  mask"] = median_ms(lambda: c.mask(n, 1, None, pos), reps)
            rows["  cache positions"] = median_ms(
                lambda: [layer.cumulative_length.fill_(n) for layer in c.cache.layers], reps)
            logits = session.forward(tok)[-1]
            rows["argmax + item"] = median_ms(lambda: int(logits.argmax(-1).item()), reps)
            rows["softmax for the trace"] = median_ms(lambda: float(logits.float().softmax(-1)[0]), reps)
            mods = [m for m in lm.model.modules() if isinstance(m, StreamLinear)]
            xs = {m.in_features: torch.randn(1, m.in_features) for m in mods}
            rows["linears alone (1 row)"] = median_ms(
                lambda: [linear(xs[m.in_features], m.weight, m.bias, m.packed, m.plan) for m in mods], reps // 4)
            head = lm.model.get_output_embeddings()
            rows["  of which the LM head"] = median_ms(
                lambda: linear(xs[head.in_features], head.weight, head.bias, head.packed, head.plan), reps)
        finally:
            session.close()

    print(f"{args.target}, kernels {plan.label()}, {args.threads} threads, context {args.context}, "
          f"cache of {c.L} positions; median ms")
    for name, ms in rows.items():
        print(f"{name:40s} {ms:8.2f}")


if __name__ == "__main__":
    main()
