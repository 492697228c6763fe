"""`workbench train` and `workbench heads`: train a drafter on the target's own outputs; list trained heads;
import published heads and export the workbench's (`heads import`, `heads export`: workbench.heads.porting)."""
from __future__ import annotations

import json
import sys

from .config import HEAD_KINDS, TRAINING_KINDS
from .train_config import TrainConfig


def add_train_parsers(sub, int_in) -> None:
    d = TrainConfig(kind="eagle")
    t = sub.add_parser("train", help="train an EAGLE/Medusa/Hydra head or a distilled draft model by self-distillation")
    t.add_argument("--kind", required=True, choices=TRAINING_KINDS)
    t.add_argument("--target", "-t", default=d.target, help=f"target model spec (default: {d.target})")
    t.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help="prompts, one JSON object per line with 'prompt' or chat 'messages' "
                        "(default: the project's own training set, workbench/suites/train_prompts.jsonl)")
    t.add_argument("--samples", type=int_in(1), default=d.samples, help=f"responses to generate (default {d.samples})")
    t.add_argument("--self-prompts", type=int_in(0), default=d.self_prompts, metavar="N",
                   help="the target also writes N instructions of its own (Magpie) and answers each once "
                        "(a chat model; default 0)")
    t.add_argument("--max-new-tokens", type=int_in(1), default=d.max_new_tokens)
    t.add_argument("--steps", type=int_in(1), default=d.steps, help=f"optimiser steps (default {d.steps})")
    t.add_argument("--batch-size", type=int_in(1), default=d.batch_size, help="sequences per step")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 5e-4 for eagle, 1e-3 otherwise)")
    t.add_argument("--heads", "--block", type=int_in(1, 16), default=d.heads, dest="heads",
                   help="medusa/hydra: heads (draft positions); dflash, pard: tokens drafted per forward (the block)")
    t.add_argument("--layers", "--draft-layers", type=int_in(1, 64), default=d.layers, dest="layers",
                   help="draft: decoder layers kept; dflash, pard: the drafter's decoder layers")
    t.add_argument("--from", "--init-from", dest="init_from", default=None, metavar="DRAFT_DIR",
                   help="pard: start from this distilled draft model's layers (`train --kind draft` writes one; "
                        "default: the target's evenly spaced layers)")
    t.add_argument("--vocab-trim", type=int_in(0), default=d.vocab_trim,
                   help="restrict the drafter to the k tokens the target produced most often (0: full vocabulary)")
    t.add_argument("--feature-weight", type=float, default=d.feature_weight,
                   help="eagle: weight of the feature-regression loss")
    t.add_argument("--token-weight", type=float, default=d.token_weight, help="eagle: weight of the token loss")
    t.add_argument("--unroll", type=int_in(1, 8), default=None,
                   help="eagle, eagle3: draft positions trained; each after the first reads the head's own previous "
                        "prediction, as drafting does (default 1 for eagle, 3 for eagle3 (its training-time test); "
                        "1: teacher-forced only)")
    t.add_argument("--fuse", action="store_true",
                   help="heads: also read a low and a middle layer's outputs, fused with the final hidden states as "
                        "EAGLE-3 does (default: the final hidden states alone)")
    t.add_argument("--gen-batch", type=int_in(1), default=d.gen_batch, help="prompts generated per batch")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=None)
    t.add_argument("--out", default=None, help="output directory (default: the user heads dir, <target>-<kind>)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted training in --out")
    t.add_argument("--no-log", action="store_true", help="do not record the training in the store")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")

    def cmd_train(args) -> int:
        from .train import train  # here: loads torch, which the CLI's parsers must not

        cfg = TrainConfig(kind=args.kind, target=args.target, prompts=args.prompts, samples=args.samples,
                          self_prompts=args.self_prompts,
                          max_new_tokens=args.max_new_tokens, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, feature_weight=args.feature_weight, token_weight=args.token_weight,
                          unroll=args.unroll, fuse=args.fuse,
                          heads=args.heads, layers=args.layers, init_from=args.init_from, vocab_trim=args.vocab_trim,
                          gen_batch=args.gen_batch, seed=args.seed, device=args.device, out=args.out,
                          resume=args.resume, store=not args.no_log)
        res = train(cfg, db=args.db)
        if args.json:
            print(json.dumps({"out_dir": res.out_dir, "training_id": res.training_id, "accuracy": res.accuracy,
                              "timings": res.timings}))
            return 0
        acc = res.accuracy
        print(f"{args.kind} drafter for {args.target} saved to {res.out_dir}")
        print("held-out top-1 per position: " + ", ".join(f"{a:.3f}" for a in acc.get("top1", []) if a is not None))
        print("held-out top-5 per position: " + ", ".join(f"{a:.3f}" for a in acc.get("top5", []) if a is not None))
        serving = acc.get("serving")
        if serving:
            print(f"serving on {serving['prompts']} held-out prompts: tau {serving['tau']}, alpha by position "
                  + ", ".join(f"{a:.2f}" for a in serving["alpha_by_position"] if a is not None))
        print("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in res.timings.items()))
        if args.kind == "draft":
            print(f"use it as a draft model: --draft {res.out_dir}")
        else:
            print(f"use it: workbench run --method {args.kind} --target {args.target} --param head={res.out_dir}")
        return 0

    t.set_defaults(func=cmd_train)

    h = sub.add_parser("heads", help="list drafter heads (yours, imported and shipped) with their accuracy; "
                                     "import or export one")
    h.add_argument("--kind", default=None, choices=HEAD_KINDS)
    h.add_argument("--json", action="store_true")

    def cmd_heads(args) -> int:
        from .heads import list_heads  # here: loads torch, which the CLI's parsers must not

        rows = list_heads(args.kind)
        if args.json:
            print(json.dumps(rows))
            return 0
        if not rows:
            print("no heads yet; train one: workbench train --kind eagle --target smollm2-135m", file=sys.stderr)
            return 0
        print(f"{'name':<28} {'kind':<7} {'target':<16} {'origin':<20} {'params':>9} {'trim':>6} {'samples':>7} "
              f"{'fused':>6}  top-1")
        for r in rows:
            top1 = ", ".join(f"{a:.2f}" for a in (r["top1"] or []) if a is not None)
            fused = ",".join(map(str, r["feature_layers"] or r.get("aux_layers") or [])) or "-"
            origin = f"imported ({r['format']})" if r.get("format") else r["origin"]
            print(f"{r['name']:<28} {r['kind']:<7} {str(r['target']):<16} {origin:<20} {r['params'] or 0:>9} "
                  f"{r['vocab_trim'] or '-':>6} {r['samples'] or '-':>7} {fused:>6}  {top1}")
        return 0

    h.set_defaults(func=cmd_heads)
    hs = h.add_subparsers(dest="heads_command", metavar="{import,export}")

    hi = hs.add_parser("import", help="import a published EAGLE-1/2, EAGLE-3, speculators or Medusa-1 head")
    hi.add_argument("source", help="a local directory or a hub id (owner/name)")
    hi.add_argument("--target", "-t", required=True, help="the target model spec the head drafts for")
    hi.add_argument("--name", default=None, help="the head's name (default: <target>-<kind>-<source name>)")
    hi.add_argument("--device", default=None)

    def cmd_import(args) -> int:
        from .heads.porting import import_head  # here: loads torch, which the CLI's parsers must not
        from .heads import read_card
        from .models import load_model

        target = load_model(args.target, device=args.device)
        path = import_head(args.source, target, args.name)
        card = read_card(path)
        print(f"imported {card['origin']['format']} head from {args.source} as {path.name} ({card['kind']}, "
              f"{card['params']} parameters) in {path.parent}")
        print(f"use it: workbench run --method {card['kind']} --target {args.target} --param head={path.name}")
        return 0

    hi.set_defaults(func=cmd_import)

    he = hs.add_parser("export", help="write a head in a published layout (vLLM/SGLang, the reference repositories)")
    he.add_argument("name", help="a head name (see `workbench heads`) or directory")
    he.add_argument("--format", required=True, choices=("speculators", "eagle3", "eagle", "medusa"))
    he.add_argument("out", help="the new output directory")

    def cmd_export(args) -> int:
        from .heads import find_head, read_card
        from .heads.porting import export_head  # here: loads torch, which the CLI's parsers must not

        def lm_head():  # a Medusa head trained here shares the target's LM head; the layout copies it per head
            from .models import load_model

            spec = read_card(find_head(args.name, None, "medusa"))["target"].get("spec")
            return load_model(spec).model.get_output_embeddings().weight

        out = export_head(args.name, args.format, args.out, lm_head=lm_head)
        print(f"wrote {args.name} as {args.format} to {out} (config.json, weights, README.md)")
        return 0

    he.set_defaults(func=cmd_export)
