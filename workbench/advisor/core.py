"""`advise`: which decoding method to use for a target on this machine, measured, predicted, verified, explained.

The phases, each announced on `progress` and timed against the budget:
1. check the request (nothing loads on bad input), read the prompts and split them (prompts.py), read the
   what-if profiles (whatif.py);
2. load the target and the drafts, list what applies (configs.py), keep the prompts that fit the context;
3. read (or measure, once per machine) this machine's cost profiles of the target and each draft on the
   backend (workbench.backend.profile.CostModel);
4. plan the probe within the budget (budget.py) and record the advice ``running`` in the store;
5. probe: every configuration once on the probe prompts, a few dozen tokens (probe.py);
6. size the verification from the probe's measured speeds and the budget left; predict every
   configuration's speedup at the verification's length, with an interval, here, with verification as
   flat as a GPU's, and on each what-if machine (predict.py); rank;
7. verify: the top few and plain decoding, interleaved, on the other prompts; predicted against measured,
   per configuration and category;
8. explain (explain.py) and store the result with the command that reproduces it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ..backend.profile import CostModel
from ..bench.report import ALL, benchmark_report
from ..bench.runner import prompt_bounds
from ..bench.suites import prompt_units
from ..config import BASELINE, ConfigError
from ..models import load_model
from ..preflight import check_fits
from ..record import environment
from . import budget as B
from . import explain as X
from . import probe
from .configs import AdviceError, Config, configurations, find_drafters, kind_of
from .predict import Probed, interval, measure, predict, profile_ratios
from .prompts import PromptSet, keep_questions, prompt_set
from .request import AdviceRequest
from .whatif import WhatIf, from_file, imported

Progress = Callable[[str], None]
# A configuration is recommended over plain decoding only when its verification measured it this much faster:
# a smaller difference is within a busy machine's run-to-run noise
MIN_GAIN = 1.03


def advise(req: AdviceRequest, store, progress: Progress | None = None, costs: CostModel | None = None,
           clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run an advice (see the module docstring) and return it as stored (store.advice.advice_dict).

    costs: this machine's cost profiles (None: the measured, cached ones); a test hands in a stand-in.
    AdviceError / ConfigError (one line) before anything is recorded when the advice cannot be given."""
    say = progress or (lambda _msg: None)
    t0 = clock()
    req.check()
    prompts = prompt_set(req.suite, req.category, req.prompts)
    what_ifs = [from_file(p, req.target, req.backend) for p in req.what_if]
    what_ifs += [imported(n, req.target, req.backend) for n in req.profiles]

    say(f"advise: loading {req.target}" + (f" and {', '.join(req.drafts)}" if req.drafts else "") + "...")
    tgt = load_model(req.target, device=req.device, progress=say)
    drafts = [load_model(d, device=req.device, progress=say) for d in req.drafts]
    drafters = find_drafters(tgt, drafts, req.heads)
    configs, missing = configurations(tgt, drafters, req.methods)
    bounds = _bounds(tgt, prompts, req)
    prompts, skipped = _fitting(prompts, bounds, tgt, drafts, req)
    t_load = clock() - t0

    say(f"advise: this machine's cost profiles on {req.backend} (measured once per machine, then cached)...")
    costs = costs or CostModel(progress=say)
    used = sorted({c.draft for c in configs if c.draft})
    est = B.Costs(target=_profile(costs, tgt, req.backend),
                  drafts={d.spec: _profile(costs, d, req.backend) for d in drafts if d.spec in used})
    t_profile = clock() - t0 - t_load

    spent = clock() - t0
    plan = B.plan_probe(configs, [hi for q in prompts.probe_ids for hi in bounds[q]],
                        [hi for q in prompts.verify_ids for hi in bounds[q]], req.top, est, req.budget_s - spent,
                        spent, req.max_new_tokens)
    notes = skipped + [f"not applicable: {n}" for n in drafters.notes]
    for why in dict.fromkeys(why for m, why in missing.items() if kind_of(m) == "draft model"):
        these = [m for m, w in missing.items() if w == why]
        notes.append(f"not applicable: {', '.join(these)} ({'they need' if len(these) > 1 else 'it needs'} {why})")
    if plan.left_out:
        notes.insert(0, f"left out of the probe to fit the budget: {', '.join(c.label for c in plan.left_out)}")
    command = req.command()
    result: dict[str, Any] = {"target": tgt.spec, "backend": req.backend, "split": prompts.to_dict(),
                              "profile": {"target": _json_profile(est.target),
                                          "drafts": {k: _json_profile(v) for k, v in est.drafts.items()}},
                              "ceiling": X.ceiling(est.target), "what_ifs": [w.to_dict() for w in what_ifs],
                              "notes": notes, "configs": [], "budget_s": req.budget_s}
    advice_id = store.start_advice(target=tgt.spec, backend=req.backend, request=req.to_dict(), command=command,
                                   env=environment(tgt))
    say(f"advise: advice {advice_id} | probing {len(plan.configs)} configurations on {len(prompts.probe)} prompts, "
        f"{plan.tokens} tokens each (estimated {B.fmt_duration(plan.estimate_s)} of a "
        f"{B.fmt_duration(req.budget_s)} budget)")
    try:
        result["timings"] = {"load_s": t_load, "profile_s": t_profile}
        _run(store, advice_id, req, prompts, plan, est, what_ifs, result, say, clock, t0)
        store.finish_advice(advice_id, result=result)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        store.finish_advice(advice_id, status="interrupted" if interrupted else "failed",
                            error=f"{type(exc).__name__}: {exc}", result=result)
        raise
    return store.get_advice(advice_id)


