"""Ray model workers: decode on a GPU box or a cluster, record the run here (the optional `cluster` extra).

    workbench run --cluster local ...            a Ray instance started in this process's machine
    workbench bench --cluster auto ...           join the cluster this process runs in (`ray start` done)
    workbench ui --cluster ray://HEAD:10001      connect from outside through Ray Client

A *worker* (worker.ModelWorker, a Ray actor) holds loaded target/draft models
and runs the one decode loop, workbench.engine.generate; its Steps travel back
as dicts (Step.to_dict) while they are made, and the caller writes the run to
its own store exactly like a local run, with the worker's node, host, GPU and
environment in the run's env. No second engine, no second store.

Modules: address (parse and connect: `local`, `auto`, `ray://HOST:PORT`,
failing fast with one line), worker (the actor), pool (the caller's workers:
reused while their models match, evicted when idle), remote_run (api.run's
path through a worker; a worker that dies mid-run leaves the run
``interrupted``), fanout (`workbench bench --cluster`: one block per question
and repeat, each with its own plain-decoding baseline, retried elsewhere when
its worker dies).

The cluster is an executor its callers choose (workbench.api): nothing below
it reaches up to it. Ray is imported only when a cluster is used, and this
package itself is cheap: `cluster_address` serves light commands (the CLI's
parsers, the app's settings) without loading torch, so the executors load on
first use.
"""
from __future__ import annotations

from .address import ClusterError, WorkerDiedError, cluster_address, connect

__all__ = ["ClusterError", "WorkerDiedError", "cluster_address", "connect", "run_benchmark_on_cluster",
           "run_on_cluster"]


def run_on_cluster(address: str, req, **kwargs):
    """workbench.api.run's decode on a cluster worker (see remote_run.run_on_cluster)."""
    from .remote_run import run_on_cluster as run  # loads torch: only when a cluster is used (above)

    return run(address, req, **kwargs)


def run_benchmark_on_cluster(cfg, store, address: str, arms: list, questions: list, say) -> str:
    """A benchmark's blocks on a cluster's workers (see fanout.run_benchmark_on_cluster)."""
    from .fanout import run_benchmark_on_cluster as run  # loads torch: only when a cluster is used (above)

    return run(cfg, store, address, arms, questions, say)
