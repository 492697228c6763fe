"""The CPU kernels of another git revision against the working tree's, in turns in one process.

    PYTHONPATH=. python scripts/kernel_ab.py --base HEAD~1 [--parts linears,attention,forward] \
        [--sizes 1,2,4,8,16] [--context 128] [--rounds 9]

The machine's speed moves by 10-50% between processes here, more than most kernel changes, so a change is
only measured against its base inside one process. The base revision's stream_linear.cpp and
row_attention.cpp are built under another operator namespace (`wb_base`) beside the working tree's
(`workbench_kernels`), and each part is timed with the two taking turns:
- linears: every linear shape of --target (the embedded model: 211), packed like the model's, on T rows (the
  working tree's kernel also prefetching, kernels.choose.PREFETCH_EVERY_SHAPE, as a third arm);
- attention: one layer's attention of T rows over a 1024-column static cache with --context columns filled;
- forward: the compiled backend's forward over n new tokens after --context cached, each arm's graphs
  compiled with its own operators (a few minutes); an arm whose kernels have `stream_linear_group` runs the
  linears that read the same input as one call (kernels.linear.group_siblings), the other one call each;
- grouping: the working tree's compiled forward with those linears grouped and with one call each, the two
  built in turns (--builds each, one alive at a time; the base revision plays no part);
- prefetch: the same with the prefetch this machine measured for --target (kernels.choose) and with none.
Medians of --rounds rounds, in ms (attention in us), with each arm's ratio to one row.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from workbench.device import processor
from workbench.kernels import attention as attention_kernel, linear as linear_kernel
from workbench.kernels.build import CFLAGS, HEADERS, LDFLAGS, SOURCES
from workbench.kernels.choose import PREFETCH_EVERY_SHAPE
from workbench.paths import cache_dir

BASE_NS = "wb_base"


def build_base(rev: str) -> None:
    """The base revision's kernels, built (once per revision) and loaded as torch.ops.wb_base."""
    from torch.utils.cpp_extension import load

    sha = subprocess.run(["git", "rev-parse", rev], capture_output=True, text=True, check=True).stdout.strip()
    out = cache_dir() / "kernels-ab" / sha[:12]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in SOURCES + HEADERS:
        shown = subprocess.run(["git", "show", f"{sha}:workbench/kernels/{path.name}"], capture_output=True,
                               text=True)
        if shown.returncode != 0 and path in HEADERS:
            continue  # a revision from before the shared header
        shown.check_returncode()
        (out / path.name).write_text(shown.stdout.replace("workbench_kernels", BASE_NS))
        if path in SOURCES:
            paths.append(str(out / path.name))
    load(name=BASE_NS, sources=paths, extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
         build_directory=str(out), is_python_module=False)

    torch.library.register_fake(f"{BASE_NS}::stream_linear")(linear_kernel.output_like)
    if hasattr(getattr(torch.ops, BASE_NS), "stream_linear_group"):  # a revision whose graphs group linears
        torch.library.register_fake(f"{BASE_NS}::stream_linear_group")(linear_kernel.group_output_like)
    torch.library.register_fake(f"{BASE_NS}::row_attention")(attention_kernel.output_like)


def turns(arms: dict, sizes: list[int], rounds: int, calls: int) -> dict:
    """{(arm, size): median seconds of one call}, the arms taking turns at each size in every round."""
    for fn in arms.values():
        for n in sizes:
            fn(n)
    times = {(a, n): [] for a in arms for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            for a, fn in arms.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(n)
                times[a, n].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, res: dict, arms, sizes: list[int], unit: float, unit_name: str) -> None:
    print(title)
    for a in arms:
        one = res[a, sizes[0]]
        print(f"  {a:>13}: " + "  ".join(f"n={n} {res[a, n] * unit:.2f} {unit_name} ({res[a, n] / one:.2f}x)"
                                       for n in sizes))


