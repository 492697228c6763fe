"""`workbench bench`: run a benchmark, or show / list stored ones."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from store import RunStore

from .backend import add_backend_argument
from .cluster import cluster_address
from .config import ConfigError
from .quality import MEASURES, check_measure

EPILOG = """examples:
  workbench bench --suite builtin --methods speculative,prompt_lookup --draft smollm2-135m:bf16 --compare-hf
  workbench bench --suite builtin --methods speculative --draft smollm2-135m:bf16 --sweep speculative.gamma=1,2,4,8
  workbench bench --suite builtin --methods prompt_lookup --backends eager,compiled --compare-hf
  workbench bench --suite ../shared/data/spec_bench/question.jsonl --limit 5 --categories summarization,rag \\
      --methods prompt_lookup
  workbench bench --suite builtin --methods speculative --draft smollm2-135m:bf16 \\
      --cluster ray://HEAD:10001 --workers 2
  workbench bench --show BENCH_ID --markdown results.md
"""


def add_bench_parser(sub) -> None:
    """Register `workbench bench` on the CLI's subparsers object."""
    b = sub.add_parser("bench", help="benchmark methods against plain decoding on a prompt suite",
                       description="Time methods against plain greedy decoding on the same prompts in one process; "
                                   "every run is logged under one benchmark id.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--suite", help="'builtin' or a question.jsonl file (Spec-Bench format)")
    b.add_argument("--methods", help="comma-separated methods; plain decoding (autoregressive) always runs "
                                     "as the baseline")
    b.add_argument("--target", "-t", default=None, help="target model spec (default: smollm2-135m)")
    b.add_argument("--draft", "-d", default=None, help="draft model spec, e.g. smollm2-135m:bf16")
    b.add_argument("--max-new-tokens", "-n", type=int, default=128)
    b.add_argument("--repeats", "-r", type=int, default=3, help="times each method decodes each prompt (default 3)")
    b.add_argument("--limit", type=int, default=None, help="at most K questions per category")
    b.add_argument("--categories", default=None, help="comma-separated categories to keep")
    b.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="fixed method parameter, e.g. speculative.gamma=4 (repeatable)")
    b.add_argument("--sweep", action="append", default=[], metavar="METHOD.KEY=V1,V2,...",
                   help="one arm per value; give twice for a grid")
    b.add_argument("--accept", action="append", default=[], metavar="RULE[:KEY=V,...]",
                   help="run every drafting arm with this acceptance rule (repeatable; lossy unless exact): "
                        "typical:eps=0.09,delta=0.3, top_k:k=2, ratio:ratio=0.5, exact")
    b.add_argument("--kv", action="append", default=[], metavar="POLICY[:KEY=V,...]",
                   help="run every arm (and plain decoding once more) over this compressed KV cache (repeatable; "
                        "lossy; eager only): streaming:budget=0.5,sinks=4, h2o:budget=0.5,recent=0.5, int8, "
                        "int4:group=32,residual=32, none")
    add_backend_argument(b)
    b.add_argument("--backends", default=None, metavar="B1,B2",
                   help="run every arm on each of these backends in the same process, interleaved, each against "
                        "its own plain-decoding baseline, e.g. eager,compiled (default: --backend); compiling "
                        "happens before timing and is reported as warm-up")
    b.add_argument("--compare-hf", action="store_true",
                   help="also time transformers' generate (also with its static cache + torch.compile), assisted "
                        "generation and prompt lookup")
    b.add_argument("--no-trace-overhead", dest="trace_overhead", action="store_false",
                   help="skip the plain-decoding run with tracing off")
    b.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the whole benchmark (default: torch's; recorded with the results)")
    b.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="fan the work out over Ray workers: local, auto or ray://HOST:PORT (default: "
                        "$WORKBENCH_CLUSTER, else in process; none: in process); each worker times its own baseline")
    b.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --cluster: at most N workers (default: as many as the cluster has room for)")
    b.add_argument("--warmup-tokens", type=int, default=8, help=argparse.SUPPRESS)
    b.add_argument("--bandwidth-mib", type=int, default=512, help=argparse.SUPPRESS)
    b.add_argument("--show", metavar="BENCH_ID", help="print the report of a stored benchmark (no decoding)")
    b.add_argument("--list", action="store_true", help="list stored benchmarks")
    b.add_argument("--json", action="store_true", help="print the report as one JSON object")
    b.add_argument("--markdown", metavar="FILE", help="also write the report as Markdown")
    b.add_argument("--csv", metavar="FILE", help="also write one CSV line per (method, category)")
    b.add_argument("--quality-measure", default="agreement", metavar="MEASURE",
                   help=f"the quality axis of the speed-quality section and plot: {', '.join(MEASURES)} "
                        "(default agreement; docs/quality.md)")
    b.add_argument("--pareto", metavar="FILE.html",
                   help="also write the speed-quality Pareto plot (speedup vs --quality-measure, one point per arm, "
                        "a --sweep's arms as a curve) as an HTML page")
    b.set_defaults(func=cmd_bench)


