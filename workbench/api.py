"""One call to decode and log a run, and one to run a benchmark: what the CLI, the app and notebooks use.

`run()` checks everything before touching the store (workbench.preflight, so bad
input never leaves a row), then decodes here or, when a cluster is chosen, on a
cluster worker (workbench.cluster): here it loads and checks the models, compiles
what the backend needs before the clock starts, and records the run with
workbench.record while the engine decodes; a worker streams the same steps back
and they are recorded the same way. `run_benchmark()` likewise runs a benchmark in
this process (workbench.bench.runner) or fans it out over a cluster.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from store import RunStore

from .accounting import BaselineOutput, decode_baseline, quality_against
from .bench.runner import BenchConfig, plan_benchmark, run_in_process, to_stderr
from .cluster import cluster_address, run_benchmark_on_cluster, run_on_cluster
from .config import BASELINE, ConfigError, SamplingConfig
from .engine import generate, prepare_run
from .models import EMBEDDED_DEFAULT, load_model
from .preflight import check_models, check_request
from .quality import Quality, check_task, identity_note
from .record import Recording, RunResult, environment, prompt_text, run_history, stored_baseline
from .trace import Step, Trace

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "run", "run_benchmark"]


def run(method: str, prompt: str | list[dict], *, target: str | None = None, draft: str | None = None,
        params: dict[str, Any] | None = None, sampling: SamplingConfig | None = None,
        max_new_tokens: int = 128, chat: bool | None = None, device: str | None = None,
        store: Any | None = None, log: bool = True, source: str = "api", benchmark_id: str | None = None,
        trace: bool = True, on_step: Callable[[Step, Trace], None] | None = None,
        progress: Callable[[str], None] | None = None, cluster: str | None = None,
        backend: str | None = None, quality: bool = True,
        task: tuple[str, list[str]] | None = None, acceptance: Any = None, kv: Any = None) -> RunResult:
    """Decode `prompt` with `method` and (by default) log the run to the store.

    prompt: plain text, or a list of chat messages ({"role", "content"}).
    chat: apply the chat template to a text prompt (None: when the model has one).
    store: a store.RunStore; None opens the default one when log=True.
    cluster: decode on a Ray worker (local, auto or ray://HOST:PORT; None: $WORKBENCH_CLUSTER,
    else in process); the run is recorded here all the same (workbench.cluster).
    backend: "eager" (default) or "compiled" (workbench.backend); compiling happens before
    the run's clock starts and is recorded as env["warmup_s"].
    quality: measure the run's quality against the target's plain decoding after the decode, outside its
    timed region (`_account`; not for cluster runs). task: (check, answers) for a task score
    (workbench.quality.score_task), or None.
    acceptance: the verifier's acceptance rule, a workbench.config.AcceptanceConfig or its text form
    ('typical:eps=0.09,delta=0.3'; None: exact). A relaxed rule makes the run lossy (Trace.lossy).
    kv: KV-cache compression of the target, a workbench.config.KVConfig or its text form ('h2o:budget=0.5',
    'int4'; None: none; eager backend only); an evicting or quantising one makes the run lossy, its note gives
    the memory saved.
    """
    # ---- check cheap things first: nothing is loaded or recorded on bad input
    req = check_request(method, prompt, draft=draft, params=params, sampling=sampling,
                        max_new_tokens=max_new_tokens, chat=chat, backend=backend, trace=trace,
                        acceptance=acceptance, kv=kv)
    if task is not None:
        task = check_task(*task)
    target = target or EMBEDDED_DEFAULT
    address = cluster_address(cluster)
    if address is not None and (req.acceptance.rule != "exact" or req.kv.active):
        raise ConfigError("relaxed acceptance and KV-cache compression run in process only: leave out the cluster")
    if address is not None:  # the worker loads, encodes and decodes; this process records the run
        return run_on_cluster(address, req, prompt=prompt, target=target, chat=chat, device=device, store=store,
                              log=log, source=source, benchmark_id=benchmark_id, on_step=on_step, progress=progress)

    # ---- models
    tgt = load_model(target, device=device, progress=progress)
    drf = load_model(req.draft, device=device, progress=progress) if req.draft else None
    prompt_ids = tgt.encode_prompt(prompt, chat=chat)
    check_models(method, tgt, drf, prompt_ids, max_new_tokens)
    prepared = prepare_run(req.backend, [tgt, drf], len(prompt_ids), max_new_tokens, progress)  # kernels too
    env = {**environment(tgt), **prepared}

    # ---- record and decode
    if log and store is None:
        store = RunStore()
    tr = Trace(method=method, params=req.params, prompt_ids=list(prompt_ids))
    with Recording(store if log else None, tr, prompt=prompt, decode_text=tgt.decode, method=method,
                   target=tgt.spec, draft=drf.spec if drf else None,
                   params={**req.params, "max_new_tokens": max_new_tokens, "chat": chat,
                           **({"acceptance": req.acceptance.text()} if req.acceptance.rule != "exact" else {}),
                           **({"kv": req.kv.text()} if req.kv.active else {})},
                   sampling=req.sampling.to_dict(), env=env, benchmark_id=benchmark_id, source=source) as rec:

        def _on_step(step: Step, t: Trace) -> None:
            rec.on_step(step, t)
            if on_step:
                on_step(step, t)

        result = generate(tgt, method, prompt_ids, draft=drf, params=req.params, sampling=req.sampling,
                          decode=req.decode, on_step=_on_step, trace=tr, backend=req.backend,
                          history=run_history(store if log else None), progress=progress,
                          acceptance=req.acceptance, kv=req.kv, keep_prompt_kv=quality)
        # after the decode: the run's wall time and tokens/s are already fixed and never include this
        q = None
        if quality:
            q = _account(tgt, prompt, prompt_ids, result, method=method, req=req, max_new_tokens=max_new_tokens,
                         env=env, store=store if log else None, task=task, progress=progress)
        result.prompt_kv = None  # the accounting's copy of the prompt's keys/values: not kept past it
        if q is not None and (note := identity_note(q, lossless=result.trace.lossless, greedy=req.sampling.greedy)):
            result.trace.notes.append(note)
        rec.finish(result.trace, result.text, quality=q)
    return RunResult(run_id=rec.run_id, method=method, target=tgt.spec, draft=drf.spec if drf else None,
                     prompt=prompt, output_text=result.text, output_ids=result.output_ids, trace=result.trace,
                     result=result, quality=q)


def _account(tgt, prompt: str | list[dict], prompt_ids: list[int], result, *, method: str, req, max_new_tokens: int,
             env: dict[str, Any], store: Any | None, task, progress) -> Quality | None:
    """The run's quality (workbench.accounting) against the stored baseline (workbench.record.stored_baseline), or
    against the target's plain decoding run once here (not recorded: a plain run the user makes is). A plain run
    is its own baseline (or the stored one, when their outputs are the same: its NLL is then known, and no forward
    runs). None, with a warning, when the accounting fails: the run is kept."""
    try:
        base = stored_baseline(store, target=tgt.spec, prompt=prompt_text(prompt), prompt_ids=prompt_ids,
                               sampling=req.sampling.to_dict(), max_new_tokens=max_new_tokens, env=env)
        if method == BASELINE and result.trace.lossless and (base is None or base.output_ids != result.output_ids):
            base = BaselineOutput(result.output_ids, result.text, token_nll=result.trace.output_nll)  # its own
        elif base is None:  # none stored: the target's plain decoding once, for this measurement only
            if progress:
                progress("quality: decoding the target's plain baseline of this prompt (none is stored)")
            b = decode_baseline(tgt, prompt_ids, sampling=req.sampling, decode=req.decode, backend=req.backend)
            base = BaselineOutput(b.output_ids, b.text, token_nll=b.trace.output_nll)
        return quality_against(tgt, prompt_ids, result.output_ids, result.text, base, task,
                               output_token_nll=result.trace.output_nll, prompt_kv=result.prompt_kv)
    except Exception as exc:  # noqa: BLE001 - the decode succeeded; losing its accounting must not lose the run
        logger.warning("the run's quality could not be measured (%s: %s)", type(exc).__name__, exc)
        return None


def run_benchmark(cfg: BenchConfig, store: Any, progress: Callable[[str], None] | None = to_stderr) -> str:
    """Run the benchmark `cfg` describes, in this process or (cfg.cluster) over a cluster's workers, log it to
    `store` and return its id (workbench.bench.runner says what is measured and in which order)."""
    address = cluster_address(cfg.cluster)
    if address is None:
        return run_in_process(cfg, store, progress)
    arms, questions = plan_benchmark(cfg, cluster=True)
    return run_benchmark_on_cluster(cfg, store, address, arms, questions, progress or (lambda _msg: None))

