"""One run decoded by a cluster worker and recorded in this process's store, like a local run.

workbench.api.run checks its input (workbench.preflight), then comes here when a cluster is chosen.
The worker loads the models, encodes the prompt and checks it fits (a bad
input fails before any row is written, as locally); this process then writes
the run ``running`` with the worker's env, appends the steps as they stream
in (workbench.record: the same Recording as a local run's), calls `on_step` for
each one, and closes the row ``finished``, or ``failed`` with the worker's error,
or ``interrupted`` when the worker's process dies mid-run (WorkerDiedError is
raised then).

Steps travel through a streaming generator (each one sent when it is made);
through Ray Client, which cannot stream, the caller long-polls the same event
list instead.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from store import RunStore

from ..engine import GenerationResult
from ..preflight import Request
from ..record import Recording, RunResult
from ..trace import Step, Trace
from .address import WorkerDiedError, _first_line, connect, is_client, require_ray
from .pool import Worker, get_pool

logger = logging.getLogger(__name__)

BACKPRESSURE = 64  # steps a worker may stream ahead of a slow caller


def run_on_cluster(address: str, req: Request, *, prompt: Any, target: str, chat: bool | None, device: str | None,
                   store: Any | None, log: bool, source: str, benchmark_id: str | None, on_step: Callable | None,
                   progress: Callable[[str], None] | None) -> RunResult:
    """Decode the checked request `req` on a worker of the cluster at `address`; returns a RunResult
    (with `worker` set), recorded in `store` (None: the default one) when `log`."""
    ray = require_ray()
    address = connect(address)
    say = progress or (lambda _msg: None)
    pool = get_pool(address)
    say(f"cluster: getting a worker on {address}...")
    worker = pool.acquire(target, device)
    alive = True
    try:
        say(f"cluster: loading {target} on {worker.where}...")
        request = {"method": req.method, "prompt": prompt, "target": target, "draft": req.draft,
                   "params": req.params, "sampling": req.sampling.to_dict(),
                   "max_new_tokens": req.decode.max_new_tokens, "chat": chat, "device": device,
                   "trace": req.decode.trace, "backend": req.backend}
        try:
            opened = ray.get(worker.handle.open_run.remote(request))
        except ray.exceptions.RayActorError as exc:
            alive = False
            pool.discard(worker)
            raise WorkerDiedError(f"the worker on {worker.where} died before the run started: "
                                  f"{_first_line(exc)}") from None
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
        if log and store is None:
            store = RunStore()
        tr = Trace(method=req.method, params=dict(req.params), prompt_ids=list(opened["prompt_ids"]))
        with Recording(store if log else None, tr, prompt=prompt, method=req.method, target=opened["target"],
                       draft=opened["draft"],
                       params={**req.params, "max_new_tokens": req.decode.max_new_tokens, "chat": chat},
                       sampling=req.sampling.to_dict(), env={**opened["env"], "cluster": address},
                       benchmark_id=benchmark_id, source=source) as rec:
            try:
                text = _follow(ray, worker, opened["token"], rec, on_step, say)
            except ray.exceptions.RayActorError as exc:  # the run is closed ``interrupted`` already
                alive = False
                pool.discard(worker)
                raise WorkerDiedError(f"the worker on {worker.where} died mid-run: {_first_line(exc)}") from None
            rec.finish(tr, text)
        result = GenerationResult(output_ids=tr.output_ids, text=text, trace=tr, summary=tr.summary())
        return RunResult(run_id=rec.run_id, method=req.method, target=opened["target"], draft=opened["draft"],
                         prompt=prompt, output_text=text, output_ids=result.output_ids, trace=tr, result=result,
                         worker=opened["env"]["worker"])
    finally:
        if alive:
            pool.release(worker, models=(target, device))


def _follow(ray, worker: Worker, token: str, rec: Recording, on_step: Callable | None,
            say: Callable[[str], None] = lambda _msg: None) -> str:
    """Read the run's events into the recording's Trace, writing its steps; returns the output text.

    A decode that failed on the worker closes the run ``failed`` with the worker's error and text; a
    worker that died closes it ``interrupted`` (WorkerDiedError); anything else here (on_step raising:
    the app's Stop, or a broken stream) stops the worker's decode and leaves the closing to the recording.
    A worker that died raises Ray's RayActorError on, for the caller to retire the worker.
    """
    tr = rec.trace
    try:
        for ev in _events(ray, worker, token):
            if ev["kind"] == "step":
                step = Step.from_dict(ev["step"])
                tr.steps.append(step)
                rec.on_step(step, tr)
                if on_step:
                    on_step(step, tr)
            elif ev["kind"] == "end":
                tr.wall_s = ev["wall_s"]
                tr.peak_mem_mb = float("nan") if ev["peak_mem_mb"] is None else ev["peak_mem_mb"]
                tr.stop_reason = ev["stop_reason"]
                tr.notes = list(ev.get("notes") or [])
                return ev["text"]
            elif ev["kind"] == "progress":  # set-up before the run's clock (measuring the worker's costs)
                say(ev["message"])
            elif ev["kind"] == "error":  # the decode itself failed on the worker
                exc = ev["error"]
                rec.fail(exc, ev.get("text", ""))
                raise exc
        raise WorkerDiedError(f"the worker on {worker.where} ended the run without a result")
    except ray.exceptions.RayActorError as exc:
        rec.fail(exc, "", interrupted=True,
                 error=f"interrupted: the worker on {worker.where} (pid {worker.info.get('pid')}) died: "
                       f"{_first_line(exc)}")
        raise
    except BaseException:
        if not rec.closed:  # on_step raised (the app's Stop), or the stream broke: stop the worker
            _cancel(worker, token)
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


def unwrap(exc: BaseException) -> BaseException:
    """The worker's own exception inside a RayTaskError (ConfigError, ModelError, ...), else one line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception):
        return cause
    return RuntimeError(_first_line(exc))
