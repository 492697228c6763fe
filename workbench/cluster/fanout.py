"""`workbench bench --cluster`: the benchmark's work spread over cluster workers, stored under one id here.

The unit of work is a *block*: one question (every turn) for one repeat, every
arm including the plain-decoding baseline, interleaved and rotated exactly as
the in-process runner does (workbench.bench.runner.decode_block). A block runs
in one worker process on one device after that worker's own warm-up, so each
speedup is still a ratio measured side by side on one device; the report
(computed from the store by the same code as an in-process benchmark's) pools
the blocks as it pools prompts.

Scheduling: every worker loads the models and warms up first (in parallel),
then takes the next block whenever it is idle. A later repeat of a multi-turn
question waits for repeat 0, whose baseline answers its prompts contain. A
block's runs are written only when the whole block has come back, so a block
whose worker dies is simply run again on another worker (at most
MAX_ATTEMPTS times): nothing is lost or counted twice. When no worker is
left, a new one is started. Each run's env is its worker's (node, host, GPU,
bandwidth); the benchmark's env is the first worker's, plus the list of workers.
"""
from __future__ import annotations

import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from ..bench.runner import Eta, bench_config, fmt_eta, store_run
from ..bench.suites import prompt_units
from ..models import EMBEDDED_DEFAULT
from .address import ClusterError, WorkerDiedError, _first_line, connect, require_ray
from .pool import Worker, WorkerPool, get_pool
from .remote_run import unwrap

MAX_ATTEMPTS = 3  # times one block is tried before the benchmark fails


@dataclass(frozen=True)
class Block:
    question: Any  # bench.suites.Question
    repeat: int

    @property
    def name(self) -> str:
        return f"question {self.question.key} r{self.repeat + 1}"


