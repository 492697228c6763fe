"""The advisor (`workbench advise`): its prediction against hand-computed answers, the probe/verification
split, what-if machines, the edge cases' one-line messages, and an advice on the tiny model end to end,
stored and read back."""
from __future__ import annotations

import json
import random

import pytest

from store import RunStore
from workbench import metrics as M
from workbench.advisor import budget as B
from workbench.advisor.configs import AdviceError, Config
from workbench.advisor.core import advise
from workbench.advisor.explain import Limits, ceiling
from workbench.advisor.predict import Probed, Sample, flat, interval, measure, predict, profile_ratios
from workbench.advisor.probe import read_samples
from workbench.advisor.prompts import split
from workbench.advisor.request import AdviceRequest
from workbench.advisor.whatif import from_file
from workbench.backend.profile import PROFILE_SIZES, CostModel
from workbench.backend.profile_files import FORMAT
from workbench.bench.suites import Question, load_suite
from workbench.trace import Step

from .helpers import run_cli

# A CPU-like machine: a forward over n tokens costs 1 + 0.5 (n - 1) one-token forwards.
STEEP = {n: 1.0 + 0.5 * (n - 1) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 64)}
GPU = {n: 1.0 for n in STEEP}


def _step(depth: int, accepted: int, draft_s: float = 0.0, verify_s: float = 0.01, other_s: float = 0.0) -> Step:
    """A decode step drafting a chain `depth` deep of which the first `accepted` tokens were accepted."""
    return Step(index=1, kind="decode", tokens=list(range(depth)), parents=list(range(-1, depth - 1)),
                accepted=list(range(accepted)), committed=[0] * (accepted + 1), draft_s=draft_s, verify_s=verify_s,
                total_s=draft_s + verify_s + other_s)


def _sample(steps: list[Step], prompt: str = "1.1", category: str = "qa", prefill_s: float = 0.02,
            prompt_tokens: int = 5) -> Sample:
    return Sample(prompt=prompt, category=category, steps=steps, prefill_s=prefill_s, prompt_tokens=prompt_tokens)


def _plain(prompt: str = "1.1", category: str = "qa") -> Sample:
    return _sample([_step(0, 0) for _ in range(4)], prompt, category)  # u = 0.01 s, no overhead


# ---------------------------------------------------------------- the prediction, by hand


def test_expected_tokens_and_ceiling_by_hand():
    assert M.expected_tokens_per_step([0.5, 0.5], 2) == pytest.approx(1.75)
    assert M.expected_tokens_per_step([0.5, 0.5], 0) == 1.0
    assert M.expected_tokens_per_step([0.5], 3) == pytest.approx(1.5)  # an unmeasured position counts as rejected
    assert M.expected_tokens_per_step([1.0, float("nan")], 2) == pytest.approx(2.0)
    # n / t(n) = 2n / (n + 1) rises with n: the perfect drafter drafts as deep as the profile goes
    assert M.verification_ceiling({1: 1.0, 2: 1.5, 4: 2.5, 8: 4.5}) == (7, pytest.approx(16 / 9))
    assert M.verification_ceiling({1: 1.0, 2: 2.5}) == (0, 1.0)  # two tokens cost more than two forwards
    assert ceiling(GPU)["speedup"] == 64 and ceiling(GPU)["k"] == 63
    assert M.predicted_speedup(11, 2.0, 1.0, 0.0, 1.0, 0.0) == pytest.approx(2.0)


