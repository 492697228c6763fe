"""The transformers equivalents of our methods, timed on the same prompts in the same process.

    hf.generate        model.generate(do_sample=False, max_new_tokens=N)            ~ autoregressive
    hf.assisted        ... assistant_model=draft.model                              ~ speculative
    hf.prompt_lookup   ... prompt_lookup_num_tokens=10                              ~ prompt_lookup

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
draft time of prompt lookup, which runs no model, lands in "other").
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..cache import cache_from_kwargs
from ..device import device_sync, memory_mb
from ..trace import Step, Trace

HF_METHODS = ("hf.generate", "hf.assisted", "hf.prompt_lookup")
OURS = {"hf.generate": "autoregressive", "hf.assisted": "speculative", "hf.prompt_lookup": "prompt_lookup"}
PROMPT_LOOKUP_NUM_TOKENS = 10


def hf_settings(method: str, target, draft=None) -> dict[str, Any]:
    """The effective generation settings of an HF arm (recorded as the run's parameters)."""
    if method == "hf.assisted":
        from transformers import GenerationConfig

        defaults = GenerationConfig._get_default_generation_params()
        cfg = draft.model.generation_config
        out = {}
        for key in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"):
            value = getattr(cfg, key, None)
            out[key] = defaults.get(key) if value is None else value
        import importlib.util

        out["confidence_threshold_adapts"] = importlib.util.find_spec("sklearn") is not None
        return out
    if method == "hf.prompt_lookup":
        return {"prompt_lookup_num_tokens": PROMPT_LOOKUP_NUM_TOKENS, "max_matching_ngram_size": 2}
    return {}


def _generation_config(target, max_new_tokens: int, method: str):
    from transformers import GenerationConfig

    eos = list(target.eos_token_ids)
    pad = getattr(target.tokenizer, "pad_token_id", None)
    kwargs: dict[str, Any] = dict(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_length=0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, eos_token_id=eos, pad_token_id=pad if pad is not None else (eos[0] if eos else None),
    )
    if method == "hf.prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_NUM_TOKENS
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


def _build_trace(method: str, params: dict[str, Any], prompt_ids: list[int], output: list[int],
                 rec: _ForwardRecorder, t_start: float, wall: float, eos: set[int]) -> Trace:
    """One Step per target forward: committed tokens from the growth of the cache between forwards."""
    trace = Trace(method=method, params=dict(params), prompt_ids=list(prompt_ids), wall_s=wall)
    n_prompt = len(prompt_ids)
    seq = list(prompt_ids) + list(output)
    calls = rec.target
    # length of prompt + committed tokens before call k: n_prompt for the first, then cache + 1 (one uncached root)
    lengths = [n_prompt] + [c[3] + 1 for c in calls[1:]] + [len(seq)]
    prev_end = t_start
    draft_iter = list(rec.draft)
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
def hf_run(method: str, target, prompt_ids: list[int], max_new_tokens: int, draft=None) -> tuple[list[int], Trace]:
    """Run one HF arm on one prompt -> (new token ids, Trace with wall time and per-forward steps)."""
    if method not in HF_METHODS:
        raise ValueError(f"unknown transformers arm {method!r}")
    model = target.model
    gc = _generation_config(target, max_new_tokens, method)
    ids = torch.tensor([prompt_ids], device=target.device)  # (1, T_prompt)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids), "generation_config": gc}
    if method == "hf.assisted":
        kwargs["assistant_model"] = draft.model
    rec = _ForwardRecorder(model, draft.model if method == "hf.assisted" else None)
    verbosity = _quiet_transformers()
    try:
        device_sync(target.device)
        t0 = time.perf_counter()
        out = model.generate(ids, **kwargs)  # (1, T_prompt + new)
        device_sync(target.device)
        wall = time.perf_counter() - t0
    finally:
        rec.close()
        _restore_transformers(verbosity)
    new = out[0, len(prompt_ids):].tolist()
    trace = _build_trace(method, hf_settings(method, target, draft), prompt_ids, new, rec, t0, wall,
                         set(target.eos_token_ids))
    trace.peak_mem_mb = memory_mb(target.device)
    return new, trace


def _quiet_transformers() -> int:
    """Silence transformers' notice that assisted generation passes length arguments next to a config."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    return level


def _restore_transformers(level: int) -> None:
    from transformers.utils import logging

    logging.set_verbosity(level)
