"""The caller's workers on one cluster: made on demand, reused while their models match, evicted when idle.

A worker is one device slot: ``num_gpus=1`` when the cluster has GPUs (and the
run did not ask for the CPU), else $WORKBENCH_WORKER_CPUS CPUs (default 1;
Ray then gives torch that many threads). There are at most as many as the
cluster has room for (and $WORKBENCH_MAX_WORKERS, when set). `acquire` hands
out an idle worker that already holds the requested target, else the least
recently used idle one (which swaps its models), else a new one, else waits for
one to be released. A worker idle for $WORKBENCH_WORKER_IDLE_S seconds (default
600) is ended by a background sweep, which frees its GPU for others. Workers are
owned by this process (not detached): they end with it.

A new worker must start within $WORKBENCH_WORKER_START_S seconds (default
120), or the error says what it needed and what the cluster has free.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import env_number
from .address import ClusterError, _first_line, require_ray
from .worker import ModelWorker

ENV_IDLE_S = "WORKBENCH_WORKER_IDLE_S"
ENV_MAX = "WORKBENCH_MAX_WORKERS"
ENV_CPUS = "WORKBENCH_WORKER_CPUS"
ENV_START_S = "WORKBENCH_WORKER_START_S"
MAX_CONCURRENCY = 8  # actor threads: one decodes, the others stream, poll, cancel
INSTALL_ON_NODES = "install the same decoding-workbench (with the cluster extra) on every node"


def _env_number(name: str, default: float, lo: float, integer: bool = False) -> float:
    return env_number(name, default, lo, integer=integer, error=ClusterError)


@dataclass(eq=False)
class Worker:
    """One actor as the caller sees it."""

    handle: Any
    kind: str  # "gpu" | "cpu"
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = True
    models: tuple[str, str | None] | None = None  # (target, device) it was last given
    info: dict[str, Any] = field(default_factory=dict)  # ModelWorker.info()

    @property
    def where(self) -> str:
        host = self.info.get("hostname") or "?"
        return f"{host} ({self.info['gpu']})" if self.info.get("gpu") else host


class WorkerPool:
    """Workers of this process on the connected cluster (thread-safe)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._cond = threading.Condition()
        self._workers: list[Worker] = []
        self._actor_class = None
        self._sweeper: threading.Thread | None = None

    # ---------------------------------------------------------------- sizing

    def kind_for(self, device: str | None) -> str:
        """Which kind of worker a device asks for: a GPU when the cluster has one, unless the CPU was named."""
        ray = require_ray()
        gpus = ray.cluster_resources().get("GPU", 0)
        wants_cpu = device is not None and str(device).strip().lower().startswith("cpu")
        if device is not None and not wants_cpu and gpus < 1:
            raise ClusterError(f"--device {device}: the cluster at {self.address} has no GPU")
        return "gpu" if gpus >= 1 and not wants_cpu else "cpu"

    def capacity(self, kind: str) -> int:
        """How many workers of `kind` the cluster has room for in all (>= 1)."""
        ray = require_ray()
        res = ray.cluster_resources()
        room = int(res.get("GPU", 0)) if kind == "gpu" else int(res.get("CPU", 0) // self._cpus())
        limit = os.environ.get(ENV_MAX)
        if limit is not None:
            room = min(room, int(_env_number(ENV_MAX, 1, 1, integer=True)))
        return max(1, room)

    def workers(self) -> list[Worker]:
        with self._cond:
            return list(self._workers)

    @staticmethod
    def _cpus() -> float:
        return _env_number(ENV_CPUS, 1, 0.01)

    # ---------------------------------------------------------------- leasing

    def acquire(self, target: str, device: str | None) -> Worker:
        """One worker for a run, busy until `release` (or `discard`)."""
        return self.acquire_many(1, target, device)[0]

    def acquire_many(self, n: int, target: str, device: str | None) -> list[Worker]:
        """Up to `n` workers (at least one), busy until released: idle ones first, then new ones where there is room."""
        kind = self.kind_for(device)
        cap = self.capacity(kind)
        want = (target, device)
        with self._cond:
            self._start_sweeper()
            while True:
                idle = [w for w in self._workers if not w.busy and w.kind == kind]
                idle.sort(key=lambda w: (w.models != want, w.last_used))  # same models first, then least recent
                got = idle[:n]
                room = cap - sum(w.kind == kind for w in self._workers)
                new = [self._spawn(kind) for _ in range(max(0, min(n - len(got), room)))]
                if got or new:
                    for w in got:
                        w.busy = True
                    break
                self._cond.wait(timeout=1.0)  # every worker of this kind is busy: wait for one
        return got + self._started(new, fail=not got)

    def release(self, worker: Worker, models: tuple[str, str | None] | None = None) -> None:
        with self._cond:
            worker.busy = False
            worker.last_used = time.monotonic()
            if models is not None:
                worker.models = models
            self._cond.notify_all()

    def discard(self, worker: Worker) -> None:
        """Forget a worker (dead, or ended here) and make sure its process is gone."""
        with self._cond:
            if worker in self._workers:
                self._workers.remove(worker)
            self._cond.notify_all()
        try:
            require_ray().kill(worker.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass

    def shutdown(self) -> None:
        for w in self.workers():
            self.discard(w)

    # ---------------------------------------------------------------- making and ending workers

    def _spawn(self, kind: str) -> Worker:
        ray = require_ray()
        if self._actor_class is None:
            self._actor_class = ray.remote(ModelWorker)
        opts: dict[str, Any] = {"num_cpus": self._cpus(), "max_concurrency": MAX_CONCURRENCY}
        if kind == "gpu":
            opts["num_gpus"] = 1
        w = Worker(handle=self._actor_class.options(**opts).remote(), kind=kind)
        self._workers.append(w)
        return w

    def _started(self, new: list[Worker], fail: bool) -> list[Worker]:
        """Wait for new workers to start; drop the ones that do not. With fail=True, none starting is an error."""
        if not new:
            return []
        ray = require_ray()
        timeout = _env_number(ENV_START_S, 120, 1)
        refs = {w.handle.info.remote(): w for w in new}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        ok: list[Worker] = []
        problem = None
        for ref, w in refs.items():
            if ref in ready:
                try:
                    w.info = ray.get(ref)
                    ok.append(w)
                    continue
                except Exception as exc:  # noqa: BLE001 - the actor could not even start
                    problem = f"a worker could not start ({_first_line(exc)}); {INSTALL_ON_NODES}"
            self.discard(w)
        if not ok and fail:
            if problem is None:
                need = "1 GPU" if new[0].kind == "gpu" else f"{self._cpus():g} CPU"
                free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
                problem = (f"no worker started within {timeout:g}s: each needs {need}, the cluster has "
                           f"{free or 'nothing'} free (set ${ENV_START_S} to wait longer)")
            raise ClusterError(f"cluster {self.address}: {problem}")
        return ok

    def _start_sweeper(self) -> None:
        if self._sweeper is None or not self._sweeper.is_alive():
            self._sweeper = threading.Thread(target=self._sweep_forever, name="workbench-worker-sweep", daemon=True)
            self._sweeper.start()

    def _sweep_forever(self) -> None:
        while True:
            idle_s = _env_number(ENV_IDLE_S, 600, 0)
            time.sleep(min(30.0, max(0.5, idle_s / 2)))
            self.evict_idle(idle_s)

    def evict_idle(self, idle_s: float | None = None) -> int:
        """End the workers idle for more than `idle_s` (default $WORKBENCH_WORKER_IDLE_S); returns how many."""
        idle_s = _env_number(ENV_IDLE_S, 600, 0) if idle_s is None else idle_s
        now = time.monotonic()
        with self._cond:
            old = [w for w in self._workers if not w.busy and now - w.last_used > idle_s]
            for w in old:  # out of the pool before anyone can lease them again
                self._workers.remove(w)
        for w in old:
            self.discard(w)
        return len(old)


_pools: dict[str, WorkerPool] = {}
_pools_lock = threading.Lock()


def get_pool(address: str) -> WorkerPool:
    """This process's pool for the cluster at `address` (one per address)."""
    with _pools_lock:
        if address not in _pools:
            _pools[address] = WorkerPool(address)
        return _pools[address]