def linears(ops: dict, sizes: list[int], rounds: int, target: str) -> None:
    from workbench.kernels.linear import linear_shapes, pack_all
    from workbench.models import load_model

    shapes = [(n, k) for n, k, _ in linear_shapes(load_model(target).model)]  # the LM head included
    g = torch.Generator().manual_seed(0)
    packed = pack_all([torch.randn(n, k, generator=g) * 0.02 for n, k in shapes])
    xs = {T: {k: torch.randn(T, k, generator=g) for k in {k for _, k in shapes}} for T in sizes}

    def arm(ns, *ahead):
        def run(T):
            for (n, k), p in zip(shapes, packed):
                getattr(torch.ops, ns).stream_linear(xs[T][k], p, None, n, *ahead)
        return run

    arms = {a: arm(ns) for a, ns in ops.items()}
    arms["new, prefetch"] = arm(ops["new"], PREFETCH_EVERY_SHAPE)
    res = turns(arms, sizes, rounds, 3)
    report(f"{target}'s {len(shapes)} linears alone (random fp32 weights of their shapes, ms):", res, arms, sizes,
           1e3, "ms")


def attention(ops: dict, sizes: list[int], rounds: int, context: int) -> None:
    S, g = 1024, torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 3, S, 64, generator=g), torch.randn(1, 3, S, 64, generator=g)
    inputs = {}
    for T in sizes:
        mask = torch.full((1, 1, T, S), torch.finfo(torch.float32).min)
        for t in range(T):
            mask[0, 0, t, :context + t + 1] = 0
        inputs[T] = (torch.randn(1, 9, T, 64, generator=g), mask)

    def arm(ns):
        return lambda T: getattr(torch.ops, ns).row_attention(inputs[T][0], k, v, inputs[T][1], 0.125)

    res = turns({a: arm(ns) for a, ns in ops.items()}, sizes, rounds, 50)
    report(f"attention, one layer (9 query heads, 3 key/value heads, 64 wide), {context} columns cached (us):",
           res, ops, sizes, 1e6, "us")


@torch.inference_mode()
def forward(ops: dict, sizes: list[int], rounds: int, context: int, target: str) -> None:
    from workbench.backend.compiled import CompiledForward, StaticSession, cache_len_bucket
    from workbench.kernels import plan_for
    from workbench.models import load_model

    lm = load_model(target)
    plan = plan_for(lm)
    print(f"{target}, kernels {plan.label()}")
    ids = torch.randint(0, 1000, (1, context + max(sizes)), generator=torch.Generator().manual_seed(0))
    current = torch.ops.workbench_kernels
    sessions = {}
    for a, ns in ops.items():
        torch.ops.workbench_kernels = getattr(torch.ops, ns)  # what this arm's graphs call, read while tracing
        # a build from before the tiles' prefetch takes no distances: its arm's plan has none
        old = "ahead" not in {x.name for x in getattr(torch.ops, ns).stream_linear.default._schema.arguments}
        use_plan(lm, dataclasses.replace(plan, prefetch=()) if old else plan)
        try:
            s = StaticSession(CompiledForward(lm, cache_len_bucket(context + max(sizes), lm.max_positions)))
            s.forward(ids[:, :context], keep=1)
            for n in sizes:
                s.forward(ids[:, context:context + n])
                s.crop(context)
        finally:
            torch.ops.workbench_kernels = current
            use_plan(lm, plan)
        sessions[a] = s

    def arm(s):
        def run(n):
            s.forward(ids[:, context:context + n])
            s.crop(context)
        return run

    res = turns({a: arm(s) for a, s in sessions.items()}, sizes, rounds, 3)
    report(f"compiled forward over n new tokens after {context} cached (ms):", res, ops, sizes, 1e3, "ms")


def use_plan(lm, plan) -> None:
    """Make `plan` the model's plan under its mode (what a CompiledForward built next reads)."""
    from workbench import kernels

    lm.model.__dict__["_workbench_plans"][plan.mode] = plan
    kernels.plan_for(lm)