def test_prediction_matches_hand_computed_values():
    """A chain of γ = 2 with α_1 = α_2 = 0.5 (accepted 0, 0, 1, 2 of 2), drafting 0.4 and overhead 0.1 plain
    forwards a step, on the steep profile (r(3) = 2): E = 1.75, C = 0.4 + 2 + 0.1 = 2.5, F = F0 = 2, C0 = 1."""
    cfg = measure([_sample([_step(2, a, draft_s=0.004, other_s=0.001) for a in (0, 0, 1, 2)])])
    base = measure([_plain()])
    assert cfg.alphas == [0.5, 0.5] and cfg.tokens_per_step == pytest.approx(1.75) == cfg.tau
    steep = profile_ratios(STEEP)
    p = predict(cfg, base, steep, steep, 11)
    assert (p.draft, p.verify, p.overhead, p.step_cost) == pytest.approx((0.4, 2.0, 0.1, 2.5))
    assert (p.fixed, p.plain_fixed, p.plain_step_cost) == pytest.approx((2.0, 2.0, 1.0))
    assert p.speedup == pytest.approx(12 / (2 + 10 * 2.5 / 1.75))  # 0.7368
    assert predict(cfg, base, steep, steep, 11, perfect=True).speedup == pytest.approx(12 / (2 + 10 * 2.5 / 3))
    assert predict(cfg, base, steep, steep, 11, free_draft=True).speedup == pytest.approx(12 / (2 + 10 * 2.1 / 1.75))
    assert predict(cfg, base, steep, steep, 11, flat_verify=True).speedup == pytest.approx(12 / (2 + 10 * 1.5 / 1.75))
    # on a flat machine the 5-token prefill costs one forward, not r(5) = 3: F0 = 2 / 3
    gpu = predict(cfg, base, flat, steep, 11)
    assert gpu.speedup == pytest.approx((2 / 3 + 10) / (2 / 3 + 10 * 1.5 / 1.75))
    lim = Limits(p, 12 / (2 + 10 * 2.5 / 3), 12 / (2 + 10 * 2.1 / 1.75), 12 / (2 + 10 * 1.5 / 1.75))
    assert lim.holds_back == "acceptance"  # 1.161 > 1.135 (flat verification) > 0.857 (free drafting)


def test_a_draft_models_prompt_pass_is_a_fixed_cost_not_a_step_cost():
    steps = [_step(2, 2, draft_s=0.004) for _ in range(5)]
    steps[0] = _step(2, 2, draft_s=0.034)  # the first step also prefilled the draft model: 0.03 s more
    m = measure([_sample(steps)])
    assert m.draft_s == pytest.approx(0.004) and m.fixed_s == pytest.approx(0.02 + 0.03)


def test_the_interval_holds_the_prediction_and_tightens_with_agreeing_prompts():
    steep = profile_ratios(STEEP)
    rng = random.Random(1)
    samples, base = [], []
    for i in range(6):
        key = f"{i}.1"
        samples.append(_sample([_step(4, rng.randint(0, 4), draft_s=0.002) for _ in range(20)], key))
        base.append(_plain(key))
    probed = Probed(samples, base)
    cfg, b = probed.measured()
    point = predict(cfg, b, steep, steep, 64).speedup
    lo, hi = interval(probed, steep, steep, 64)
    assert lo <= point <= hi and hi - lo > 0.01
    same = Probed([_sample(samples[0].steps, f"{i}.1") for i in range(6)], base)
    lo2, hi2 = interval(same, steep, steep, 64)
    assert hi2 - lo2 < 1e-9  # every prompt measured alike: nothing to be unsure about


def test_two_fake_profiles_rank_the_same_acceptance_differently():
    """Acceptance is measured once; a CPU-like and a GPU-like profile rank the methods differently from it:
    the shallow cheap draft wins where verifying many tokens is dear, the deep one where it is free."""
    base = measure([_plain()])
    shallow = measure([_sample([_step(1, a, draft_s=0.0005) for a in (1,) * 9 + (0,)])])  # α = 0.9, γ = 1
    deep = measure([_sample([_step(8, a, draft_s=0.001) for a in (3, 2, 1, 0, 5, 2, 1, 0, 4, 2)])])  # τ = 3
    ranks = {}
    for name, profile in (("cpu", STEEP), ("gpu", GPU)):
        r = profile_ratios(profile)
        here = profile_ratios(STEEP)
        values = {"shallow": predict(shallow, base, r, here, 128).speedup,
                  "deep": predict(deep, base, r, here, 128).speedup}
        ranks[name] = sorted(values, key=lambda k: -values[k])
    assert ranks["cpu"] == ["shallow", "deep"] and ranks["gpu"] == ["deep", "shallow"]