def _run(store, advice_id: str, req: AdviceRequest, prompts: PromptSet, plan: B.ProbePlan, est: B.Costs,
         what_ifs: list[WhatIf], result: dict[str, Any], say: Progress, clock, t0: float) -> None:
    """Phases 5-8 (see the module docstring), filling `result` as they go."""
    t_probe0 = clock()
    probe_id = probe.run(store, probe.bench_config(req.target, plan.configs, prompts, prompts.probe_ids,
                                                   plan.tokens, 1, req.backend, req.device), say)
    store.update_advice(advice_id, probe_benchmark_id=probe_id)
    samples = probe.read_samples(store, probe_id)
    base = samples.get(BASELINE, [])
    probed = {c.label: Probed(samples.get(c.label, []), base) for c in plan.configs}
    t_probe = clock() - t_probe0

    # ---- size the verification from what the probe measured, then predict at its length
    ranked_guess = sorted(plan.configs, key=lambda c: -_quick(probed[c.label], est))[:req.top]
    measured = [measure(base)] + [probed[c.label].measured()[0] for c in ranked_guess]
    left = req.budget_s - (clock() - t0)
    vplan = B.plan_verification(measured, len(prompt_units(prompts.verify)), left, plan.tokens, req.max_new_tokens)
    here = profile_ratios(est.target)
    categories = list(dict.fromkeys(q.category for q in prompts.verify))
    for c in plan.configs:
        result["configs"].append(_predictions(c, probed[c.label], here, vplan.tokens, categories, what_ifs))
    order = X.ranked({r["label"]: r["predicted"]["speedup"] for r in result["configs"]})
    for i, label in enumerate(order, 1):
        _row(result, label)["rank"] = i
    result["configs"].sort(key=lambda r: r["rank"])
    result["probe"] = {"benchmark_id": probe_id, "tokens": plan.tokens, "estimate_s": plan.estimate_s,
                       "baseline_run_ids": [s.run_id for s in base]}
    result["timings"]["probe_s"] = t_probe
    store.update_advice(advice_id, result=result)

    # ---- verify the top few on the other prompts
    top = [c for c in plan.configs if c.label in order[:req.top]]
    top.sort(key=lambda c: order.index(c.label))
    say(f"advise: verifying {', '.join(c.label for c in top)} against plain decoding on {len(prompts.verify)} other "
        f"prompts, {vplan.tokens} tokens x {vplan.repeats} repeat{'s' * (vplan.repeats != 1)} (estimated "
        f"{B.fmt_duration(vplan.estimate_s)}, {B.fmt_duration(max(left, 0))} left)")
    if not vplan.fits:
        result["notes"].append(f"the verification needs about {B.fmt_duration(vplan.estimate_s)} but only "
                               f"{B.fmt_duration(max(left, 0))} of the budget was left: it runs at its smallest")
    t_verify0 = clock()
    verify_id = probe.run(store, probe.bench_config(req.target, top, prompts, prompts.verify_ids, vplan.tokens,
                                                    vplan.repeats, req.backend, req.device), say)
    store.update_advice(advice_id, verify_benchmark_id=verify_id)
    report = benchmark_report(store, verify_id)
    result["verification"] = _verification(result, report, top, vplan)
    result["timings"].update(verify_s=clock() - t_verify0, total_s=clock() - t0, budget_s=req.budget_s)
    result["explanation"] = _explanation(result, req, est)
    result["recommended"] = result["verification"]["recommended"]


