"""Measuring a run's quality against the target's own plain decoding: the teacher-forced NLL and the baseline.

`measure_quality(target, prompt_ids, output_ids, ...)` is the entry point: given a run's output and its
baseline's (the target's plain decoding of the same prompt with the same sampling settings and token
budget: a stored ``autoregressive`` run, or one decoded here with `decode_baseline`), it runs the full
target once, teacher-forced, over prompt + output to get the output's NLL (and once more over the
baseline's output when it differs and its NLL is not known yet; not at all when the output is the
baseline's, whose NLL is known), then fills in every measure of workbench.quality. It runs after the decode, outside the timed region: a run's tokens/s never includes it.

The NLL is the model's own (temperature 1, no top-k/top-p): the sampling settings shape which tokens
a run picks, the likelihood says how plausible the target finds them. The target's plain module runs
it (no KV cache, no compiled backend, no compressed cache and no early exit), so the NLL is the full
target's whatever options the run decoded with.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .config import BASELINE, DecodeConfig, SamplingConfig
from .engine import GenerationResult, generate
from .quality import Quality, compare


@torch.inference_mode()
def token_nll(target, prompt_ids: Sequence[int], ids: Sequence[int]) -> list[float]:
    """The negative log-likelihood (nats) of each of `ids` under `target` (a LoadedModel), teacher-forced
    after `prompt_ids`, at temperature 1: one forward over prompt + ids."""
    if not ids:
        return []
    if not prompt_ids:
        raise ValueError("the NLL of an output needs its prompt (at least one token)")
    seq = torch.tensor([list(prompt_ids) + list(ids)], device=target.device)  # (1, P + N)
    # the logits at positions P-1 .. P+N-2 predict ids[0..N-1]; keep N + 1 and drop the last
    logits = target.model(input_ids=seq, use_cache=False, logits_to_keep=len(ids) + 1).logits[0, :-1]  # (N, V)
    logp = logits.float().log_softmax(-1)  # (N, V)
    want = torch.tensor(list(ids), device=logp.device)[:, None]  # (N, 1)
    return [-float(x) for x in logp.gather(-1, want).squeeze(-1)]


def mean_nll(target, prompt_ids: Sequence[int], ids: Sequence[int]) -> float | None:
    """Mean of `token_nll` (None for an empty output)."""
    per = token_nll(target, prompt_ids, ids)
    return sum(per) / len(per) if per else None


@dataclass(frozen=True)
class BaselineOutput:
    """What a run is compared against: the target's plain decoding of its prompt (ids, text), the mean NLL of
    that output when already measured, and the stored run it came from (None: not stored)."""

    output_ids: list[int]
    text: str
    nll: float | None = None
    run_id: str | None = None


def decode_baseline(target, prompt_ids: Sequence[int], *, sampling: SamplingConfig = SamplingConfig(),
                    decode: DecodeConfig = DecodeConfig(), backend: str = "eager") -> GenerationResult:
    """The target's plain decoding of the prompt with these settings and no other option: what a run without a
    stored baseline is compared against."""
    return generate(target, BASELINE, list(prompt_ids), sampling=sampling, decode=decode, backend=backend)


def measure_quality(target, prompt_ids: Sequence[int], output_ids: Sequence[int], *,
                    baseline_ids: Sequence[int], output_text: str | None = None, baseline_text: str | None = None,
                    baseline_nll: float | None = None, task: tuple[str, Sequence[str]] | None = None,
                    baseline_run: str | None = None, nll: bool = True) -> Quality:
    """A run's Quality against its baseline (workbench.quality defines every measure).

    target: the LoadedModel that decoded the run (its plain module scores the NLLs).
    output_text / baseline_text: the decoded texts (None: decoded from the ids with the target's tokenizer).
    baseline_nll: the baseline output's mean NLL when already known (None: measured here, unless the
    outputs are identical, when it equals the output's). An output identical to its baseline whose NLL is
    known needs no forward at all (the lossless case); otherwise one forward per output not yet scored.
    task: the suite item's (check, answers) for a task score, or None.
    baseline_run: the stored baseline's run id (recorded in the Quality).
    nll: False skips both forwards (the NLL fields stay None).
    """
    t0 = time.perf_counter()
    output_ids, baseline_ids = list(output_ids), list(baseline_ids)
    if output_text is None:
        output_text = target.decode(output_ids)
    if baseline_text is None:
        baseline_text = target.decode(baseline_ids)
    out_nll = None
    if nll:
        if output_ids == baseline_ids and baseline_nll is not None:
            out_nll = baseline_nll  # the same tokens after the same prompt: no forward needed
        else:
            out_nll = mean_nll(target, prompt_ids, output_ids)
        if baseline_nll is None:
            baseline_nll = out_nll if output_ids == baseline_ids else mean_nll(target, prompt_ids, baseline_ids)
    q = compare(output_ids, baseline_ids, output_text=output_text, baseline_text=baseline_text, nll=out_nll,
                baseline_nll=baseline_nll if nll else None, task=task, baseline_run=baseline_run)
    return replace(q, accounting_s=time.perf_counter() - t0)


def quality_against(target, prompt_ids: Sequence[int], output_ids: Sequence[int], output_text: str,
                    baseline: BaselineOutput, task: tuple[str, Sequence[str]] | None = None) -> Quality:
    """`measure_quality` against a BaselineOutput."""
    return measure_quality(target, prompt_ids, output_ids, baseline_ids=baseline.output_ids,
                           output_text=output_text, baseline_text=baseline.text, baseline_nll=baseline.nll,
                           task=task, baseline_run=baseline.run_id)
