"""ModelWorker: the Ray actor that holds loaded models and runs workbench.engine.generate for a caller.

One worker is one device slot (one GPU, or a few CPUs) holding one target (and
its drafts) at a time; asked for another target it frees the old one first.
It decodes one thing at a time (a run, or a benchmark block); its other
threads answer `stream` / `poll` / `cancel` meanwhile.

A run (`open_run`): the worker loads the models, encodes the prompt with its
tokenizer, checks that it fits, and returns the prompt ids and its environment
before decoding starts, so the caller can record the run; `generate` then runs
in a thread whose on_step callback (outside the timed region, as for a local
run) appends each Step as a dict (Step.to_dict) to the run's event list. The
caller reads the events with `stream` (a streaming generator: each step is
sent as it is made) or, through Ray Client, which cannot stream, with `poll`
(a long poll). The last event is ``end`` (the text, wall time, peak memory,
stop reason) or ``error`` (the exception).

A benchmark block (`run_block`): every arm on every turn of one question for
one repeat, interleaved as the in-process runner does (workbench.bench.runner
.decode_block), after this worker's own warm-up; the traces come back whole,
and the caller stores them.
"""
from __future__ import annotations

import os
import pickle
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import torch

from ..bench import runner
from ..config import DecodeConfig, SamplingConfig
from ..engine import generate, prepare_run
from ..models import clear_loaded, load_model
from ..preflight import check_models
from ..record import environment, run_history
from ..trace import Trace

POLL_WAIT_S = 1.0  # longest a poll waits for a new event


class RunCancelled(Exception):
    """The caller stopped listening (its on_step raised, the page went away)."""


