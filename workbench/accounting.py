"""Measuring a run's quality against the target's own plain decoding: the NLLs and the baseline.

`measure_quality(target, prompt_ids, output_ids, ...)` is the entry point: given a run's output and its
baseline's (the target's plain decoding of the same prompt with the same sampling settings and token
budget: a stored ``autoregressive`` run, or one decoded here with `decode_baseline`), it fills in every
measure of workbench.quality. It runs after the decode, outside the timed region: a run's tokens/s never
includes it.

The NLL has one definition (workbench.sampling.token_nll_rows): the full target's raw logits at the token's
position, log-softmax at temperature 1 (no top-k/top-p: the sampling settings shape which tokens a run picks,
the likelihood says how plausible the full target finds them). Where each NLL comes from, first that applies:

1. an output identical to its baseline whose NLL is known: that NLL (the same tokens after the same prompt);
2. the decode itself (Trace.output_nll): every committed token was checked by the full target in a verification
   forward (plain decoding, every drafting method, relaxed acceptance, BiLD's and early exit's tokens, which
   the engine's target forward reads in full), and the engine kept that row's NLL (workbench.engine);
3. a teacher-forced forward of the target's plain module (no compiled backend, no compressed cache) over
   prompt + output (`token_nll`): for a run whose decode did not give them (a compressed KV cache, whose
   logits are not the full target's; a trace read back from the store). A run under KV-cache compression
   keeps the full-precision keys/values its prefill computed for the prompt (engine.generate's
   keep_prompt_kv), and the forward then runs over the output alone. The prefix the output shares with its
   baseline reuses the baseline's per-token NLLs when they are known, and the LM head then reads only the
   positions after the first divergence.

The baseline's own NLL comes the same way (its stored mean, its decode's per-token values, or a forward).
2 and 3 agree within float tolerance (tests/test_free_nll.py).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .backend.eager import EagerSession
from .config import BASELINE, DecodeConfig, SamplingConfig
from .engine import GenerationResult, generate
from .kv_cache import LayerRows
from .quality import Quality, common_prefix, compare
from .sampling import token_nll_rows


@torch.inference_mode()
def token_nll(target, prompt_ids: Sequence[int], ids: Sequence[int], start: int = 0,
              prompt_kv: LayerRows | None = None) -> list[float]:
    """The negative log-likelihood (nats) of each of `ids[start:]` under `target` (a LoadedModel), teacher-forced
    after `prompt_ids` + `ids[:start]`, at temperature 1: one forward whose LM head reads only the positions that
    predict ids[start:]. It runs over prompt + ids[:-1], or, given the full target's keys/values of the prompt
    from the decode's prefill (`prompt_kv`), over the prompt's last token + ids[:-1] after them."""
    n = len(ids)
    if start >= n:
        return []
    if not prompt_ids:
        raise ValueError("the NLL of an output needs its prompt (at least one token)")
    P = len(prompt_ids)
    if prompt_kv is not None and len(prompt_kv) and prompt_kv[0][0].shape[-2] == P:
        # the rows of the prompt but its last token: that token's row predicts ids[0]
        session = EagerSession(target.model)
        for i, (k, v) in enumerate(prompt_kv):
            session.cache.update(k[..., :P - 1, :], v[..., :P - 1, :], i)
        session.length = P - 1
        seq = torch.tensor([[prompt_ids[-1]] + list(ids[:-1])], device=target.device)  # (1, N)
        logits = session.forward(seq, keep=n - start)  # (N - start, V)
    else:
        seq = torch.tensor([list(prompt_ids) + list(ids[:-1])], device=target.device)  # (1, P + N - 1)
        # the last N - start positions (P-1+start .. P+N-2) predict ids[start..N-1]
        logits = target.model(input_ids=seq, use_cache=False, logits_to_keep=n - start).logits[0]  # (N - start, V)
    return token_nll_rows(logits, list(ids[start:])).tolist()


def mean_nll(target, prompt_ids: Sequence[int], ids: Sequence[int]) -> float | None:
    """Mean of `token_nll` (None for an empty output)."""
    return _mean(token_nll(target, prompt_ids, ids))


def forward_nll(target, prompt_ids: Sequence[int], ids: Sequence[int], baseline_ids: Sequence[int] = (),
                baseline_token_nll: Sequence[float] | None = None, prompt_kv: LayerRows | None = None) -> list[float]:
    """Each of `ids`' NLLs by a forward of the full target, reusing the baseline's per-token NLLs (when known) over
    the prefix both outputs share: the same tokens after the same context have the same NLL. prompt_kv: the
    prompt's keys/values from the decode (`token_nll`)."""
    known = common_prefix(ids, baseline_ids) if baseline_token_nll is not None else 0
    head = list(baseline_token_nll[:known]) if known else []
    return head + token_nll(target, prompt_ids, ids, start=known, prompt_kv=prompt_kv)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class BaselineOutput:
    """What a run is compared against: the target's plain decoding of its prompt (ids, text), the mean NLL of
    that output when already measured, the stored run it came from (None: not stored), and its per-token NLLs
    when known in this process (its decode's Trace.output_nll; the store keeps only the mean)."""

    output_ids: list[int]
    text: str
    nll: float | None = None
    run_id: str | None = None
    token_nll: list[float] | None = None