def test_a_what_if_file_is_read_and_its_targets_profile_picked(tmp_path):
    path = tmp_path / "gpu-box.json"
    rows = [{"model": "other", "backend": "eager", "cpu": "H100", "seconds": {"1": 1.0, "2": 1.0}},
            {"model": "tiny-random", "backend": "eager", "cpu": "H100", "seconds": {str(n): 0.01 for n in (1, 8, 64)}}]
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "machine": "gpu-box", "profiles": rows}))
    w = from_file(str(path), "tiny-random", "eager")
    assert (w.name, w.model, w.note) == ("gpu-box", "tiny-random", "") and w.seconds[64] == 0.01
    w = from_file(str(path), "tiny-random", "compiled")
    assert w.model == "tiny-random" and "no profile of tiny-random on compiled" in w.note


# ---------------------------------------------------------------- the budget


def test_the_plans_scale_to_the_budget():
    costs = B.Costs(target={n: 0.05 * (1 + 0.1 * (n - 1)) for n in PROFILE_SIZES}, drafts={})
    configs = [Config("prompt_lookup", "prompt_lookup"), Config("sam", "sam"),
               Config("prompt_lookup[cost_aware=false]", "prompt_lookup", {"cost_aware": False}, tier=1)]
    prompts = [40] * 4
    roomy = B.plan_probe(configs, prompts, prompts, 2, costs, 3600, 0)
    assert (roomy.tokens, roomy.configs, roomy.left_out) == (64, configs, [])
    assert B.plan_probe(configs, prompts, prompts, 2, costs, 3600, 0, max_tokens=40).tokens == 32
    tight = B.plan_probe(configs, prompts, prompts, 2, costs, 60, 0)
    room = 60 - B.verify_guess_s(2, prompts, tight.tokens, costs)  # what one verification at its length leaves
    assert tight.tokens < 64 and tight.estimate_s <= room and tight.left_out == configs[2:]
    with pytest.raises(AdviceError, match="too small"):
        B.plan_probe(configs, prompts, prompts, 2, costs, 5, 0)
    # the verification: repeats at the probe's length first, then longer runs (at most twice it), never past
    # --max-new-tokens; with too little time one repeat as long as fits
    m = measure([_plain()])  # 10 ms a token
    plans = [B.plan_verification([m] * 3, 10, s, 32, 128) for s in (1, 12, 30, 3600)]
    assert not plans[0].fits and (plans[0].repeats, plans[0].tokens) == (1, 16)
    assert [p.fits for p in plans[1:]] == [True] * 3
    assert plans[1].repeats == 1 and 16 <= plans[1].tokens < 32 and plans[1].estimate_s <= 12
    assert plans[2].tokens == 32 and plans[2].repeats == 2 and plans[2].estimate_s <= 30
    assert (plans[3].repeats, plans[3].tokens) == (3, 64)
    assert B.plan_verification([m] * 3, 10, 3600, 32, 40).tokens == 40


# ---------------------------------------------------------------- the split


def test_probe_and_verification_prompts_never_overlap():
    qs = load_suite("builtin")
    probe, verify = split(qs)
    assert not {q.key for q in probe} & {q.key for q in verify}
    assert {q.key for q in probe} | {q.key for q in verify} == {q.key for q in qs}
    assert {q.category for q in probe} == {q.category for q in qs}  # every category probed...
    assert len(verify) > len(probe)  # ...and verification gets the larger half
    assert split(qs) == (probe, verify)  # deterministic
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 30)
        suite = [Question(i, rng.choice("abcde"), ("x",)) for i in range(n)]
        p, v = split(suite)
        assert p and v and not {q.key for q in p} & {q.key for q in v} and len(p) + len(v) == n
    singles = [Question(i, f"c{i}", ("x",)) for i in range(3)]  # one question per category
    assert [q.key for q in split(singles)[0]] == ["1"]
    with pytest.raises(AdviceError, match="at least two prompts"):
        split(singles[:1])


# ---------------------------------------------------------------- the edges, each one line


def _one_error(err: str) -> bool:
    """The command ended with exactly one error line, its last (progress lines may come before it)."""
    lines = err.strip().splitlines()
    return sum(line.startswith("error:") for line in lines) == 1 and lines[-1].startswith("error: ")


