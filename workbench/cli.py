"""`workbench` command line: run a method, list methods, inspect and export runs, launch the app.

Bad input ends with one line on stderr and a non-zero exit (2 for usage
errors, 1 for a failed run); set WORKBENCH_DEBUG=1 to see tracebacks.
`workbench ui` serves on 127.0.0.1; another --host or --share needs a login
(--auth-file or $WORKBENCH_AUTH) or an explicit --insecure (see ui/exposure.py),
and is refused before Gradio is even imported.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Any, Sequence

from store import RunStore, StoreError

from . import metrics as M
from .backend import add_backend_argument, check_backend
from .kernels import set_mode
from .advise_cli import add_advise_parser
from .bench_cli import add_bench_parser
from .config import BASELINE, ConfigError, SamplingConfig
from .models import EMBEDDED_DEFAULT, ModelError
from .train_cli import add_train_parsers
from .quality import describe, lossy_badge


class UsageError(Exception):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message}")


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects key=value, got {pair!r}")
        if key.strip() in out:
            raise UsageError(f"--param {key.strip()} is given twice")
        out[key.strip()] = value.strip()
    return out


def _int_in(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi]; anything else is one usage line."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if n < lo or (hi is not None and n > hi):
            span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {n}")
        return n

    return parse


def _open_store(args):
    return RunStore(args.db) if getattr(args, "db", None) else RunStore()


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


# ---------------------------------------------------------------- commands

def _progress_printer():
    """Model-loading progress on stderr (stdout stays clean for --json).

    On a terminal every message is shown; otherwise only the slow one-time
    conversion, so that a bad model name still ends in exactly one error line.
    """
    tty = sys.stderr.isatty()
    if not tty:
        from transformers.utils import logging as hf_logging  # here: transformers only for commands with a model

        hf_logging.disable_progress_bar()  # its weight-loading bar would bury the one error line

    def show(msg: str) -> None:
        if tty or "onvert" in msg or "ompil" in msg or "cost profile" in msg:  # slow one-time work: always said
            print(msg, file=sys.stderr, flush=True)

    return show


def cmd_run(args) -> int:
    from .api import run  # here: loads torch, which the CLI's parsers and store commands must not

    if args.prompt is None or not args.prompt.strip():
        raise UsageError("the prompt is empty: pass --prompt TEXT")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    progress = _progress_printer()
    store = None if args.no_log else _open_store(args)
    result = run(args.method, args.prompt, target=args.target, draft=args.draft, params=_parse_params(args.param),
                 sampling=sampling, max_new_tokens=args.max_new_tokens, chat=args.chat, device=args.device,
                 store=store, log=not args.no_log, source="cli", progress=progress, cluster=args.cluster,
                 backend=args.backend, quality=not args.no_quality, acceptance=args.accept, kv=args.kv)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    s = result.summary
    print(result.output_text)
    print(file=sys.stderr)
    print(f"[{result.method}] {s.new_tokens} tokens in {s.wall_s:.2f}s = {s.tokens_per_s:.1f} tok/s | "
          f"tau {s.mean_accepted_tokens:.2f} | path acceptance {_fmt(s.acceptance_rate)} "
          f"({s.accepted_draft_tokens}/{s.path_positions} positions) | node acceptance "
          f"{_fmt(s.node_acceptance_rate)} ({s.accepted_draft_tokens}/{s.drafted_tokens} nodes) | "
          f"target forwards {s.target_forward_passes} | TTFT {s.ttft_s * 1000:.0f} ms"
          + (f" | run {result.run_id}" if result.run_id else ""), file=sys.stderr)
    print(f"{lossy_badge(result.trace.lossy)} | quality vs plain decoding: "
          f"{describe(result.quality.to_dict() if result.quality else None)}", file=sys.stderr)
    for note in result.trace.notes:  # cost-aware sizing that chose not to draft, a cost profile measured first, ...
        print(f"note: {note.get('text')}", file=sys.stderr)
    return 0


def cmd_methods(args) -> int:
    from .methods import methods_by_family  # here: the methods load torch (as cmd_run)

    groups = [(family, [m.facts() for m in methods]) for family, methods in methods_by_family()]
    if args.json:
        print(json.dumps([m for _, methods in groups for m in methods]))
        return 0
    for i, (family, methods) in enumerate(groups):
        print(("\n" if i else "") + f"## {family}")
        for m in methods:
            tags = ["lossless" if m["lossless"] else "LOSSY"] + (["draft model"] if m["needs_draft_model"] else [])
            print(f"{m['name']:<16} {m['label']}  [{', '.join(tags)}]")
            print(f"{'':<16} {m['description']}")
            if m["pays_when"]:
                print(f"{'':<16} Pays when {m['pays_when']}.")
            for p in m["params"]:
                rng = f" choices {'/'.join(p['choices'])}" if p["choices"] else (
                    f" range [{_fmt(p['min'], 0)}, {_fmt(p['max'], 0)}]" if p["min"] is not None else "")
                print(f"{'':<18}--param {p['name']}=<{p['type']}> (default {p['default']}){rng}: {p['help']}")
    return 0


def cmd_models(args) -> int:
    # here: the model catalogue and the precision timings load torch (as cmd_run)
    from .backend.speed import MEASURED_PRECISIONS, cached_precision_speeds, precision_speed
    from .models import available_models

    models = available_models()
    measured = None
    if args.measure is not None:  # --measure [SPEC ...]: time them now (cached per machine)
        specs = args.measure or [f"{m['name']}:{p}" for m in models if m["name"] != "tiny-random"
                                 and m.get("installed") for p in MEASURED_PRECISIONS]
        say = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        measured = [precision_speed(spec, refresh=args.refresh, progress=say) for spec in specs]
    speeds = cached_precision_speeds()
    for m in models:
        m["precision_speed"] = [s for s in speeds if s["baseline"] == m["name"]]
    if args.json:
        print(json.dumps(models))
        return 0
    for m in models:
        print(f"{m['name']:<16} {'installed' if m.get('installed') else 'not installed':<14} {m.get('description', '')}")
    print("Options: append :bf16, :fp16 or :int8 to a name (e.g. smollm2-135m:bf16). "
          "Any local model directory or hub id also works.")
    shown = [s for s in (speeds if measured is None else measured) if s["ms"] is not None and s["rows"] == 1]
    if shown:
        print(f"Measured here ({shown[0]['processor']}, {shown[0]['threads']} threads, torch {shown[0]['torch']}; "
              "one forward of 1 token after a short cache, median):")
        for s in shown:
            print(f"  {s['spec']:<24} {s['summary']} ({s['ms']:.1f} ms vs {s['baseline_ms']:.1f} ms)")
    elif measured is None:
        print("Run `workbench models --measure` to time :int8 and :bf16 against fp32 on this machine.")
    return 0


def cmd_runs_list(args) -> int:
    runs = _open_store(args).list_runs(method=args.method, status=args.status, search=args.search, limit=args.limit,
                                       lossless=args.lossless)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs]))
        return 0
    if not runs:
        print("no runs recorded yet: try `workbench run --method autoregressive --prompt 'Hello'`")
        return 0
    print(f"{'id':<12} {'created':<19} {'status':<11} {'method':<15} {'target':<20} {'draft':<20} "
          f"{'tok/s':>7} {'tau':>5} {'quality':<8} {'agree':>5}  prompt")
    for r in runs:
        prompt = " ".join((r.prompt or "").split())[:40]
        print(f"{r.id[:12]:<12} {r.created_at:%Y-%m-%d %H:%M:%S} {r.status:<11} {r.method:<15} "
              f"{(r.target or '')[:20]:<20} {(r.draft or '-')[:20]:<20} "
              f"{_fmt(r.metrics.get('tokens_per_s'), 1):>7} {_fmt(r.metrics.get('mean_accepted_tokens')):>5} "
              f"{'lossless' if r.lossless else 'LOSSY':<8} {_fmt((r.quality or {}).get('agreement')):>5}  {prompt}")
    return 0


def cmd_runs_show(args) -> int:
    store = _open_store(args)
    rec = store.get_run(args.run_id)
    if args.json:
        d = rec.to_dict()
        d["steps"] = [s.to_dict() for s in store.load_trace(rec.id).steps] if args.steps else None
        print(json.dumps(d))
        return 0
    print(f"run {rec.id}  [{rec.status}]  {rec.created_at:%Y-%m-%d %H:%M:%S}  source={rec.source}")
    print(f"method {rec.method}  target {rec.target}  draft {rec.draft or '-'}")
    print(f"params {json.dumps(rec.params)}  sampling {json.dumps(rec.sampling)}")
    if rec.error:
        print(f"error  {rec.error}")
    print(f"prompt {rec.prompt}")
    print(f"output {rec.output_text}")
    print(f"{lossy_badge(rec.lossy)}")
    print(f"quality vs plain decoding: {describe(rec.quality)}"
          + (f" (baseline run {rec.quality['baseline_run']})" if (rec.quality or {}).get("baseline_run") else ""))
    for k, v in sorted(rec.metrics.items()):
        print(f"  {k:<28} {_fmt(v, 4)}")
    if rec.acceptance_by_position:
        print("  acceptance by position      " + " ".join(_fmt(a) for a in rec.acceptance_by_position))
    for note in rec.notes:
        print(f"note   {note.get('text')}")
    steps = store.load_trace(rec.id).steps
    acc = M.acceptance(steps)  # from the stored steps, as the app's acceptance card (docs/metrics.md)
    if acc.drafted_nodes:
        print(f"  {M.PATH_ACCEPTANCE:<28} {_pct(acc.path_rate)}  ({acc.path_caption()})")
        print(f"  {M.NODE_ACCEPTANCE:<28} {_pct(acc.node_rate)}  ({acc.node_caption()})")
    if args.steps:
        for s in steps:
            print(f"  step {s.index:>4} {s.kind:<7} drafted {s.n_draft:>3} accepted {s.n_accepted:>3} "
                  f"committed {len(s.committed)} draft {s.draft_s * 1000:6.1f} ms verify {s.verify_s * 1000:6.1f} ms")
    return 0


def cmd_runs_export(args) -> int:
    n = _open_store(args).export_csv(args.csv)
    print(f"wrote {n} runs to {args.csv}", file=sys.stderr)
    return 0


def cmd_runs_delete(args) -> int:
    store = _open_store(args)
    ids = [store.get_run(r).id for r in args.run_ids]  # every id (or unique prefix) must exist: all or nothing
    n = store.delete_runs(ids)
    print(f"deleted {n} runs", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- parser

def add_accept_argument(parser) -> None:
    """--accept RULE[:KEY=V,...] (the verifier's acceptance rule) and --kv POLICY[:KEY=V,...] (KV-cache
    compression) of `workbench run`."""
    parser.add_argument("--accept", default=None, metavar="RULE[:KEY=V,...]",
                        help="relaxed acceptance, lossy: typical:eps=0.09,delta=0.3 (Medusa-2), top_k:k=2, "
                             "ratio:ratio=0.5 (default: exact, lossless); docs/lossy.md")
    parser.add_argument("--kv", default=None, metavar="POLICY[:KEY=V,...]",
                        help="compress the target's KV cache, lossy (eager backend): streaming:budget=0.5,sinks=4 "
                             "(StreamingLLM), h2o:budget=0.5,recent=0.5 (H2O), int8 or int4:group=32,residual=32 "
                             "(KIVI); docs/lossy.md")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description="Decoding Workbench: run, see and compare fast decoding methods.")
    p.add_argument("--db", help="SQLite run store (default: $WORKBENCH_DB or the user data dir)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    r = sub.add_parser("run", help="decode a prompt with a method and log the run")
    r.add_argument("--method", "-m", default=BASELINE, help="see `workbench methods`")
    r.add_argument("--target", "-t", default=None, help="target model spec (default: smollm2-135m)")
    r.add_argument("--draft", "-d", default=None, help="draft model spec, e.g. smollm2-135m:bf16")
    r.add_argument("--prompt", "-p", default=None, help="prompt text")
    r.add_argument("--max-new-tokens", "-n", type=int, default=128)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-k", type=int, default=0)
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    add_accept_argument(r)
    chat = r.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="apply the chat template (default when the model has one)")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="feed the prompt as plain text")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_backend_argument(r)
    r.add_argument("--no-log", action="store_true", help="do not record the run in the store")
    r.add_argument("--no-quality", action="store_true",
                   help="skip the quality accounting against the target's plain decoding (docs/quality.md)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="decode on Ray workers: local, auto or ray://HOST:PORT "
                        "(default: $WORKBENCH_CLUSTER, else in process; none: in process)")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("methods", help="list decoding methods and their parameters")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)

    mo = sub.add_parser("models", help="list built-in models (and whether :int8/:bf16 are faster here)")
    mo.add_argument("--json", action="store_true")
    mo.add_argument("--measure", nargs="*", metavar="SPEC", default=None,
                    help="time reduced-precision specs against fp32 on this machine (one forward of 1 token, "
                         "median) and cache the result per CPU/GPU model, thread count and torch version; "
                         "no SPEC: :int8 and :bf16 of every installed built-in model")
    mo.add_argument("--refresh", action="store_true", help="with --measure: time again even when cached")
    mo.set_defaults(func=cmd_models)

    runs = sub.add_parser("runs", help="inspect recorded runs")
    rsub = runs.add_subparsers(dest="runs_command", parser_class=_Parser)
    rl = rsub.add_parser("list", help="list runs, newest first")
    rl.add_argument("--method")
    rl.add_argument("--status", choices=["running", "finished", "failed", "interrupted"])
    rl.add_argument("--search", help="substring of prompt, method or model")
    rl.add_argument("--limit", type=_int_in(1), default=50)
    lossy = rl.add_mutually_exclusive_group()
    lossy.add_argument("--lossless", dest="lossless", action="store_true", default=None, help="lossless runs only")
    lossy.add_argument("--lossy", dest="lossless", action="store_false", help="lossy runs only")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_runs_list)
    rs = rsub.add_parser("show", help="show one run")
    rs.add_argument("run_id")
    rs.add_argument("--steps", action="store_true", help="also list every step")
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_runs_show)
    re_ = rsub.add_parser("export", help="export runs with their metrics")
    re_.add_argument("--csv", required=True, metavar="FILE")
    re_.set_defaults(func=cmd_runs_export)
    rd = rsub.add_parser("delete", help="delete runs")
    rd.add_argument("run_ids", nargs="+")
    rd.set_defaults(func=cmd_runs_delete)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


def _add_ui(sub) -> None:
    u = sub.add_parser("ui", help="launch the Gradio app")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=_int_in(1, 65535), default=7860)
    u.add_argument("--share", action="store_true", help="also create a public Gradio share link (opt-in)")
    u.add_argument("--target", default=None, help="preselected target model")
    u.add_argument("--auth-file", default=None, metavar="PATH",
                   help="logins, one user:password a line (else $WORKBENCH_AUTH=user:pw[,user2:pw2]); "
                        "required with --share or a --host other than loopback")
    u.add_argument("--insecure", action="store_true",
                   help="serve a non-loopback --host or --share without a login (anyone who reaches it can use it)")
    u.add_argument("--allow-model", action="append", default=[], metavar="SPEC",
                   help="when shared: also allow this model (repeatable; also $WORKBENCH_ALLOWED_MODELS, "
                        "comma-separated); the built-in models are always allowed")
    u.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="decode on Ray workers: local, auto or ray://HOST:PORT "
                        "(default: $WORKBENCH_CLUSTER, else in process; none: in process)")
    add_backend_argument(u)

    def cmd_ui(args) -> int:
        # here: the app's package sits above the library and loads only for `workbench ui` (Gradio and torch
        # only after the exposure check)
        from ui.exposure import plan_launch

        options = dict(auth_file=args.auth_file, insecure=args.insecure, allow_models=args.allow_model)
        plan_launch(args.host, args.share, default_target=args.target, **options)  # refuse before loading Gradio
        from ui.app import launch

        launch(host=args.host, port=args.port, share=args.share, db=args.db, default_target=args.target,
               cluster=args.cluster, backend=args.backend, **options)
        return 0

    u.set_defaults(func=cmd_ui)


def _add_bench(sub) -> None:
    add_bench_parser(sub)


def _add_profile(sub) -> None:
    pr = sub.add_parser("profile", help="measure (or show the cached) cost of a forward over n tokens, per backend; "
                        "export and import profiles")
    pr.add_argument("--target", "-t", action="append", default=None,
                    help="model spec, repeatable, e.g. smollm2-135m:bf16 for another dtype (default: smollm2-135m)")
    pr.add_argument("--device", default=None)
    pr.add_argument("--backends", default=None, help="comma-separated backends (default: the --backend one)")
    add_backend_argument(pr)
    pr.add_argument("--threads", default=None, help="comma-separated torch thread counts (default: the current one)")
    pr.add_argument("--refresh", action="store_true", help="measure again even if a profile is cached")
    pr.add_argument("--export", metavar="FILE", default=None,
                    help="write profiles to FILE as JSON: the --target ones (measured when not cached), else every "
                         "profile measured on this machine")
    pr.add_argument("--import", dest="import_file", metavar="FILE", default=None,
                    help="keep the profiles of FILE (another machine's --export) as an imported machine: listed "
                         "and drawn beside this machine's, never used for this machine's decisions")
    pr.add_argument("--as", dest="as_name", metavar="NAME", default=None,
                    help="the machine name for --export or --import (default: the file's, else its processor)")
    pr.add_argument("--json", action="store_true")

    def cmd_profile(args) -> int:
        # here: these load torch (as cmd_run)
        from .backend.profile import CONTEXT, cached_profiles, profile_table
        from .backend.profile_files import export_profiles, import_profiles
        from .models import load_model

        if args.import_file and (args.export or args.target or args.refresh):
            raise UsageError("--import reads a file only: give it without --export, --target or --refresh")
        if args.as_name is not None and not (args.export or args.import_file):
            raise UsageError("--as names the machine of --export or --import")
        if args.import_file:
            rows = import_profiles(args.import_file, args.as_name)
            print(f"imported {len(rows)} profile{'s' * (len(rows) != 1)} as {rows[0]['name']!r} from "
                  f"{args.import_file} (listed beside this machine's, never used for its decisions)", file=sys.stderr)
        elif args.export and not args.target:
            rows = cached_profiles(imported=False)
        else:
            backends = [check_backend(b.strip()) for b in (args.backends or args.backend).split(",") if b.strip()]
            threads = [_int_in(1, 1024)(t.strip()) for t in args.threads.split(",")] if args.threads else [None]
            rows = []
            for spec in args.target or [EMBEDDED_DEFAULT]:
                lm = load_model(spec, device=args.device, progress=_progress_printer())
                rows += profile_table(lm, backends, threads, refresh=args.refresh, progress=_progress_printer())
        if args.export:
            n = export_profiles(args.export, rows, args.as_name)
            print(f"wrote {n} profile{'s' * (n != 1)} to {args.export}", file=sys.stderr)
        if args.json:
            print(json.dumps(rows))
        elif not (args.export and not args.target):  # exporting what is cached: the line above says it all
            for row in rows:
                _print_profile(row, CONTEXT)
        return 0

    pr.set_defaults(func=cmd_profile)


def _add_train(sub) -> None:
    add_train_parsers(sub, _int_in)


def _print_profile(row: dict[str, Any], context: int) -> None:
    """One profile as `workbench profile` prints it: what it was measured on and when, then n, ms, spread, ratio."""
    prof, spread = row["seconds"], row.get("spread") or {}
    base = prof[min(prof)]
    where = f"{row['name']}: " if row.get("imported") else ""
    when = f"measured {row['measured_at']}" if row.get("measured_at") else "undated (measured by an older version)"
    rounds = f"median of {row['rounds']} rounds" if row.get("rounds") else "median"
    threads = f"{row['threads']} thread{'s' * (row['threads'] != 1)}"
    print(f"\n{where}{row['model']} on {row['device'] or '?'} ({row['cpu']}), backend {row['backend']}, "
          f"{threads}: one forward over n new tokens after {context} cached, {rounds}, {when}")
    if row.get("kernels"):
        print(f"  linear kernels: {row['kernels']} (workbench kernel for those row counts, ATen otherwise)")
    for flag, text in (("stale", f"STALE ({row.get('stale')}): measured again by the next cost-aware run"),
                       ("noisy", "NOISY: its repeats disagree (see the spread)")):
        if row.get(flag):
            print(f"  {text}")
    print(f"{'n':>4} {'ms':>9} {'spread':>7} {'x one token':>12} {'ms/token':>9}")
    for n, t in sorted(prof.items()):
        sp = f"{100 * spread[n]:.0f}%" if n in spread else "?"
        print(f"{n:>4} {t * 1000:>9.1f} {sp:>7} {t / base:>12.2f} {t * 1000 / n:>9.2f}")


_EXTRA_COMMANDS = [_add_ui, _add_bench, _add_profile, _add_train, add_advise_parser]


@contextlib.contextmanager
def _store_env(db: str | None):
    """With --db, that store is the default one for the command: what reads "the run store" without
    being handed one (sam's corpus=history) reads the store the command logs to."""
    if not db:
        yield
        return
    before = os.environ.get("WORKBENCH_DB")
    os.environ["WORKBENCH_DB"] = db
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WORKBENCH_DB", None)
        else:
            os.environ["WORKBENCH_DB"] = before


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("WORKBENCH_DEBUG") == "1"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        if getattr(args, "kernels", None):
            set_mode(args.kernels)  # this process's CPU linear kernels (workbench.kernels)
        with _store_env(getattr(args, "db", None)):
            return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, ModelError, StoreError) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failed run: one line, the run is recorded as failed
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