class _Events:
    """One run's events, appended by the decode thread and read by stream / poll."""
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.done = False
        self.cancel = threading.Event()
        self._cond = threading.Condition()

    def put(self, event: dict[str, Any], final: bool = False) -> None:
        with self._cond:
            self.items.append(event)
            self.done = self.done or final
            self._cond.notify_all()

    def since(self, start: int, timeout: float | None) -> tuple[list[dict[str, Any]], bool]:
        """Events from index `start` (waiting up to `timeout` for one) and whether the run has ended."""
        with self._cond:
            if len(self.items) <= start and not self.done:
                self._cond.wait(timeout)
            return self.items[start:], self.done


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class ModelWorker:
    """The actor body (pool.py makes it a Ray actor with the worker's resources)."""
    def __init__(self) -> None:
        self._busy = threading.Lock()  # one decode or block at a time
        self._target_key: tuple[str, str | None] | None = None  # (target spec, device) loaded
        self._runs: dict[str, _Events] = {}
        self._benches: dict[str, dict[str, Any]] = {}  # fan-out session -> env, hf arms, warmed

    # ---------------------------------------------------------------- who and where

    def info(self) -> dict[str, Any]:
        """Node, host, process and accelerator of this worker (what each run's env records)."""
        import ray  # here: Ray only when a cluster is used (an optional extra); inside an actor it is there

        ctx = ray.get_runtime_context()
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "pid": os.getpid(), "actor_id": ctx.get_actor_id(),
                "gpu": gpu, "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
                "torch_threads": torch.get_num_threads()}

    def status(self) -> dict[str, Any]:
        """What the worker is doing now: decoding (a run or a block) or idle, and the models it holds."""
        return {"busy": self._busy.locked(), "models": self._target_key, "open_runs": len(self._runs)}

    def loaded(self) -> tuple[str, str | None] | None:
        """(target spec, device) this worker holds, if any."""
        return self._target_key

    def _models(self, target: str, draft: str | None, device: str | None):
        """The target and draft models (the caller checks them: preflight.check_models, or a benchmark's arms)."""
        key = (target, device)
        if self._target_key is not None and self._target_key != key:
            self._free()
        self._target_key = key
        tgt = load_model(target, device=device)
        drf = load_model(draft, device=device) if draft else None
        return tgt, drf

    @staticmethod
    def _generate(*args, **kwargs):
        """The engine's generate reading this machine's run store as run history (sam corpus=history)."""
        return generate(*args, history=run_history(), **kwargs)

    def _free(self) -> None:
        clear_loaded()
        self._benches.clear()
        self._target_key = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _env(self, tgt) -> dict[str, Any]:
        return {**environment(tgt), "worker": self.info()}

    # ---------------------------------------------------------------- one run

    def open_run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Load, encode and check, then start decoding; returns the run's token, prompt ids, models and env."""
        self._busy.acquire()
        started = False
        try:
            tgt, drf = self._models(request["target"], request.get("draft"), request.get("device"))
            prompt_ids = tgt.encode_prompt(request["prompt"], chat=request.get("chat"))
            check_models(request["method"], tgt, drf, prompt_ids, request["max_new_tokens"])
            env = {**self._env(tgt), **prepare_run(request.get("backend", "eager"), [tgt, drf], len(prompt_ids),
                                                    request["max_new_tokens"])}
            token = uuid.uuid4().hex
            events = self._runs[token] = _Events()
            threading.Thread(target=self._decode, args=(request, tgt, drf, prompt_ids, events),
                             name=f"decode-{token[:8]}", daemon=True).start()
            started = True
        finally:
            if not started:
                self._busy.release()
        return {"token": token, "prompt_ids": list(prompt_ids), "target": tgt.spec,
                "draft": drf.spec if drf else None, "env": env}

    def _decode(self, request: dict[str, Any], tgt, drf, prompt_ids: list[int], events: _Events) -> None:
        def on_step(step, _trace) -> None:
            if events.cancel.is_set():
                raise RunCancelled("the caller stopped the run")
            events.put({"kind": "step", "step": step.to_dict()})

        tr = Trace(method=request["method"], params=dict(request["params"]), prompt_ids=list(prompt_ids))
        try:
            result = self._generate(tgt, request["method"], prompt_ids, draft=drf, params=request["params"],
                                    sampling=SamplingConfig(**request["sampling"]),
                                    decode=DecodeConfig(max_new_tokens=request["max_new_tokens"],
                                                        trace=request.get("trace", True)),
                                    on_step=on_step, trace=tr, backend=request.get("backend", "eager"),
                                    progress=lambda message: events.put({"kind": "progress", "message": message}))
            events.put({"kind": "end", "text": result.text, "wall_s": tr.wall_s,
                        "peak_mem_mb": None if tr.peak_mem_mb != tr.peak_mem_mb else tr.peak_mem_mb,
                        "stop_reason": tr.stop_reason, "notes": tr.notes}, final=True)
        except BaseException as exc:  # noqa: BLE001 - the caller raises it
            events.put({"kind": "error", "error": _picklable(exc), "text": tgt.decode(tr.output_ids)}, final=True)
        finally:
            self._busy.release()

    def stream(self, token: str) -> Iterator[dict[str, Any]]:
        """The run's events as they are made (call with num_returns="streaming")."""
        events = self._runs[token]
        n = 0
        try:
            while True:
                new, done = events.since(n, timeout=POLL_WAIT_S)
                for ev in new:
                    yield ev
                n += len(new)
                if done and n >= len(events.items):
                    return
        finally:
            self._runs.pop(token, None)

    def poll(self, token: str, start: int) -> list[dict[str, Any]]:
        """The run's events from index `start`, waiting up to POLL_WAIT_S for one (for Ray Client)."""
        events = self._runs.get(token)
        if events is None:
            raise KeyError(f"no run {token} on this worker")
        new, done = events.since(start, timeout=POLL_WAIT_S)
        if done and start + len(new) >= len(events.items):
            self._runs.pop(token, None)
        return new

    def cancel(self, token: str) -> None:
        """Stop a run at its next step."""
        events = self._runs.get(token)
        if events is not None:
            events.cancel.set()

    # ---------------------------------------------------------------- benchmark blocks

    def prepare_benchmark(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Load the benchmark's models, measure this worker's env (with bandwidth) and warm up, once per session."""
        with self._busy:
            return self._prepared(spec)

    def _prepared(self, spec: dict[str, Any]) -> dict[str, Any]:

        cfg = spec["cfg"]
        tgt, drf = self._models(spec["target"], cfg.draft, cfg.device)
        got = self._benches.get(spec["session"])
        if got is None:
            runner.check_bench_models(spec["arms"], tgt, drf)
            if cfg.threads is not None:
                torch.set_num_threads(cfg.threads)
            hf_arms = runner.hf_arms_for(cfg, tgt, drf)
            env = {**runner.bench_env(tgt, drf, cfg), "worker": self.info()}
            t0 = time.perf_counter()
            runner._warm_up(spec["arms"], hf_arms, runner.PromptUnit(spec["warm_question"], 0), tgt, drf, cfg,
                            self._generate, lambda _msg: None)
            got = self._benches[spec["session"]] = {
                "env": env, "hf_arms": hf_arms, "target": tgt.spec, "draft": drf.spec if drf else None,
                "warm_up_s": time.perf_counter() - t0}
        return got

    def run_block(self, spec: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
        """Decode one block (a question's turns x every arm, one repeat); returns its runs whole."""
        with self._busy:
            prep = self._prepared(spec)
            tgt, drf = self._models(spec["target"], spec["cfg"].draft, spec["cfg"].device)
            t0 = time.perf_counter()
            records, history = runner.decode_block(
                block["question"], block["repeat"], block.get("history"), list(spec["arms"]) + prep["hf_arms"],
                tgt, drf, spec["cfg"], self._generate)
            return {"records": records, "history": history, "env": prep["env"],
                    "seconds": time.perf_counter() - t0}