def decode_baseline(target, prompt_ids: Sequence[int], *, sampling: SamplingConfig = SamplingConfig(),
                    decode: DecodeConfig = DecodeConfig(), backend: str = "eager") -> GenerationResult:
    """The target's plain decoding of the prompt with these settings and no other option: what a run without a
    stored baseline is compared against."""
    return generate(target, BASELINE, list(prompt_ids), sampling=sampling, decode=decode, backend=backend)


def measure_quality(target, prompt_ids: Sequence[int], output_ids: Sequence[int], *,
                    baseline_ids: Sequence[int], output_text: str | None = None, baseline_text: str | None = None,
                    baseline_nll: float | None = None, task: tuple[str, Sequence[str]] | None = None,
                    baseline_run: str | None = None, nll: bool = True,
                    output_token_nll: Sequence[float] | None = None,
                    baseline_token_nll: Sequence[float] | None = None, prompt_kv: LayerRows | None = None) -> Quality:
    """A run's Quality against its baseline (workbench.quality defines every measure).

    target: the LoadedModel that decoded the run (its plain module scores the NLLs a decode did not give).
    output_text / baseline_text: the decoded texts (None: decoded from the ids with the target's tokenizer).
    baseline_nll: the baseline output's mean NLL when already known (None: from baseline_token_nll, else
    measured here, unless the outputs are identical, when it equals the output's).
    output_token_nll / baseline_token_nll: each output token's NLL under the full target when known (a decode's
    Trace.output_nll), so no forward is needed for it; baseline_token_nll also spares a forward the prefix both
    outputs share. Otherwise one forward per output not yet scored; none when the output is the baseline's.
    prompt_kv: the full target's keys/values of the prompt from the run's prefill (GenerationResult.prompt_kv),
    so the output's forward runs over the output alone.
    task: the suite item's (check, answers) for a task score, or None.
    baseline_run: the stored baseline's run id (recorded in the Quality).
    nll: False skips the NLLs (the NLL fields stay None).
    """
    t0 = time.perf_counter()
    output_ids, baseline_ids = list(output_ids), list(baseline_ids)
    for name, ids, per in (("an output", output_ids, output_token_nll),
                           ("a baseline", baseline_ids, baseline_token_nll)):
        if per is not None and len(per) != len(ids):
            raise ValueError(f"{len(per)} per-token NLLs for {name} of {len(ids)} tokens")
    if output_text is None:
        output_text = target.decode(output_ids)
    if baseline_text is None:
        baseline_text = target.decode(baseline_ids)
    out_nll = None
    if nll:
        same = output_ids == baseline_ids
        if baseline_nll is None and baseline_token_nll is not None:
            baseline_nll = _mean(baseline_token_nll)
        if same and baseline_nll is not None:
            out_nll = baseline_nll  # the same tokens after the same prompt: one value, so the gap is exactly 0
        elif output_token_nll is not None:
            out_nll = _mean(output_token_nll)  # read off the decode's own forwards
        else:
            out_nll = _mean(forward_nll(target, prompt_ids, output_ids, baseline_ids, baseline_token_nll, prompt_kv))
        if baseline_nll is None:
            baseline_nll = out_nll if same else mean_nll(target, prompt_ids, baseline_ids)
    q = compare(output_ids, baseline_ids, output_text=output_text, baseline_text=baseline_text, nll=out_nll,
                baseline_nll=baseline_nll if nll else None, task=task, baseline_run=baseline_run)
    return replace(q, accounting_s=time.perf_counter() - t0)


def quality_against(target, prompt_ids: Sequence[int], output_ids: Sequence[int], output_text: str,
                    baseline: BaselineOutput, task: tuple[str, Sequence[str]] | None = None,
                    output_token_nll: Sequence[float] | None = None, prompt_kv: LayerRows | None = None) -> Quality:
    """`measure_quality` against a BaselineOutput; output_token_nll: the run's Trace.output_nll; prompt_kv: its
    GenerationResult.prompt_kv."""
    return measure_quality(target, prompt_ids, output_ids, baseline_ids=baseline.output_ids,
                           output_text=output_text, baseline_text=baseline.text, baseline_nll=baseline.nll,
                           task=task, baseline_run=baseline.run_id, output_token_nll=output_token_nll,
                           baseline_token_nll=baseline.token_nll, prompt_kv=prompt_kv)