def _fitting(prompts: PromptSet, bounds: dict[str, list[int]], tgt, drafts: list,
             req: AdviceRequest) -> tuple[PromptSet, list[str]]:
    """The prompts whose every turn, with the verification's new tokens, fits every model (preflight.check_fits);
    notes on those left out; AdviceError when too few are left to probe on some and verify on others."""
    keep, why = set(), {}
    for q in prompts.questions:
        try:
            for most in bounds[q.key]:
                for lm in [tgt] + drafts:
                    check_fits(lm, most, req.max_new_tokens)
            keep.add(q.key)
        except ConfigError as exc:
            why[q.key] = str(exc)
    if not why:
        return prompts, []
    notes = [f"prompt {k} left out, too long for the context: {w}" for k, w in why.items()]
    try:
        return keep_questions(prompts, keep), notes
    except AdviceError:
        first = next(iter(why.values()))
        raise AdviceError(f"prompts too long for the context: {len(why)} of {len(prompts.questions)} prompts do not "
                          f"fit with {req.max_new_tokens} new tokens (e.g. {first}), which leaves too few to probe "
                          f"on some and verify on others; shorten them, lower --max-new-tokens, or give more") from None


def _bounds(tgt, prompts: PromptSet, req: AdviceRequest) -> dict[str, list[int]]:
    """Question id -> the most tokens each of its turns' prompts may hold (a later turn holds earlier answers)."""
    cfg = probe.bench_config(tgt.spec, [], prompts, prompts.verify_ids, req.max_new_tokens, 1, req.backend,
                             req.device)
    units = prompt_units(prompts.questions)
    out: dict[str, list[int]] = {}
    for unit, (_, most) in zip(units, prompt_bounds(cfg, tgt, units)):
        out.setdefault(unit.question.key, []).append(most)
    return out


