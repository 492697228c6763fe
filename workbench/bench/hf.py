"""The transformers equivalents of our methods, timed on the same prompts in the same process.

    hf.generate                 model.generate(do_sample=False, max_new_tokens=N)   ~ autoregressive
    hf.generate+static+compile  ... cache_implementation="static", compile_config     ~ autoregressive, compiled
    hf.assisted                 ... assistant_model=draft.model                     ~ speculative
    hf.prompt_lookup            ... prompt_lookup_num_tokens=10                     ~ prompt_lookup

hf.generate+static+compile is generate at its own best, as transformers documents
it: a StaticCache (`cache_implementation="static"`) and its automatic
`torch.compile` of the one-token decode forward (`compile_config`; the prefill
runs eagerly). The cache is sized once (`max_cache_len`, the benchmark's longest
prompt + new tokens, rounded up like the compiled backend's) so no later call
grows it and recompiles. The compiler settings are transformers' own: on a CPU
inductor's defaults without freezing (transformers compiles on CPU only when asked,
by CompileConfig's `_compile_all_devices`), on CUDA its default ("reduce-overhead":
CUDA graphs). Compiling happens in the benchmark's warm-up
(`hf_warm_up`), never in a timed run. Its arms are tagged with the backend they
correspond to (HF_BACKEND), so its speedup is against our plain decoding on that
backend.

Settings, so the outputs are comparable token for token with ours:
- An explicit GenerationConfig: greedy, one beam, no repetition penalty, no
  n-gram blocking, min_length 0. transformers 5 fills unset fields from the
  model's own generation_config, so anything that could change greedy output
  is set explicitly.
- eos_token_id = the target's EOS ids (the same set our engine stops on) and
  pad_token_id = the tokenizer's pad (else the first EOS). Both loops keep the
  EOS token and stop after it, so equal settings give equal lengths.
  min_new_tokens is deliberately not used: it masks EOS logits, which would
  change the greedy output and break the token-identity check.
- Assisted generation in transformers 5.23 reads its draft length from the
  assistant's generation_config, falling back to GenerationConfig's defaults:
  num_assistant_tokens=20, num_assistant_tokens_schedule="constant" and
  assistant_confidence_threshold=0.4 (drafting stops early once the draft's
  top probability falls below it; the threshold adapts only if scikit-learn is
  installed). The effective values are recorded with every run.
- Prompt lookup: num_output_tokens = prompt_lookup_num_tokens = 10 and
  max_matching_ngram_size = 2 (transformers' default; ours looks up 3..1-grams).

Forward hooks on the target (and the assistant) record every forward pass, so
each HF run is stored as an ordinary Trace: one step per target forward, the
candidate tokens it verified, how many were kept, and draft/verify time (the
draft time of prompt lookup, which runs no model, lands in "other"). Hooks would
be traced into a compiled forward (and break its graph), so the static+compile
arm is timed instead by a stopping criterion, which transformers calls once per
new token outside the model: one step per token (each one target forward).
"""
from __future__ import annotations

import importlib.util
import time
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, StoppingCriteriaList
from transformers.utils import logging as hf_logging

from ..backend.compiled import cache_len_bucket
from ..kv_cache import cache_from_kwargs
from ..device import device_sync, memory_mb
from ..config import BASELINE
from ..trace import Step, Trace

STATIC = "hf.generate+static+compile"
HF_METHODS = ("hf.generate", STATIC, "hf.assisted", "hf.prompt_lookup")
OURS = {"hf.generate": BASELINE, STATIC: BASELINE, "hf.assisted": "speculative",
        "hf.prompt_lookup": "prompt_lookup"}
HF_BACKEND = {STATIC: "compiled"}  # the backend an HF arm corresponds to; the others: eager (a DynamicCache)
PROMPT_LOOKUP_NUM_TOKENS = 10


def hf_backend(method: str) -> str:
    return HF_BACKEND.get(method, "eager")


_COMPILE_CONFIGS: dict[str, Any] = {}


def compile_config(device_type: str):
    """The CompileConfig of the static arm on this kind of device (one object, so transformers compiles once)."""
    if device_type not in _COMPILE_CONFIGS:
        if device_type == "cuda":
            cc = CompileConfig()  # transformers' default: reduce-overhead (CUDA graphs)
        else:  # inductor's defaults (no freezing: see `_inductor_settings`)
            cc = CompileConfig(dynamic=False, mode=None)
            cc._compile_all_devices = True  # transformers' switch for compiling off CUDA
        _COMPILE_CONFIGS[device_type] = cc
    return _COMPILE_CONFIGS[device_type]


