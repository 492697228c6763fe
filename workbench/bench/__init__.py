"""Benchmarks: prompt suites, repeats, sweeps and baseline-relative speedups, logged to the run store.

    workbench bench --suite builtin --methods speculative,prompt_lookup --draft smollm2-135m:bf16 --compare-hf

    from workbench.bench import benchmark_table, benchmark_report
    benchmark_table(store, bench_id)     # DataFrame: methods x categories, speedup against plain decoding
    benchmark_report(store, bench_id)    # BenchmarkReport: per-method rows, HF comparison, overhead, roofline

Modules: suites (Spec-Bench-format prompt files), arms (methods, --param,
--sweep), runner (the timed loop), hf (transformers' equivalents), roofline
(memory bandwidth), report (every metric, from the store; the definitions are
in its docstring), export (Markdown, CSV); `workbench bench` is workbench.bench_cli.

`workbench.run_benchmark(cfg, store)` runs one in this process or over a cluster
(workbench.api); `run_in_process` here is the in-process runner alone.
"""
__all__ = ["BenchmarkReport", "benchmark_report", "benchmark_rows", "benchmark_table", "run_in_process", "BenchConfig",
           "load_suite"]


def __getattr__(name):  # the runner and the report pull in torch; load them only when asked for
    if name in ("BenchmarkReport", "benchmark_report", "benchmark_rows", "benchmark_table"):
        from . import report

        return getattr(report, name)
    if name in ("run_in_process", "BenchConfig"):
        from . import runner

        return getattr(runner, name)
    if name == "load_suite":
        from .suites import load_suite

        return load_suite
    raise AttributeError(f"module 'workbench.bench' has no attribute {name!r}")