@torch.inference_mode()
def builds_in_turns(title: str, lm, arms: dict, sizes: list[int], rounds: int, context: int, builds: int) -> None:
    """The working tree's compiled forward under each arm's setting ({name: a context manager factory, entered
    while the graphs are set up and traced: a graph is compiled at its first call}), built in turns, --builds
    each, one alive at a time."""
    import gc

    from workbench.backend import compiled

    compiled.compiler_settings()
    ids = torch.randint(0, 1000, (1, context + max(sizes)), generator=torch.Generator().manual_seed(0))
    times: dict = {}
    for _ in range(builds):
        for a, setting in arms.items():
            def run(n):
                s.forward(ids[:, context:context + n])
                s.crop(context)

            with setting():
                cf = compiled.CompiledForward(lm, compiled.cache_len_bucket(context + max(sizes), lm.max_positions))
                s = compiled.StaticSession(cf)
                s.forward(ids[:, :context], keep=1)
                for n in sizes:
                    run(n)

            for k, v in turns({a: run}, sizes, rounds, 3).items():
                times.setdefault(k, []).append(v)
            del s, cf, run
            gc.collect()
    res = {k: statistics.median(v) for k, v in times.items()}
    report(f"{title}: compiled forward over n new tokens after {context} cached, {builds} builds of each (ms):", res,
           arms, sizes, 1e3, "ms")


def grouping(sizes: list[int], rounds: int, context: int, target: str, builds: int) -> None:
    from workbench.backend import compiled
    from workbench.kernels import plan_for
    from workbench.models import load_model

    lm = load_model(target)
    print(f"{target}, kernels {plan_for(lm).label()}")

    @contextlib.contextmanager
    def passes(fn):
        real = compiled.graph_passes
        compiled.graph_passes = fn  # read when the graphs are set up
        try:
            yield
        finally:
            compiled.graph_passes = real

    arms = {"grouped": lambda: passes(compiled.graph_passes), "one call each": lambda: passes(lambda: {})}
    builds_in_turns("grouping", lm, arms, sizes, rounds, context, builds)


def prefetching(sizes: list[int], rounds: int, context: int, target: str, builds: int) -> None:
    from workbench.kernels import plan_for
    from workbench.models import load_model

    lm = load_model(target)
    plan = plan_for(lm)
    print(f"{target}, kernels {plan.label()}; prefetch distances per tile shape {plan.prefetch}")

    @contextlib.contextmanager
    def with_plan(p):
        use_plan(lm, p)
        try:
            yield
        finally:
            use_plan(lm, plan)

    arms = {"measured": lambda: with_plan(plan), "no prefetch": lambda: with_plan(dataclasses.replace(plan,
                                                                                                    prefetch=()))}
    builds_in_turns("prefetch", lm, arms, sizes, rounds, context, builds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision whose kernels are the base")
    ap.add_argument("--parts", default="linears,attention,forward")
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--builds", type=int, default=4,
                    help="grouping, prefetch: builds of each arm's graphs, in turns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from workbench.kernels.build import load_extension

    if not load_extension(lambda m: print(m, file=sys.stderr)):
        sys.exit("the working tree's kernels could not be built here")
    build_base(args.base)
    ops = {"base": BASE_NS, "new": "workbench_kernels"}
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{args.base} (base) against the working tree, {args.threads} threads, {processor(torch.device('cpu'))}")
    parts = args.parts.split(",")
    if "linears" in parts:
        linears(ops, sizes, args.rounds, args.target)
    if "attention" in parts:
        attention(ops, sizes, args.rounds, args.context)
    if "forward" in parts:
        forward(ops, sizes, args.rounds, args.context, args.target)
    if "grouping" in parts:
        grouping(sizes, args.rounds, args.context, args.target, args.builds)
    if "prefetch" in parts:
        prefetching(sizes, args.rounds, args.context, args.target, args.builds)


if __name__ == "__main__":
    main()