def _inductor_settings():
    """transformers' compile runs with inductor's defaults, freezing off: the compiled backend turns freezing on
    globally, and with it transformers' static-cache graphs read wrong cache positions (their outputs differ from
    plain decoding and the CPU kernel indexes past the cache)."""
    import torch._inductor.config  # here: inductor is slow to import; only the static arm needs it

    return torch._inductor.config.patch(freezing=False)


def static_cache_len(longest: int, limit: int | None) -> int:
    """The static arm's cache: room for `longest` positions, rounded up as the compiled backend's (a power of two)."""
    return cache_len_bucket(min(longest, limit) if limit else longest, limit)


def hf_settings(method: str, target, draft=None, max_cache_len: int | None = None) -> dict[str, Any]:
    """The effective generation settings of an HF arm (recorded as the run's parameters)."""
    if method == STATIC:
        cc = compile_config(target.device.type)
        return {"cache_implementation": "static", "max_cache_len": max_cache_len, "compile_mode": cc.mode,
                "compile_dynamic": cc.dynamic, "compile_options": dict(cc.options or {})}
    if method == "hf.assisted":
        defaults = GenerationConfig._get_default_generation_params()
        cfg = draft.model.generation_config
        out = {}
        for key in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"):
            value = getattr(cfg, key, None)
            out[key] = defaults.get(key) if value is None else value
        out["confidence_threshold_adapts"] = importlib.util.find_spec("sklearn") is not None
        return out
    if method == "hf.prompt_lookup":
        return {"prompt_lookup_num_tokens": PROMPT_LOOKUP_NUM_TOKENS, "max_matching_ngram_size": 2}
    return {}


def _generation_config(target, max_new_tokens: int, method: str, max_cache_len: int | None = None):
    eos = list(target.eos_token_ids)
    pad = getattr(target.tokenizer, "pad_token_id", None)
    kwargs: dict[str, Any] = dict(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_length=0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, eos_token_id=eos, pad_token_id=pad if pad is not None else (eos[0] if eos else None),
    )
    if method == "hf.prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_NUM_TOKENS
    if method == STATIC:
        kwargs.update(cache_implementation="static", compile_config=compile_config(target.device.type),
                      max_cache_len=max_cache_len)
    return GenerationConfig(**kwargs)


