"""The installed transformers' API, as the engine, the drafters and the HF comparison use it.

transformers 5.24 renamed the cache argument of `forward` to `cache` (`past_key_values`
is deprecated, to be removed in 5.40) and `generate` passes it under the new name. These
tests fail on a deprecation notice from transformers or on a cache the recorder misses.
"""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
import transformers
from transformers import DynamicCache
from transformers.utils import logging as hf_logging

from workbench import kv_cache as kv
from workbench.bench.hf import hf_run
from workbench.config import DecodeConfig
from workbench.engine import generate


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def hf_warnings(recwarn):
    """A function giving every warning transformers logged or raised so far in the test.

    warning_once's memory is cleared first, so a notice already given earlier in the
    session is given again.
    """
    hf_logging.warning_once.cache_clear()
    warnings.simplefilter("always")
    handler = _Collect()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield lambda: handler.messages + [str(w.message) for w in recwarn]
    finally:
        root.removeHandler(handler)


def test_cache_argument_matches_the_installed_forward(tiny):
    import inspect

    params = inspect.signature(tiny.model.forward).parameters
    assert kv.cache_arg_name(tiny.model) in params
    cache = DynamicCache(config=tiny.model.config)
    kv.forward(tiny.model, torch.tensor([[72, 101, 108]]), cache)
    assert kv.cache_len(cache) == 3  # the cache really went in under that name


def test_asking_another_class_for_its_cache_argument_does_not_recompile_a_graph(tiny):
    """A compiled graph that looks up the cache argument is not invalidated when another class is looked up
    (early exit asks about decoder layers and attention modules while a compiled target is warm)."""
    from torch._dynamo.utils import counters

    model = tiny.model

    def step(x):
        return x + len(kv.cache_arg_name(model))

    fn = torch.compile(step, backend="eager")
    x = torch.ones(3)
    fn(x)
    before = counters["stats"]["unique_graphs"]
    for module in (model.get_decoder().layers[0], model.get_decoder().layers[0].self_attn):
        kv.cache_arg_name(module)
    fn(x)
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.parametrize("method", ["autoregressive", "speculative", "tree_dynamic", "staged"])
def test_engine_and_drafters_log_no_deprecation(tiny, tiny_bf16, hf_warnings, method):
    draft = None if method == "autoregressive" else tiny_bf16
    generate(tiny, method, [72, 101, 108, 108, 111], draft=draft, decode=DecodeConfig(max_new_tokens=10))
    _assert_no_deprecation(hf_warnings)


def _assert_no_deprecation(messages) -> None:
    found = [m for m in messages() if "deprecat" in m.lower()]
    assert not found, (transformers.__version__, found)


@pytest.mark.parametrize("method", ["hf.generate", "hf.assisted", "hf.prompt_lookup"])
def test_hf_comparison_records_the_cache(tiny, tiny_bf16, hf_warnings, method):
    """The forward recorder must see the cache generate passes, or every step looks like a prefill."""
    prompt = [72, 101, 108, 108, 111, 32, 72, 101, 108, 108, 111]
    new, trace = hf_run(method, tiny, prompt, 16, draft=tiny_bf16)
    ours = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=16))
    assert new == ours.output_ids
    assert sum(len(s.committed) for s in trace.steps) == len(new)
    # each forward commits at most its verified candidates plus one token (a missed cache reads as
    # "the whole sequence was new" and gives tau in the tens)
    assert len(trace.steps) > 1 and all(len(s.committed) <= len(s.tokens) + 1 for s in trace.steps)
    if method == "hf.generate":
        assert len(trace.steps) == len(new)  # one forward per token: tau 1.0
    _assert_no_deprecation(hf_warnings)


def _sliding_model(window: int):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=window,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    return MistralForCausalLM(cfg).eval()


def test_sliding_window_rollback_inside_the_window_is_exact_and_past_it_refused():
    model = _sliding_model(window=8)
    assert kv.sliding_window(model.config) == 8
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        kv.forward(model, torch.arange(1, 6)[None], cache)  # 5 positions: inside the window
        kv.crop(cache, 3)
        got = kv.forward(model, torch.tensor([[9]]), cache).logits[0, -1]
        ref = model(input_ids=torch.tensor([[1, 2, 3, 9]])).logits[0, -1]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        kv.forward(model, torch.arange(1, 12)[None], cache)  # past the window: early states dropped
        with pytest.raises(kv.CacheRollbackError, match="sliding-window"):
            kv.crop(cache, 5)
