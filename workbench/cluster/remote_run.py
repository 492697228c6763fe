"""One run decoded by a cluster worker and recorded in this process's store, like a local run.

workbench.api.run validates its input, then comes here when a cluster is set.
The worker loads the models, encodes the prompt and checks it fits (a bad
input fails before any row is written, as locally); this process then writes
the run ``running`` with the worker's env, appends the steps as they stream
in (every api.STEP_FLUSH_EVERY), calls `on_step` for each one, and closes the
row ``finished``, or ``failed`` with the worker's error, or ``interrupted``
when the worker's process dies mid-run (WorkerDiedError is raised then).

Steps travel through a streaming generator (each one sent when it is made);
through Ray Client, which cannot stream, the caller long-polls the same event
list instead.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from .address import WorkerDiedError, _first_line, connect, is_client, require_ray
from .pool import Worker, get_pool

logger = logging.getLogger(__name__)

BACKPRESSURE = 64  # steps a worker may stream ahead of a slow caller


def run_on_cluster(address: str, *, method: str, prompt: Any, target: str, draft: str | None,
                   params: dict[str, Any], sampling, max_new_tokens: int, chat: bool | None, device: str | None,
                   store: Any | None, log: bool, source: str, benchmark_id: str | None, trace: bool,
                   on_step: Callable | None, progress: Callable[[str], None] | None, drafting_method: str | None,
                   backend: str = "eager"):
    """Decode on a worker of the cluster at `address`; returns an api.RunResult (with `worker` set)."""
    from ..api import RunResult, _chat_text

    ray = require_ray()
    address = connect(address)
    say = progress or (lambda _msg: None)
    pool = get_pool(address)
    say(f"cluster: getting a worker on {address}...")
    worker = pool.acquire(target, device)
    alive = True
    try:
        say(f"cluster: loading {target} on {worker.where}...")
        request = {"method": method, "prompt": prompt, "target": target, "draft": draft, "params": params,
                   "sampling": sampling.to_dict(), "max_new_tokens": max_new_tokens, "chat": chat, "device": device,
                   "trace": trace, "drafting_method": drafting_method, "backend": backend}
        try:
            opened = ray.get(worker.handle.open_run.remote(request))
        except ray.exceptions.RayActorError as exc:
            alive = False
            pool.discard(worker)
            raise WorkerDiedError(f"the worker on {worker.where} died before the run started: "
                                  f"{_first_line(exc)}") from None
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
        env = {**opened["env"], "cluster": address}
        if log and store is None:
            from store import RunStore

            store = RunStore()
        run_id = None
        if log:
            run_id = store.start_run(
                method=method, target=opened["target"], draft=opened["draft"],
                prompt=prompt if isinstance(prompt, str) else _chat_text(prompt),
                prompt_json=prompt if isinstance(prompt, list) else None,
                params={**params, "max_new_tokens": max_new_tokens, "chat": chat},
                sampling=sampling.to_dict(), env=env, benchmark_id=benchmark_id, source=source)
        try:
            tr, text = _follow(ray, worker, opened, method, params, store if log else None, run_id, on_step)
        except ray.exceptions.RayActorError as exc:
            alive = False
            pool.discard(worker)
            raise WorkerDiedError(f"the worker on {worker.where} died mid-run: {_first_line(exc)}") from None
        result = _result(tr, text)
        if log:
            store.finish_run(run_id, tr, text)
        return RunResult(run_id=run_id, method=method, target=opened["target"], draft=opened["draft"], prompt=prompt,
                         output_text=text, output_ids=result.output_ids, trace=tr, result=result,
                         worker=opened["env"]["worker"])
    finally:
        if alive:
            pool.release(worker, models=(target, device))


def _follow(ray, worker: Worker, opened: dict[str, Any], method: str, params: dict[str, Any], store, run_id,
            on_step):
    """Read the run's events into a Trace, writing steps to the store; close the row on any failure."""
    from ..api import StepWriter
    from ..trace import Step, Trace

    tr = Trace(method=method, params=dict(params), prompt_ids=list(opened["prompt_ids"]))
    write_steps = StepWriter(store, run_id)
    closed = False
    try:
        for ev in _events(ray, worker, opened["token"]):
            if ev["kind"] == "step":
                step = Step.from_dict(ev["step"])
                tr.steps.append(step)
                write_steps(tr)
                if on_step:
                    on_step(step, tr)
            elif ev["kind"] == "end":
                tr.wall_s = ev["wall_s"]
                tr.peak_mem_mb = float("nan") if ev["peak_mem_mb"] is None else ev["peak_mem_mb"]
                tr.stop_reason = ev["stop_reason"]
                return tr, ev["text"]
            elif ev["kind"] == "error":  # the decode itself failed on the worker
                exc = ev["error"]
                closed = True
                _close(store, run_id, exc, tr, ev.get("text", ""))
                raise exc
        raise WorkerDiedError(f"the worker on {worker.where} ended the run without a result")
    except ray.exceptions.RayActorError as exc:
        _close(store, run_id, exc, tr, "", interrupted=True,
               error=f"interrupted: the worker on {worker.where} (pid {worker.info.get('pid')}) died: "
                     f"{_first_line(exc)}")
        raise
    except BaseException as exc:
        if not closed:  # on_step raised (the app's Stop), or the stream broke: stop the worker, close the row
            _cancel(worker, opened["token"])
            _close(store, run_id, exc, tr, "")
        raise


def _events(ray, worker: Worker, token: str) -> Iterator[dict[str, Any]]:
    if not is_client():
        gen = worker.handle.stream.options(num_returns="streaming",
                                           _generator_backpressure_num_objects=BACKPRESSURE).remote(token)
        for ref in gen:
            yield ray.get(ref)
        return
    n = 0
    while True:  # Ray Client: long polls over the same events
        new = ray.get(worker.handle.poll.remote(token, n))
        n += len(new)
        yield from new


def _cancel(worker: Worker, token: str) -> None:
    try:
        worker.handle.cancel.remote(token)
    except Exception:  # noqa: BLE001 - the worker is gone; nothing to stop
        pass


def _close(store, run_id, exc: BaseException, tr, text: str, **how) -> None:
    if store is not None:
        from ..api import close_unfinished

        close_unfinished(store, run_id, exc, tr, text, **how)


def _result(tr, text: str):
    from ..engine import GenerationResult

    return GenerationResult(output_ids=tr.output_ids, text=text, trace=tr, summary=tr.summary())


def unwrap(exc: BaseException) -> BaseException:
    """The worker's own exception inside a RayTaskError (ConfigError, ModelError, ...), else one line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception):
        return cause
    return RuntimeError(_first_line(exc))
