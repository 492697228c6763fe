"""Cluster addresses and the one connection a process makes: `local`, `auto` or `ray://HOST:PORT`.

- ``local``: start a small Ray instance on this machine (no dashboard; a few CPUs,
  every GPU it has), shut down when the process ends, kept to loopback: Ray on
  Linux normally advertises the machine's own address and binds its ports on every
  interface, and with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set before Ray is
  imported, see `keep_local_on_loopback`) it uses 127.0.0.1 for every port, as it
  does on a laptop. Its token authentication is on as well.
- ``auto``: join the Ray cluster this machine belongs to (``ray start`` ran here).
- ``ray://HOST:PORT``: connect from outside the cluster through Ray Client (the
  head node's client server, port 10001 by default). The port is probed first
  with a short timeout, so a wrong or unreachable address fails in seconds
  with one line instead of Ray Client's half-minute of retries.

``cluster_address(None)`` reads $WORKBENCH_CLUSTER, the default for the API,
notebooks and every ``--cluster`` option; ``none`` (or an empty value) means in
process. Ray itself is imported only by `connect`; without it installed the
error names the extra to install. Security is Ray's own: a worker takes work
only from the cluster it joined, and with Ray's token authentication
(RAY_AUTH_MODE=token; on by default for a `local` instance) only from holders
of its token. Ray Client does not send the token to an address unless
RAY_AUTH_MODE=token is set in this process (Ray's choice: an explicit address
never enables it). See docs/cluster.md (Security) before a head node leaves a
private network (it never should).
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading

from ..config import ConfigError, env_number

ENV_CLUSTER = "WORKBENCH_CLUSTER"
ENV_CONNECT_S = "WORKBENCH_CLUSTER_CONNECT_S"  # seconds to wait for a ray:// port to answer
ENV_LOCAL_CPUS = "WORKBENCH_LOCAL_CPUS"  # CPUs a `local` instance offers (default: 2 to 4)
INSTALL_HINT = "install the cluster extra: pip install decoding-workbench[cluster]"
IN_PROCESS = ("", "none", "off")
_CLIENT = re.compile(r"^ray://(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")

_lock = threading.Lock()
_connected: str | None = None  # the address this process is connected to


class ClusterError(ConfigError):
    """A cluster that cannot be used as asked (bad or unreachable address, no room for a worker); one line."""


class WorkerDiedError(RuntimeError):
    """A worker's process died while it held work (killed, out of memory, its node lost)."""


def cluster_address(value: str | None = None) -> str | None:
    """The normalised address to use, or None for in process; None reads $WORKBENCH_CLUSTER."""
    if value is None:
        value = os.environ.get(ENV_CLUSTER)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClusterError(f"a cluster address is text (local, auto or ray://HOST:PORT), not {type(value).__name__}")
    text = value.strip()
    if text.lower() in IN_PROCESS:
        return None
    if text.lower() in ("local", "auto"):
        return text.lower()
    m = _CLIENT.match(text)
    if m is None:
        raise ClusterError(f"a cluster address is local, auto or ray://HOST:PORT (e.g. ray://10.0.0.5:10001), "
                           f"got {text!r}")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise ClusterError(f"the port of {text!r} must be from 1 to 65535")
    return text


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_on_loopback() -> None:
    """Make a `local` Ray instance bind and advertise 127.0.0.1 only (read by Ray when it is imported).

    Ray's single-machine mode (its default on macOS and Windows) is selected by this variable;
    the raylet and the workers it starts inherit it. An explicit value set by the user wins,
    and so does a Ray already imported in this process.
    """
    os.environ.setdefault(LOOPBACK_ENV, "0")


def require_ray():
    """The ray module, or a ClusterError saying how to install it."""
    try:
        import ray  # here: Ray only when a cluster is used (an optional extra, named below when missing)
    except ImportError:
        raise ClusterError(f"running on a cluster needs Ray: {INSTALL_HINT}") from None
    return ray


def connected() -> str | None:
    """The address this process is connected to (None: not yet)."""
    return _connected


def is_client() -> bool:
    """Connected through Ray Client (ray://), which cannot stream generator results."""
    ray = require_ray()
    return bool(ray.util.client.ray.is_connected())


def connect(address: str | None) -> str:
    """Connect this process to the cluster at `address` (once; later calls reuse it) and return it.

    A ray.init() already made in this process (a notebook's, a test's) is used as it is.
    """
    global _connected
    addr = cluster_address(address)
    if addr is None:
        raise ClusterError("no cluster address given: use local, auto or ray://HOST:PORT")
    if addr == "local":
        keep_local_on_loopback()
    ray = require_ray()
    if addr.startswith("ray://"):
        _probe(addr)
    with _lock:
        if ray.is_initialized():
            if _connected is not None and _connected != addr:
                raise ClusterError(f"this process is already connected to the cluster at {_connected}; "
                                   f"start a new process to use {addr}")
            _connected = addr
            return addr
        try:
            _init(ray, addr)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
            hint = ""
            if addr.startswith("ray://") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                hint = (" (a cluster with Ray's token authentication needs RAY_AUTH_MODE=token here, and its token "
                        "in $RAY_AUTH_TOKEN or ~/.ray/auth_token)")
            raise ClusterError(f"cannot connect to the Ray cluster at {addr}: {_first_line(exc)}{hint}") from None
        _connected = addr
        return addr


def _init(ray, addr: str) -> None:
    quiet = dict(logging_level=logging.WARNING, log_to_driver=os.environ.get("WORKBENCH_DEBUG") == "1")
    if addr == "local":
        ray.init(address="local", num_cpus=local_cpus(), include_dashboard=False, **quiet)
    elif addr == "auto":
        ray.init(address="auto", **quiet)
    else:  # Ray Client: logging options would be forwarded to the server's ray.init
        ray.init(address=addr)


def local_cpus() -> int:
    """CPUs a `local` instance offers: $WORKBENCH_LOCAL_CPUS, else 2 to 4 (one worker needs one)."""
    return int(env_number(ENV_LOCAL_CPUS, max(2, min(4, os.cpu_count() or 2)), 1, integer=True,
                          error=ClusterError))


def _connect_timeout() -> float:
    return env_number(ENV_CONNECT_S, 5.0, 0.1, 600, error=ClusterError)


def _probe(addr: str) -> None:
    """Fail fast when nothing answers on the Ray Client port."""
    m = _CLIENT.match(addr)
    assert m is not None
    host, port = m["host"].strip("[]"), int(m["port"])
    timeout = _connect_timeout()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        raise ClusterError(f"cannot reach the Ray cluster at {addr}: no answer within {timeout:g}s (is the head node "
                           f"up and port {port} reachable from this machine?)") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"cannot reach the Ray cluster at {addr}: {reason.lower()} (is `ray start --head` running "
                           f"there, with its client server on port {port}?)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or type(exc).__name__