def test_no_applicable_drafter_says_what_would_apply(capsys):
    code, out, err = run_cli(capsys, "advise", "--target", "tiny-random", "--methods", "eagle,speculative",
                             "--budget", "30s")
    assert code == 2 and out == "" and _one_error(err), err
    assert "no drafter at hand applies to tiny-random" in err
    assert "workbench train --kind eagle --target tiny-random" in err and "heads import" in err
    assert "--draft, e.g. tiny-random:int8" in err and "prompt_lookup" in err  # what needs no drafter


class _Costs(CostModel):
    """A stand-in machine: every forward costs `seconds` (or profiling fails with `error`)."""

    def __init__(self, seconds: float = 0.05, error: Exception | None = None) -> None:
        self.s, self.error = seconds, error

    def profile(self, lm, backend: str = "eager") -> dict[int, float]:
        if self.error:
            raise self.error
        return {n: self.s * (1 + 0.1 * (n - 1)) for n in PROFILE_SIZES}


def test_a_budget_too_small_says_the_minimum(tmp_path):
    store = RunStore(tmp_path / "a.sqlite")
    req = AdviceRequest(target="tiny-random", methods=["prompt_lookup"], category="translation", budget_s=2)
    with pytest.raises(AdviceError, match=r"too small to probe .* give at least --budget (\d+m)?\d+s") as e:
        advise(req, store, costs=_Costs(0.05))
    least = B.parse_budget(str(e.value).split("--budget ")[1].split()[0])
    assert least > 2
    assert store.list_advice() == [] and store.list_runs() == []  # refused before anything is recorded


def test_a_target_that_cannot_be_profiled_is_one_message(tmp_path):
    store = RunStore(tmp_path / "a.sqlite")
    req = AdviceRequest(target="tiny-random", methods=["prompt_lookup"], category="translation", budget_s=60)
    with pytest.raises(AdviceError, match="cannot profile tiny-random on the eager backend here .*RuntimeError: "
                                          "no forward"):
        advise(req, store, costs=_Costs(error=RuntimeError("no forward")))
    assert store.list_advice() == []


def test_prompts_too_long_for_the_context(capsys):
    long = "x" * 2100  # the tiny model attends to 2048 positions
    code, _, err = run_cli(capsys, "advise", "--target", "tiny-random", "--methods", "prompt_lookup",
                           "--prompt", long, "--prompt", long, "--prompt", "short", "--budget", "30s")
    assert code == 2 and _one_error(err), err
    assert "prompts too long for the context: 2 of 3 prompts do not fit" in err


def test_bad_settings_are_one_line(capsys):
    for args, msg in ((["--budget", "soon"], "a budget is a duration"), (["--top", "0"], "--top must be"),
                      (["--methods", "nope"], "unknown method 'nope'"),
                      (["--prompt", "a", "--category", "qa"], "not both"),
                      (["--profile", "no-such-box"], "no imported profile named 'no-such-box'"),
                      (["--what-if", "/no/such/file.json"], "cannot read /no/such/file.json")):
        code, _, err = run_cli(capsys, "advise", "--target", "tiny-random", *args)
        assert code == 2 and msg in err and _one_error(err), (args, err)


def test_drafters_lists_what_fits_the_target(capsys):
    code, out, _ = run_cli(capsys, "advise", "--target", "tiny-random", "--drafters", "--json")
    found = json.loads(out)
    assert code == 0 and found["target"] == "tiny-random" and "prompt_lookup" in found["no_draft_model"]
    assert found["heads"] == {} and "no trained head for tiny-random" in found["missing_heads"][0]
    assert found["draft_suggestions"] == ["tiny-random:int8", "tiny-random:bf16"]


# ---------------------------------------------------------------- end to end on the tiny model


