"""Quality accounting (workbench.quality, workbench.accounting): known answers for every measure, the task
items of the built-in `tasks` suite, and agreement with the identity tests on every lossless method."""

import math

import pytest
import torch

from workbench.accounting import decode_baseline, mean_nll, measure_quality, token_nll
from workbench.bench.suites import load_suite, parse_suite
from workbench.config import ConfigError, DecodeConfig
from workbench.engine import generate
from workbench.methods import list_methods
from workbench.models import load_model
from workbench.models.tiny import TINY_VOCAB
from workbench.quality import (Quality, agreement, check_measure, compare, first_divergence, lcs_length, lossy_badge,
                               prefix_agreement, rouge_l, score_task)

from .helpers import PROMPTS

LOSSLESS = [m for m in list_methods() if m.lossless and m.name != "autoregressive"]


# ---------------------------------------------------------------------------- token agreement

def test_identical_outputs_agree_fully():
    q = compare([5, 6, 7], [5, 6, 7], output_text="a b c", baseline_text="a b c")
    assert (q.agreement, q.prefix_agreement, q.rouge_l, q.first_divergence) == (1.0, 1.0, 1.0, None)
    assert q.identical
    assert compare([], []).agreement == 1.0 and compare([], []).first_divergence is None


def test_a_divergence_at_a_known_position():
    out, base = [1, 2, 3, 9, 5], [1, 2, 3, 4, 5]
    assert first_divergence(out, base) == 3
    assert prefix_agreement(out, base) == pytest.approx(3 / 5)
    assert agreement(out, base) == pytest.approx(4 / 5)  # position 4 agrees again after the divergence


def test_a_shorter_output_diverges_at_its_own_length():
    assert first_divergence([1, 2], [1, 2, 3, 4]) == 2
    assert prefix_agreement([1, 2], [1, 2, 3, 4]) == 0.5
    assert agreement([1, 2, 3, 4], [1, 2]) == 0.5
    assert first_divergence([7], [1]) == 0 and agreement([7], [1]) == 0.0


# ---------------------------------------------------------------------------- ROUGE-L

def test_lcs_of_known_sequences():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS's example: BCBA
    assert lcs_length([], [1, 2]) == 0
    assert lcs_length([1, 2, 3], [1, 2, 3]) == 3


def test_rouge_l_of_known_strings():
    # Lin (2004): reference "police killed the gunman"
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    assert rouge_l("the gunman kill police", "police killed the gunman") == pytest.approx(0.5)
    # P = 2/2, R = 2/4 -> F = 2 * 1 * 0.5 / 1.5
    assert rouge_l("The cat", "the cat sat down") == pytest.approx(2 / 3)
    assert rouge_l("Same text, same words.", "same TEXT same words") == 1.0  # case and punctuation aside
    assert rouge_l("", "") == 1.0 and rouge_l("words", "") == 0.0 and rouge_l("a b", "c d") == 0.0


# ---------------------------------------------------------------------------- task scores

@pytest.mark.parametrize("text, check, answers, want", [
    ("The answer is 42.", "number", ["42"], 1.0),
    ("1,932", "number", ["1932"], 1.0),
    ("41 or so", "number", ["42"], 0.0),
    ("no number here", "number", ["42"], 0.0),
    ("Paris.", "contains", ["Paris"], 1.0),
    ("It is Paris, of course", "contains", ["paris"], 1.0),
    ("Parisian", "contains", ["Paris"], 0.0),  # whole words only
    ("Au", "exact", ["Au"], 1.0),
    ("Au is gold", "exact", ["Au"], 0.0),
])
def test_task_checks(text, check, answers, want):
    assert score_task(text, check, answers) == want


def test_a_task_score_goes_into_the_quality():
    q = compare([1], [1], output_text="42", baseline_text="42", task=("number", ["42"]))
    assert (q.task_score, q.task_check) == (1.0, "number")
    assert compare([1], [1]).task_score is None


@pytest.mark.parametrize("line, message", [
    ('{"question_id": 1, "category": "x", "turns": ["q"], "check": "fuzzy", "answer": ["a"]}',
     "s:1: 'check' must be one of exact, contains, number, got 'fuzzy'"),
    ('{"question_id": 1, "category": "x", "turns": ["q"], "check": "exact"}',
     "s:1: 'answer' must be a non-empty text or number, or a list of them"),
    ('{"question_id": 1, "category": "x", "turns": ["q"], "check": "number", "answer": ["four"]}',
     "s:1: a 'number' check needs numeric answers, got ['four']"),
])
def test_a_bad_task_item_is_one_clear_error(line, message):
    with pytest.raises(ConfigError) as err:
        parse_suite(line, "s")
    assert str(err.value) == message


