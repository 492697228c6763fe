"""`workbench advise`: which decoding method to use for a target on this machine, and why; or show / list
stored advice."""
from __future__ import annotations

import argparse
import json
import sys

from store import RunStore

from .backend import add_backend_argument
from .config import ConfigError

EPILOG = """examples:
  workbench advise                                        # the embedded model, the built-in suite, 5 minutes
  workbench advise --draft smollm2-135m:int8 --category summarization --budget 10m
  workbench advise --target tiny-random --prompt "Hello there" --prompt "Count to ten" --budget 30s
  workbench advise --what-if gpu-box.json                 # also rank the methods on a colleague's machine
  workbench advise --drafters                             # what the workbench finds that fits the target
  workbench advise --list
  workbench advise --show ADVICE_ID
"""


def add_advise_parser(sub) -> None:
    """Register `workbench advise` on the CLI's subparsers object."""
    a = sub.add_parser("advise", help="which decoding method to use for a target here, measured and explained",
                       description="Probe every applicable method on part of your prompts, predict each one's "
                                   "speedup from the measurements and this machine's cost profile, verify the top "
                                   "few against plain decoding on the other prompts, and explain the answer. "
                                   "See docs/advisor.md.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--target", "-t", default=None, help="target model spec (default: smollm2-135m)")
    a.add_argument("--draft", "-d", action="append", default=[], metavar="SPEC",
                   help="a draft model at hand (repeatable), e.g. smollm2-135m:int8")
    a.add_argument("--head", action="append", default=[], metavar="NAME|DIR",
                   help="a trained head to use (repeatable; default: every kind's default head for the target)")
    a.add_argument("--methods", default=None, help="comma-separated methods to consider (default: every one "
                                                   "that applies)")
    prompts = a.add_mutually_exclusive_group()
    prompts.add_argument("--suite", default=None, help="'builtin' (default) or a question.jsonl file")
    prompts.add_argument("--prompt", "-p", action="append", default=None, metavar="TEXT",
                         help="a prompt of your own (repeatable; at least two: one is probed, one verifies)")
    a.add_argument("--category", default=None, help="only this category of the suite")
    a.add_argument("--budget", default="5m", help="time for the whole advice, e.g. 90s, 5m, 1m30s (default 5m)")
    add_backend_argument(a)
    a.add_argument("--top", type=int, default=3, help="configurations verified against plain decoding (default 3)")
    a.add_argument("--max-new-tokens", "-n", type=int, default=128,
                   help="the most new tokens a verification run decodes (default 128)")
    a.add_argument("--what-if", action="append", default=[], metavar="FILE",
                   help="a cost-profile export of another machine (`workbench profile --export`): also rank the "
                        "methods there, with the acceptance measured here (repeatable)")
    a.add_argument("--profile", action="append", default=[], metavar="NAME",
                   help="a machine whose profiles were imported here (`workbench profile --import`), as --what-if")
    a.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    a.add_argument("--drafters", action="store_true", help="list the drafters that fit the target, then stop")
    a.add_argument("--show", metavar="ADVICE_ID", help="print a stored advice (no decoding)")
    a.add_argument("--list", action="store_true", help="list stored advice")
    a.add_argument("--json", action="store_true", help="print the advice as one JSON object")
    a.set_defaults(func=cmd_advise)


def _store(args):
    return RunStore(getattr(args, "db", None))  # None: $WORKBENCH_DB or the user data dir


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_advise(args) -> int:
    # here: the advisor loads torch (models, the benchmark runner); the CLI's parsers must not
    from .advisor.report import advice_text, list_rows

    if args.list:
        return _list(args, list_rows)
    if args.show:
        advice = _store(args).get_advice(args.show)
    else:
        from .advisor import AdviceRequest, advise  # loads torch: only for an advice that decodes
        from .models import EMBEDDED_DEFAULT

        if args.category and args.prompt:
            raise ConfigError("give --prompt, or --suite and/or --category, not both")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        req = AdviceRequest(target=args.target or EMBEDDED_DEFAULT, drafts=args.draft, heads=args.head,
                            methods=methods, suite=args.suite, category=args.category, prompts=args.prompt,
                            budget_s=args.budget, backend=args.backend, top=args.top,
                            max_new_tokens=args.max_new_tokens, what_if=args.what_if, profiles=args.profile,
                            device=args.device).check()
        if args.drafters:
            return _drafters(req, args)
        advice = advise(req, _store(args), progress=_say)
    if args.json:
        print(json.dumps(advice))
    else:
        print(advice_text(advice))
    return 0


def _drafters(req, args) -> int:
    """What fits the target: the methods that need nothing, its heads, draft models that would fit."""
    from .advisor import candidate_methods, draft_suggestions
    from .advisor.configs import find_drafters, kind_of
    from .models import load_model

    tgt = load_model(req.target, device=req.device)
    drafts = [load_model(d, device=req.device) for d in req.drafts]
    found = find_drafters(tgt, drafts, req.heads)
    out = {"target": tgt.spec,
           "no_draft_model": [m for m in candidate_methods() if kind_of(m) == "no draft model"],
           "heads": found.heads, "missing_heads": found.notes,
           "drafts_given": [d.spec for d in drafts], "draft_suggestions": draft_suggestions(tgt.spec)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"drafters for {tgt.spec}:")
    print(f"  without a draft model: {', '.join(out['no_draft_model'])}")
    print("  trained heads: " + (", ".join(f"{k} ({v or 'default'})" for k, v in found.heads.items()) or "none"))
    for note in found.notes:
        print(f"    {note}")
    print(f"  draft models given: {', '.join(out['drafts_given']) or 'none'}; any of "
          f"{', '.join(out['draft_suggestions'])} fits (add --draft SPEC)")
    return 0


def _list(args, list_rows) -> int:
    rows = list_rows(_store(args).list_advice())
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no advice recorded yet: try `workbench advise --target tiny-random --budget 30s`")
        return 0
    print(f"{'id':<10} {'created':<19} {'status':<11} {'target':<20} {'recommended':<28} {'measured':>8}")
    for r in rows:
        m = "-" if r["measured"] is None else f"{r['measured']:.2f}x"
        print(f"{r['id'][:8]:<10} {r['created']:<19} {r['status']:<11} {r['target'][:20]:<20} "
              f"{r['recommended'][:28]:<28} {m:>8}")
    return 0
