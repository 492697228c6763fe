"""Property-based tests (hypothesis): bad input only ever fails as ConfigError, good input stays lossless.

Parameter parsing (every registered method, values of every kind), suite parsing
(random JSONL lines), SamplingConfig / DecodeConfig construction, and
`workbench.engine.generate` on the tiny models with random valid methods and
parameters under greedy decoding, which must equal plain greedy decoding.
"""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workbench.bench.suites import CATEGORIES, parse_suite
from workbench.config import MAX_NEW_TOKENS_LIMIT, ConfigError, DecodeConfig, SamplingConfig
from workbench.engine import generate
from workbench.methods import list_methods, resolve_params
from workbench.train_config import TrainConfig

# No example database: nothing is written into the work tree; every run draws fresh examples.
FAST = settings(max_examples=40, deadline=None, database=None)
METHODS = list_methods()

# values of every kind a CLI, a form, a JSON file or a Python caller could hand over
WILD = st.one_of(
    st.booleans(), st.none(),
    st.integers(min_value=-10**30, max_value=10**30), st.just(10**400), st.just(-(10**5000)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.integers(min_value=-100, max_value=100).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "3.0", "3.5", " 4 ", "true", "off", "", "0x10"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _in_range(p, value) -> bool:
    return (p.min is None or value >= p.min) and (p.max is None or value <= p.max)


@FAST
@given(data=st.data())
def test_method_parameters_parse_or_fail_with_config_error(data):
    cls = data.draw(st.sampled_from(METHODS), label="method")
    names = [p.name for p in cls.params]
    keys = st.sampled_from(names) | st.text(max_size=6) if names else st.text(max_size=6)
    given_params = data.draw(st.dictionaries(keys, WILD, max_size=3), label="params")
    try:
        out = resolve_params(cls.name, given_params)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert set(out) == set(names)
    for p in cls.params:
        value = out[p.name]
        if p.type == "int":
            assert type(value) is int and _in_range(p, value)
        elif p.type == "float":
            assert type(value) is float and math.isfinite(value) and _in_range(p, value)
        elif p.type == "bool":
            assert type(value) is bool
        elif p.type == "choice":
            assert value in p.choices
        else:
            assert isinstance(value, str)
    assert resolve_params(cls.name, out) == out  # parsing is idempotent (benchmarks re-resolve)


@FAST
@given(data=st.data())
def test_method_parameters_given_as_text_or_bools(data):
    """The CLI's strings and the form's bools: bools are never numbers, and text numbers parse exactly."""
    cls = data.draw(st.sampled_from([m for m in METHODS if any(p.type == "int" for p in m.params)]))
    p = data.draw(st.sampled_from([p for p in cls.params if p.type == "int"]))
    flag = data.draw(st.booleans())
    with pytest.raises(ConfigError, match="expects int"):
        resolve_params(cls.name, {p.name: flag})
    n = data.draw(st.integers(min_value=int(p.min or 0), max_value=int(p.max or 100)))
    assert p.parse(str(n)) == p.parse(f" {n} ") == p.parse(float(n)) == p.parse(n) == n
    assert type(p.parse(str(n))) is int


# ---------------------------------------------------------------- suites

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
QUESTION = st.fixed_dictionaries({}, optional={
    "question_id": st.integers(min_value=0, max_value=50) | st.text(max_size=4) | JSON_VALUES,
    "category": st.sampled_from(CATEGORIES + ("writing", "")) | JSON_VALUES,
    "turns": st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=2) | JSON_VALUES,
    "reference": JSON_VALUES,
})
LINE = st.one_of(QUESTION.map(json.dumps), JSON_VALUES.map(json.dumps), st.text(max_size=30),
                 st.just(""), st.just("{"), st.just("[" * 3000))


@FAST
@given(lines=st.lists(LINE, max_size=6))
def test_suite_lines_parse_or_fail_with_the_line(lines):
    try:
        questions = parse_suite("\n".join(lines), "s.jsonl")
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and ("s.jsonl:" in msg or "has no questions" in msg), msg
        return
    assert questions and len({q.key for q in questions}) == len(questions)
    for q in questions:
        assert isinstance(q.category, str) and q.category.strip()
        assert q.turns and all(isinstance(t, str) and t.strip() for t in q.turns)
        assert isinstance(q.question_id, (int, str)) and not isinstance(q.question_id, bool)


# ---------------------------------------------------------------- run configuration


@FAST
@given(temperature=WILD, top_k=WILD, top_p=WILD, seed=WILD)
def test_sampling_config_is_valid_or_config_error(temperature, top_k, top_p, seed):
    try:
        cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert math.isfinite(cfg.temperature) and 0 <= cfg.temperature <= 100
    assert type(cfg.top_k) is int and cfg.top_k >= 0
    assert math.isfinite(cfg.top_p) and 0 < cfg.top_p <= 1
    assert type(cfg.seed) is int and 0 <= cfg.seed < 2**63


@FAST
@given(max_new_tokens=WILD, stop_on_eos=WILD, trace=WILD)
def test_decode_config_is_valid_or_config_error(max_new_tokens, stop_on_eos, trace):
    try:
        cfg = DecodeConfig(max_new_tokens=max_new_tokens, stop_on_eos=stop_on_eos, trace=trace)
    except ConfigError:
        return
    assert type(cfg.max_new_tokens) is int and 1 <= cfg.max_new_tokens <= MAX_NEW_TOKENS_LIMIT
    assert isinstance(cfg.stop_on_eos, bool) and isinstance(cfg.trace, bool)


# ---------------------------------------------------------------- lossless under random valid settings

# valid values for the free-text parameters (everything else is drawn from its declared range)
TEXT_VALUES = {
    "branching": st.lists(st.integers(1, 3), min_size=1, max_size=3).map(lambda ks: ",".join(map(str, ks))),
    "paths": st.sampled_from(["", "[[0]]", "[[0],[1]]", "[[0],[0,0],[1]]", "[[0],[1],[2],[0,0],[0,1],[0,0,0]]"]),
}
# parameters whose valid range is the trained drafter's: the block drafters' `block` is at most the positions their
# tiny-random heads draft (TrainConfig's default of 4; a larger one is refused in one line, tested in test_block.py)
HEAD_RANGES = {"block": st.integers(0, TrainConfig.heads)}
LOSSLESS = [m for m in METHODS if m.lossless]


def _value(p):
    if p.type == "int":
        lo = int(p.min if p.min is not None else 0)
        return st.integers(lo, max(lo, min(int(p.max if p.max is not None else lo + 6), lo + 6)))
    if p.type == "float":
        return st.floats(p.min if p.min is not None else 0.0, p.max if p.max is not None else 1.0)
    if p.type == "bool":
        return st.booleans()
    if p.type == "choice":
        return st.sampled_from(p.choices)
    return TEXT_VALUES.get(p.name, st.just(p.default))


@pytest.mark.heads  # eagle, medusa and hydra are among the methods drawn
@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_lossless_methods_equal_plain_greedy(tiny, tiny_bf16, tiny_other, data):
    cls = data.draw(st.sampled_from(LOSSLESS), label="method")
    params = {p.name: data.draw(HEAD_RANGES[p.name] if getattr(cls, "kind", "") and p.name in HEAD_RANGES else _value(p),
                                label=p.name)
              for p in cls.params}
    prompt = data.draw(st.text(min_size=1, max_size=24) | st.sampled_from(["abcabcabc abc", "the cat the cat the"]),
                       label="prompt")
    n = data.draw(st.integers(1, 12), label="max_new_tokens")
    draft = data.draw(st.sampled_from([tiny_bf16, tiny_other]), label="draft") if cls.needs_draft_model else None
    try:
        resolve_params(cls.name, params)
    except ConfigError:  # each value is in range, but not every combination is (min_ngram > max_ngram)
        assume(False)
    ids = tiny.encode_prompt(prompt, chat=False)
    decode = DecodeConfig(max_new_tokens=n)
    plain = generate(tiny, "autoregressive", ids, decode=decode).output_ids
    out = generate(tiny, cls.name, ids, draft=draft, params=params, decode=decode)
    assert out.output_ids == plain, (cls.name, params)
    assert len(out.output_ids) <= n