def test_advice_end_to_end_stored_and_reloaded(capsys, tmp_path):
    db = str(tmp_path / "runs.sqlite")
    gpu = tmp_path / "gpu-box.json"
    gpu.write_text(json.dumps({"format": FORMAT, "version": 1, "machine": "gpu-box", "profiles": [
        {"model": "tiny-random", "backend": "eager", "cpu": "H100", "seconds": {str(n): 0.001 for n in PROFILE_SIZES}}]}))
    # --max-new-tokens bounds the work; the budget is generous so that a slow or busy machine still fits it
    code, out, err = run_cli(capsys, "--db", db, "advise", "--target", "tiny-random", "--draft", "tiny-random:bf16",
                             "--methods", "prompt_lookup,speculative", "--category", "translation",
                             "--budget", "3m", "--max-new-tokens", "16", "--top", "2", "--what-if", str(gpu),
                             "--json")
    assert code == 0, err
    assert "advise: advice" in err and "probing" in err and "verifying" in err  # progress on stderr
    advice = json.loads(out)
    r = advice["result"]
    assert advice["status"] == "finished" and r["recommended"]
    store = RunStore(db)
    assert store.get_advice(advice["id"][:8]) == advice  # stored as printed, and reloaded
    assert [a["id"] for a in store.list_advice()] == [advice["id"]]

    # tied to its two benchmarks; the verification never ran a probe prompt
    probe, verify = store.get_benchmark(advice["probe_benchmark_id"]), store.get_benchmark(
        advice["verify_benchmark_id"])
    assert probe["config"]["question_ids"] == r["split"]["probe"]
    assert verify["config"]["question_ids"] == r["split"]["verify"]
    assert not set(r["split"]["probe"]) & set(r["split"]["verify"])
    probe_runs = set(probe["run_ids"])
    for c in r["configs"]:
        assert c["run_ids"] and set(c["run_ids"]) <= probe_runs
    verified = {row["label"] for row in r["verification"]["rows"]}
    assert verified == {c["label"] for c in r["configs"] if c["rank"] <= 2}
    assert {a["label"] for a in verify["config"]["arms"]} == verified | {"autoregressive"}

    # the explanation's numbers are the stored runs' numbers
    for c in r["configs"]:
        steps = [s for rid in c["run_ids"] for s in store.load_trace(rid).steps]
        assert c["measured"]["alphas"] == pytest.approx(M.acceptance_by_depth(steps), nan_ok=True)
        decode = M.decode_steps(steps)
        assert c["measured"]["tau"] == pytest.approx(sum(len(s.committed) for s in decode) / len(decode))
        assert f"{c['predicted']['speedup']:.2f}x" in c["limits"]["line"]
    # ... and the predictions are those stored runs' and the stored profile's, here and on the what-if machine
    samples = read_samples(store, advice["probe_benchmark_id"])
    here = profile_ratios({int(n): t for n, t in r["profile"]["target"].items()})
    tokens = r["verification"]["tokens"]
    for c in r["configs"]:
        m, base = Probed(samples[c["label"]], samples["autoregressive"]).measured()
        assert predict(m, base, here, here, tokens).speedup == pytest.approx(c["predicted"]["speedup"])
        assert predict(m, base, flat, here, tokens).speedup == pytest.approx(c["what_if"]["gpu-box"])
    assert [w["name"] for w in r["what_ifs"]] == ["gpu-box"]
    assert any("On the machine of profile 'gpu-box'" in line for line in r["explanation"])
    spec = next(c for c in r["configs"] if c["method"] == "speculative" and c["tier"] == 0)
    assert all(store.get_run(rid).draft == "tiny-random:bf16" for rid in spec["run_ids"])
    assert any(line.startswith("Recommended:") for line in r["explanation"])
    assert any(line.startswith("Ceiling here") for line in r["explanation"])
    assert r["timings"]["total_s"] > 0 and r["timings"]["budget_s"] == 180

    # the text view and the listing read the stored advice; the command reproduces it
    code, out, _ = run_cli(capsys, "--db", db, "advise", "--show", advice["id"][:8])
    assert code == 0 and "reproduce: workbench advise --target tiny-random --draft tiny-random:bf16" in out
    assert advice["command"] in out and "predicted (90%)" in out
    code, out, _ = run_cli(capsys, "--db", db, "advise", "--list")
    assert code == 0 and advice["id"][:8] in out