class _ForwardRecorder:
    """Forward hooks: (start, end, n_input, n_cached, input ids) per target call, (start, end) per draft call."""

    def __init__(self, target_model, draft_model=None) -> None:
        self.target: list[tuple[float, float, int, int, list[int]]] = []
        self.draft: list[tuple[float, float]] = []
        self._pending: dict[int, tuple[float, int, int, list[int]]] = {}
        self._handles = [
            target_model.register_forward_pre_hook(self._pre_target, with_kwargs=True),
            target_model.register_forward_hook(self._post_target, with_kwargs=True),
        ]
        if draft_model is not None:
            self._handles += [draft_model.register_forward_pre_hook(self._pre_draft),
                              draft_model.register_forward_hook(self._post_draft)]
        self._draft_t0 = 0.0

    def _pre_target(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = cache_from_kwargs(kwargs)
        cached = int(cache.get_seq_length()) if cache is not None else 0
        n = int(ids.shape[-1]) if ids is not None else 0
        tokens = ids[0].tolist() if ids is not None and n <= 256 else []
        self._pending[0] = (time.perf_counter(), n, cached, tokens)

    def _post_target(self, module, args, kwargs, output):
        t0, n, cached, tokens = self._pending.pop(0)
        self.target.append((t0, time.perf_counter(), n, cached, tokens))

    def _pre_draft(self, module, args):
        self._draft_t0 = time.perf_counter()

    def _post_draft(self, module, args, output):
        self.draft.append((self._draft_t0, time.perf_counter()))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class _TokenClock:
    """A stopping criterion that never stops: it notes the time of every new token, outside the model's forward.

    Plain greedy decoding runs one forward per token, so token k's interval is that
    forward (the first one: the prefill) in the same (t0, t1, n_in, cached, ids) form
    as _ForwardRecorder's target calls.
    """

    def __init__(self, n_prompt: int) -> None:
        self.n_prompt = n_prompt
        self.times: list[float] = []
        self.t_start = 0.0

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def calls(self, n_new: int) -> list[tuple[float, float, int, int, list[int]]]:
        starts = [self.t_start] + self.times
        return [(starts[k], self.times[k], self.n_prompt if k == 0 else 1, 0 if k == 0 else self.n_prompt + k - 1,
                 []) for k in range(min(n_new, len(self.times)))]


def _build_trace(method: str, params: dict[str, Any], prompt_ids: list[int], output: list[int],
                 calls: list[tuple[float, float, int, int, list[int]]], drafts: list[tuple[float, float]],
                 t_start: float, wall: float, eos: set[int]) -> Trace:
    """One Step per target forward: committed tokens from the growth of the cache between forwards."""
    trace = Trace(method=method, params=dict(params), prompt_ids=list(prompt_ids), wall_s=wall)
    n_prompt = len(prompt_ids)
    seq = list(prompt_ids) + list(output)
    # length of prompt + committed tokens before call k: n_prompt for the first, then cache + 1 (one uncached root)
    lengths = [n_prompt] + [c[3] + 1 for c in calls[1:]] + [len(seq)]
    prev_end = t_start
    draft_iter = list(drafts)
    for k, (t0, t1, n_in, cached, tokens) in enumerate(calls):
        uncached_committed = lengths[k] - cached
        drafted = tokens[uncached_committed:] if tokens else []
        committed = seq[lengths[k]:lengths[k + 1]]
        n_acc = max(0, min(len(committed) - 1, len(drafted)))
        draft_s = sum(e - s for s, e in draft_iter if prev_end <= s and e <= t0)
        step = Step(index=k, kind="prefill" if k == 0 and not drafted else "decode", tokens=list(drafted),
                    parents=list(range(-1, len(drafted) - 1)), accepted=list(range(n_acc)),
                    bonus_token=committed[-1] if committed else -1, committed=committed, draft_s=draft_s,
                    verify_s=t1 - t0, total_s=t1 - prev_end, t_end=t1 - t_start)
        trace.steps.append(step)
        prev_end = t1
    trace.stop_reason = "eos" if output and output[-1] in eos else "max_new_tokens"
    return trace


@torch.inference_mode()
def hf_run(method: str, target, prompt_ids: list[int], max_new_tokens: int, draft=None,
           max_cache_len: int | None = None) -> tuple[list[int], Trace]:
    """Run one HF arm on one prompt -> (new token ids, Trace with wall time and per-forward steps).

    max_cache_len: the static arm's cache size (None: transformers sizes it to this call).
    """
    if method not in HF_METHODS:
        raise ValueError(f"unknown transformers arm {method!r}")
    model = target.model
    gc = _generation_config(target, max_new_tokens, method, max_cache_len)
    ids = torch.tensor([prompt_ids], device=target.device)  # (1, T_prompt)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids), "generation_config": gc}
    if method == "hf.assisted":
        kwargs["assistant_model"] = draft.model
    rec = clock = None
    if method == STATIC:
        clock = _TokenClock(len(prompt_ids))
        kwargs["stopping_criteria"] = StoppingCriteriaList([clock])
    else:
        rec = _ForwardRecorder(model, draft.model if method == "hf.assisted" else None)
    verbosity = _quiet_transformers()
    try:
        with _inductor_settings():
            device_sync(target.device)
            t0 = time.perf_counter()
            out = model.generate(ids, **kwargs)  # (1, T_prompt + new)
            device_sync(target.device)
            wall = time.perf_counter() - t0
    finally:
        if rec is not None:
            rec.close()
        _restore_transformers(verbosity)
    new = out[0, len(prompt_ids):].tolist()
    if clock is not None:
        clock.t_start = t0
        calls, drafts = clock.calls(len(new)), []
    else:
        calls, drafts = rec.target, rec.draft
    trace = _build_trace(method, hf_settings(method, target, draft, max_cache_len), prompt_ids, new, calls, drafts,
                         t0, wall, set(target.eos_token_ids))
    trace.peak_mem_mb = memory_mb(target.device)
    return new, trace


def hf_warm_up(method: str, target, prompt_ids: list[int], max_new_tokens: int, draft=None,
               max_cache_len: int | None = None) -> float:
    """One unlogged generation of an HF arm (for the static arm: compiling its decode forward); seconds taken."""
    t0 = time.perf_counter()
    hf_run(method, target, prompt_ids, max(2, max_new_tokens) if method == STATIC else max_new_tokens, draft=draft,
           max_cache_len=max_cache_len)  # the static arm compiles at its first decode step, after the prefill
    return time.perf_counter() - t0


def _quiet_transformers() -> int:
    """Silence transformers' notice that assisted generation passes length arguments next to a config."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return level


def _restore_transformers(level: int) -> None:
    hf_logging.set_verbosity(level)