def _store(args):
    return RunStore(args.db) if getattr(args, "db", None) else RunStore()


def _config(args):
    # here: the arms and the runner load torch (the methods); the CLI's parsers must not
    from .bench.arms import parse_accepts, parse_backends, parse_kvs, parse_methods, parse_params, parse_sweeps
    from .bench.runner import BenchConfig

    if not args.suite:
        raise ConfigError("bench: --suite is required (e.g. --suite builtin)")
    if not args.methods:
        raise ConfigError("bench: --methods is required (e.g. --methods speculative,prompt_lookup)")
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {args.limit}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be positive, got {args.threads}")
    if args.warmup_tokens < 1:
        raise ConfigError(f"--warmup-tokens must be positive, got {args.warmup_tokens}")
    cluster = cluster_address(args.cluster)
    if args.workers is not None and (args.workers < 1 or cluster is None):
        raise ConfigError(f"--workers must be positive, got {args.workers}" if args.workers < 1
                          else "--workers needs --cluster (in process there is one worker: this process)")
    backends = parse_backends(args.backends if args.backends is not None else args.backend)
    if cluster is not None and len(backends) > 1:
        raise ConfigError("--backends with more than one backend runs in process only: drop --cluster, or run "
                          "one benchmark per backend")
    cfg = BenchConfig(suite=args.suite, methods=parse_methods(args.methods), target=args.target, draft=args.draft,
                      max_new_tokens=args.max_new_tokens, repeats=args.repeats, limit=args.limit,
                      categories=categories, params=parse_params(args.param), sweeps=parse_sweeps(args.sweep),
                      compare_hf=args.compare_hf, trace_overhead=args.trace_overhead, device=args.device,
                      warmup_tokens=args.warmup_tokens, bandwidth_mib=args.bandwidth_mib, threads=args.threads,
                      cluster=cluster or "none", workers=args.workers, backends=backends,
                      accepts=parse_accepts(args.accept), kvs=parse_kvs(args.kv))
    cfg.check()
    return cfg


def cmd_bench(args) -> int:
    # here: the report loads torch (the methods, transformers' arms); the CLI's parsers must not
    from .bench.export import to_markdown, write_csv, write_markdown
    from .bench.report import benchmark_report

    if args.list:
        return _list(args)
    check_measure(args.quality_measure)
    if args.pareto and not str(args.pareto).endswith((".html", ".htm")):
        raise ConfigError(f"--pareto writes an HTML page: give a file name ending in .html, got {args.pareto!r}")
    if args.show:
        bench_id = args.show
        store = _store(args)
    else:
        cfg = _config(args)  # every input is checked before a model is loaded or a row written
        from .api import run_benchmark  # loads torch: only for a benchmark that decodes
        from .bench.runner import plan_benchmark

        plan_benchmark(cfg, cluster=cluster_address(cfg.cluster) is not None)
        store = _store(args)
        bench_id = run_benchmark(cfg, store)
    report = benchmark_report(store, bench_id)
    if args.markdown:
        print(f"bench: wrote {write_markdown(report, args.markdown, args.quality_measure)}", file=sys.stderr)
    if args.pareto:
        print(f"bench: wrote {_write_pareto(report, args.pareto, args.quality_measure)}", file=sys.stderr)
    if args.csv:
        print(f"bench: wrote {write_csv(report, args.csv)}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(to_markdown(report, args.quality_measure))
    return 0


def _write_pareto(report, path: str, measure: str) -> Path:
    """The report's speed-quality points drawn by the app's presenter (ui.presenters.quality), as an HTML page."""
    from ui.presenters.quality import bench_points, pareto_figure  # here: plotly, only when a plot is asked for

    names = {k: report.name(*k) for k in report.keys}
    fig = pareto_figure(bench_points(report.rows, measure, names=names), measure,
                        speed_label="speedup over plain decoding", title=f"Benchmark {report.id[:8]}")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(out, include_plotlyjs="cdn")
    return out


def _list(args) -> int:
    benches = _store(args).list_benchmarks()
    if args.json:
        print(json.dumps(benches))
        return 0
    if not benches:
        print("no benchmarks recorded yet: try `workbench bench --suite builtin --methods prompt_lookup`")
        return 0
    print(f"{'id':<12} {'created':<19} {'status':<8} {'runs':>5}  suite / methods")
    for b in benches:
        cfg = b.get("config", {})
        print(f"{b['id'][:12]:<12} {b['created_at'][:19]:<19} {b['status']:<8} {b['n_runs']:>5}  "
              f"{b['suite']} / {','.join(cfg.get('methods', []))}")
    return 0