def test_the_tasks_suite_carries_checkers_in_categories_of_its_own():
    tasks = load_suite("tasks")
    cats = {q.category for q in tasks}
    assert cats == {"task_extraction", "task_arithmetic", "task_qa"}
    assert all(q.task is not None for q in tasks)
    # the speed suite is unchanged: its items carry no checker and none of the task categories
    builtin = load_suite("builtin")
    assert all(q.task is None for q in builtin) and not cats & {q.category for q in builtin}
    for q in tasks:  # every reference answer scores 1.0 against itself
        assert score_task(q.answers[0], *q.task) == 1.0, q.key


def test_quality_round_trips_through_a_dict():
    q = compare([1, 2], [1, 3], output_text="a b", baseline_text="a c", nll=2.0, baseline_nll=1.5)
    d = q.to_dict()
    assert d["nll_gap"] == pytest.approx(0.5) and d["identical"] is False
    assert Quality.from_dict(d) == q and Quality.from_dict(None) is None


def test_measures_and_badges():
    assert check_measure("rouge_l") == "rouge_l"
    with pytest.raises(ConfigError, match="unknown quality measure 'bleu'; choose one of agreement"):
        check_measure("bleu")
    assert lossy_badge([]) == "lossless"
    assert lossy_badge(["relaxed acceptance: typical eps=0.3"]) == "LOSSY: relaxed acceptance: typical eps=0.3"


# ---------------------------------------------------------------------------- NLL on a tiny model

def test_nll_of_a_uniform_model_is_log_vocab():
    """A zero LM head gives every token probability 1/V: each token's NLL is exactly ln V."""
    lm = load_model("tiny-random:seed=3")
    head = lm.model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.zero_()
        nll = token_nll(lm, [256, 10, 20], [30, 40, 50, 60])
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert nll == pytest.approx([math.log(TINY_VOCAB)] * 4, abs=1e-5)


def test_nll_matches_one_prefix_at_a_time(tiny):
    """The teacher-forced forward gives what scoring each token after its own prefix gives."""
    prompt, ids = PROMPTS[0][:12], [3, 99, 120, 7, 7]
    want = []
    for k, tok in enumerate(ids):
        with torch.inference_mode():
            logits = tiny.model(input_ids=torch.tensor([prompt + ids[:k]])).logits[0, -1]
        want.append(-float(logits.float().log_softmax(-1)[tok]))
    assert token_nll(tiny, prompt, ids) == pytest.approx(want, abs=1e-4)
    assert mean_nll(tiny, prompt, []) is None


# ---------------------------------------------------------------------------- against the identity tests

@pytest.mark.parametrize("method", LOSSLESS, ids=lambda m: m.name)
def test_a_lossless_method_scores_full_agreement_and_a_broken_output_does_not(method, tiny, request):
    """What the identity tests assert (token identity under greedy), the accounting reports as agreement 1.0,
    ROUGE-L 1.0 and an NLL gap of 0; the same output with one token changed scores below 1 (so this can fail)."""
    draft = request.getfixturevalue("tiny_other") if method.needs_draft_model else None
    prompt, decode = PROMPTS[1], DecodeConfig(max_new_tokens=32, stop_on_eos=False)
    base = decode_baseline(tiny, prompt, decode=decode)
    out = generate(tiny, method.name, prompt, draft=draft, decode=decode)
    q = measure_quality(tiny, prompt, out.output_ids, baseline_ids=base.output_ids)
    assert (q.agreement, q.prefix_agreement, q.first_divergence) == (1.0, 1.0, None), method.name
    assert q.rouge_l == 1.0 and q.nll_gap == 0.0
    broken = list(out.output_ids)
    broken[10] = (broken[10] + 1) % 256
    bq = measure_quality(tiny, prompt, broken, baseline_ids=base.output_ids)
    assert bq.first_divergence == 10 and bq.agreement == pytest.approx(31 / 32) and bq.prefix_agreement < 1
    assert bq.nll_gap > 0  # the changed token was not the target's greedy choice


def test_measure_quality_reuses_a_known_baseline_nll(tiny):
    prompt = PROMPTS[0]
    base = decode_baseline(tiny, prompt, decode=DecodeConfig(max_new_tokens=16, stop_on_eos=False))
    q = measure_quality(tiny, prompt, base.output_ids[:8], baseline_ids=base.output_ids, baseline_nll=1.25,
                        baseline_run="r1")
    assert q.baseline_nll == 1.25 and q.baseline_run == "r1" and q.first_divergence == 8
    assert q.nll == pytest.approx(mean_nll(tiny, prompt, base.output_ids[:8]))
    assert measure_quality(tiny, prompt, [1], baseline_ids=[1], nll=False).nll is None