def run_benchmark_on_cluster(cfg, store, address: str, arms: list, questions: list, say) -> str:
    """Run the benchmark's blocks on the cluster at `address`; returns the benchmark id (see the module doc)."""
    ray = require_ray()
    address = connect(address)
    pool = get_pool(address)
    target = cfg.target or EMBEDDED_DEFAULT
    blocks = [Block(q, r) for r in range(cfg.repeats) for q in questions]
    kind = pool.kind_for(cfg.device)
    n = min(cfg.workers or pool.capacity(kind), len(blocks))
    say(f"bench: starting {n} worker{'s' * (n != 1)} on {address}...")
    workers = pool.acquire_many(n, target, cfg.device)
    if len(workers) < n:
        say(f"bench: the cluster had room for {len(workers)} of {n} workers")
    spec = {"session": uuid.uuid4().hex, "cfg": cfg, "target": target, "arms": list(arms),
            "warm_question": questions[0]}
    try:
        say(f"bench: loading the models and warming up on {len(workers)} worker{'s' * (len(workers) != 1)}...")
        preps = _prepare(ray, pool, workers, spec)
        first = preps[workers[0]]
        hf_arms = first["hf_arms"]
        units = prompt_units(questions)
        config = bench_config(cfg, first["target"], first["draft"], arms, hf_arms, questions, units)
        config["cluster"] = {"address": address, "workers": len(workers)}
        env = {**first["env"], "cluster": address, "workers": [preps[w]["env"]["worker"] for w in workers]}
        bench_id = store.start_benchmark(suite=cfg.suite, config=config, env=env)
        say(f"bench: benchmark {bench_id} | {len(units)} prompts ({len(questions)} questions) x "
            f"{len(arms) + len(hf_arms)} arms x {cfg.repeats} repeats in {len(blocks)} blocks on "
            f"{len(workers)} workers | target {first['target']}"
            + (f" draft {first['draft']}" if first["draft"] else ""))
        try:
            _Fanout(ray, pool, store, bench_id, cfg, spec, list(arms) + hf_arms, first, workers, say).run(blocks)
        except BaseException as exc:
            store.finish_benchmark(bench_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        store.finish_benchmark(bench_id)
        return bench_id
    finally:
        for w in workers:
            if w in pool.workers():
                pool.release(w, models=(target, cfg.device))


def _prepare(ray, pool: WorkerPool, workers: list[Worker], spec: dict[str, Any]) -> dict[Worker, dict[str, Any]]:
    """Every worker loads the models, measures its env and warms up, in parallel; dead ones are dropped."""
    refs = [(w, w.handle.prepare_benchmark.remote(spec)) for w in workers]
    preps: dict[Worker, dict[str, Any]] = {}
    for w, ref in refs:
        try:
            preps[w] = ray.get(ref)
        except ray.exceptions.RayActorError:
            pool.discard(w)
            workers.remove(w)
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
    if not workers:
        raise ClusterError("every worker died while loading the models")
    return preps


class _Fanout:
    """Hands blocks to idle workers, stores the blocks that come back, retries the ones whose worker died."""

    def __init__(self, ray, pool: WorkerPool, store, bench_id: str, cfg, spec: dict[str, Any], all_arms: list,
                 first: dict[str, Any], workers: list[Worker], say) -> None:
        self.ray, self.pool, self.store, self.bench_id, self.cfg, self.spec = ray, pool, store, bench_id, cfg, spec
        self.arms = {a.label: a for a in all_arms}
        self.target, self.draft = first["target"], first["draft"]
        self.workers = workers  # live, shared with the caller (which releases them)
        self.say = say
        self.history: dict[str, list[str]] = {}
        self.attempts: Counter = Counter()
        self.labels = [a.label for a in all_arms]
        self.n_done = 0

    def run(self, blocks: list[Block]) -> None:
        self.eta = Eta([lbl for b in blocks for _ in b.question.turns for lbl in self.labels])
        self.total = len(self.eta.pending)
        pending = deque(blocks)
        idle = list(self.workers)
        inflight: dict[Any, tuple[Worker, Block]] = {}
        while pending or inflight:
            while idle and (block := self._next(pending)) is not None:
                w = idle.pop(0)
                history = self.history.get(block.question.key) if block.repeat > 0 else None
                ref = w.handle.run_block.remote(self.spec, {"question": block.question, "repeat": block.repeat,
                                                            "history": history})
                inflight[ref] = (w, block)
            if not inflight:  # blocks left but no worker: start one
                idle.extend(self._replacement())
                continue
            ready, _ = self.ray.wait(list(inflight), num_returns=1)
            w, block = inflight.pop(ready[0])
            try:
                result = self.ray.get(ready[0])
            except self.ray.exceptions.RayActorError as exc:
                self._lost(w, block, exc)
                pending.appendleft(block)
                continue
            except self.ray.exceptions.RayTaskError as exc:
                raise unwrap(exc) from None
            self._store(block, result, w)
            idle.append(w)

    def _next(self, pending: deque) -> Block | None:
        """The first block that can run now (a later repeat of a multi-turn question needs repeat 0's answers)."""
        for block in pending:
            if block.repeat == 0 or len(block.question.turns) == 1 or block.question.key in self.history:
                pending.remove(block)
                return block
        return None

    def _lost(self, w: Worker, block: Block, exc: BaseException) -> None:
        self.pool.discard(w)
        if w in self.workers:
            self.workers.remove(w)
        self.attempts[block] += 1
        if self.attempts[block] >= MAX_ATTEMPTS:
            raise WorkerDiedError(f"{block.name}: its worker died {MAX_ATTEMPTS} times (last on {w.where}: "
                                  f"{_first_line(exc)})")
        self.say(f"bench: the worker on {w.where} died during {block.name} ({_first_line(exc)}); "
                 f"running the block again on another worker")

    def _replacement(self) -> list[Worker]:
        new = self.pool.acquire_many(1, self.spec["target"], self.cfg.device)
        self.workers.extend(new)
        self.say(f"bench: started a new worker on {new[0].where}")
        return new

    def _store(self, block: Block, result: dict[str, Any], w: Worker) -> None:
        if block.repeat == 0:
            self.history[block.question.key] = list(result["history"])
        history = self.history.get(block.question.key, result["history"])
        env = {**result["env"], "cluster": self.pool.address}
        r = block.repeat
        for rec in result["records"]:
            arm = self.arms[rec["arm"]]
            summary = store_run(self.store, self.bench_id, rec, arm, block.question, history, self.cfg, self.target,
                                self.draft, env)
            self.n_done += 1
            left = self.eta.done(arm.label, float(rec["trace"].get("wall_s") or 0.0)) / max(1, len(self.workers))
            where = f"{block.question.category}/{block.question.key}.{rec['turn'] + 1}"
            self.say(f"[{self.n_done}/{self.total}] r{r + 1}/{self.cfg.repeats} {arm.label:<28} {where:<22} "
                     f"{summary['new_tokens']:>4} tok {summary['tokens_per_s']:6.1f} tok/s "
                     f"tau {summary['tau']:.2f} | ETA {fmt_eta(left)} | {w.where}")