def _profile(costs: CostModel, lm, backend: str) -> dict[int, float]:
    try:
        profile = dict(costs.profile(lm, backend))
    except ConfigError as exc:  # already says what to do (a machine too busy to measure, ...)
        raise AdviceError(f"cannot profile {lm.spec} on the {backend} backend here: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure to measure is the one message below
        hint = "try --backend eager, or another target" if backend != "eager" else "try another target"
        raise AdviceError(f"cannot profile {lm.spec} on the {backend} backend here ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}); the advice needs this machine's cost of a forward "
                          f"over n tokens: {hint}") from None
    if not profile or any(not (t > 0) for t in profile.values()):
        raise AdviceError(f"cannot profile {lm.spec} on the {backend} backend here: its cost profile is empty or "
                          f"not positive ({profile}); measure it again with `workbench profile --refresh`")
    return profile


def _json_profile(p: dict[int, float]) -> dict[str, float]:
    return {str(n): t for n, t in sorted(p.items())}


def _quick(p: Probed, est: B.Costs) -> float:
    """A configuration's predicted speedup at a nominal length, to pick who is verified when sizing it."""
    m, base = p.measured()
    here = profile_ratios(est.target)
    return predict(m, base, here, here, B.MAX_VERIFY_TOKENS).speedup if p.samples else float("-inf")


def _predictions(c: Config, p: Probed, here, tokens: int, categories: list[str],
                 what_ifs: list[WhatIf]) -> dict[str, Any]:
    """Everything the advice says about one configuration, from its probe runs."""
    m, base = p.measured()
    pred = predict(m, base, here, here, tokens)
    lo, hi = interval(p, here, here, tokens)
    lim = X.Limits(pred, predict(m, base, here, here, tokens, perfect=True).speedup,
                   predict(m, base, here, here, tokens, free_draft=True).speedup,
                   predict(m, base, here, here, tokens, flat_verify=True).speedup, drafted=m.mean_depth > 0)
    by_cat = {}
    for cat in categories:
        sub = p.select(cat)
        if not sub.keys:
            sub = p  # no probe prompt in this category: the overall measurements
        sm, sb = sub.measured()
        clo, chi = interval(sub, here, here, tokens)
        by_cat[cat] = {"speedup": predict(sm, sb, here, here, tokens).speedup, "low": clo, "high": chi,
                       "from": cat if sub is not p else ALL}
    return {**c.to_dict(), "run_ids": [s.run_id for s in p.samples],
            "measured": {"alphas": m.alphas, "tau": m.tau, "tokens_per_step": m.tokens_per_step,
                         "mean_depth": m.mean_depth, "mean_nodes": m.mean_nodes, "draft_s": m.draft_s,
                         "verify_s": m.verify_s, "other_s": m.other_s, "fixed_s": m.fixed_s, "steps": m.steps,
                         "draft_per_token": pred.draft / m.mean_nodes if m.mean_nodes else None,
                         "verify_x": m.verify_s / base.verify_s if base.verify_s > 0 else None,
                         "plain_verify_s": base.verify_s, "plain_other_s": base.other_s,
                         "plain_fixed_s": base.fixed_s},
            "predicted": {**pred.to_dict(), "low": lo, "high": hi}, "by_category": by_cat,
            "limits": {**lim.to_dict(), "line": X.limit_line(c.label, lim, m, base.verify_s)},
            "flat_verification": lim.flat_verification,
            "what_if": {w.name: predict(m, base, profile_ratios(w.seconds), here, tokens).speedup for w in what_ifs}}


def _row(result: dict[str, Any], label: str) -> dict[str, Any]:
    return next(r for r in result["configs"] if r["label"] == label)


def _verification(result: dict[str, Any], report, top: list[Config], vplan: B.VerifyPlan) -> dict[str, Any]:
    """Predicted against measured, per configuration and category; the recommendation."""
    rows = []
    for c in top:
        mine = _row(result, c.label)
        for r in report.rows:
            if r["arm"] != c.label:
                continue
            pred = mine["predicted"] if r["category"] == ALL else mine["by_category"].get(r["category"], {})
            p, m = pred.get("speedup", float("nan")), r["speedup"]
            rows.append({"label": c.label, "category": r["category"], "predicted": p, "low": pred.get("low"),
                         "high": pred.get("high"), "measured": m, "tokens_per_s": r["tokens_per_s"],
                         "tau": r["tau"], "error_pct": (p / m - 1) * 100 if m == m and m > 0 else float("nan")})
    overall = {r["label"]: r["measured"] for r in rows if r["category"] == ALL}
    best = X.ranked(overall)[0] if overall else None
    recommended = best if best is not None and overall[best] > MIN_GAIN else BASELINE
    predicted_best = top[0].label if top else None
    return {"benchmark_id": report.id, "tokens": vplan.tokens, "repeats": vplan.repeats,
            "estimate_s": vplan.estimate_s, "rows": rows, "best_measured": best, "predicted_best": predicted_best,
            "predicted_best_vs_best_pct": ((overall[predicted_best] / overall[best] - 1) * 100
                                           if best and predicted_best in overall else float("nan")),
            "recommended": recommended}


def _explanation(result: dict[str, Any], req: AdviceRequest, est: B.Costs) -> list[str]:
    """The lines the CLI and the app show (explain.py), in numbers."""
    v = result["verification"]
    rows = {r["label"]: r for r in v["rows"] if r["category"] == ALL}
    lines = []
    rec = v["recommended"]
    if rec == BASELINE:
        best = v["best_measured"]
        lines.append(f"Recommended: plain decoding ({BASELINE}). None of the top {len(rows)} beat it in the "
                     f"verification" + (f" (best: {best}, {rows[best]['measured']:.2f}x)." if best else "."))
    else:
        r, c = rows[rec], _row(result, rec)
        lines.append(f"Recommended: {rec}, measured {r['measured']:.2f}x plain decoding on the verification prompts "
                     f"(predicted {c['predicted']['speedup']:.2f}x, 90% interval {c['predicted']['low']:.2f}-"
                     f"{c['predicted']['high']:.2f}x; rank {c['rank']} of {len(result['configs'])} predicted).")
    lines.append(X.ceiling_line(result["ceiling"], req.backend))
    seen: set[str] = set()
    for c in result["configs"]:  # best first: one line per method, for its best configuration
        if c["method"] not in seen:
            seen.add(c["method"])
            lines.append(c["limits"]["line"])
    here = {c["label"]: c["predicted"]["speedup"] for c in result["configs"]}
    flat_v = {c["label"]: c["flat_verification"] for c in result["configs"]}
    whatifs = {w["name"]: {c["label"]: c["what_if"][w["name"]] for c in result["configs"]}
               for w in result["what_ifs"]}
    lines += X.change_lines(here, flat_v, whatifs)
    t = result["timings"]
    lines.append(f"Took {B.fmt_duration(t['total_s'])} of a {B.fmt_duration(req.budget_s)} budget (models and "
                 f"profiles {B.fmt_duration(t.get('load_s', 0) + t.get('profile_s', 0))}, probe "
                 f"{B.fmt_duration(t['probe_s'])}, verification {B.fmt_duration(t['verify_s'])}).")
    return lines

