"""How a forward runs: the backends the engine and every draft model decode through.

The engine never talks to a KV cache directly. It opens a *session* for a model
(`open_session(backend, lm, max_len)`) and asks it two things:

    session.forward(ids, positions=None, block=None, keep=0, hidden=False) -> logits (T or keep, V)
        run the model on ids (1, T) after the session's `length` cached positions;
        `block` is a bool (T, W) visibility of the last W columns (a tree mask),
        every column before them is visible; None means causal; hidden=True
        returns (logits, final hidden states (T, H)) from the same forward,
        hidden="layers" (logits, (T, H (1 + k))): the final hidden states, then
        the outputs of the k decoder layers `cache.feature_layers` picks; a tuple
        of indices into the model's `hidden_states` (T, H (1 + k)): the final
        states, then those layers' (an EAGLE-3 head's three)
    session.keep(start, offsets) / session.crop(n)
        keep positions [0, start) plus start + offsets (accepted tree nodes are
        copied into place), or the first n positions (a rejected chain)

Two backends answer those calls:
- `eager`    stock transformers forwards over a DynamicCache (workbench.backend.eager);
- `compiled` a preallocated StaticCache indexed by position, where rollback is
             setting a length (gpt-fast), and `torch.compile`d forwards: one graph
             for one token, one shape-dynamic graph for verification
             (workbench.backend.compiled); CUDA graphs on a GPU.
Methods never know which one runs.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

from ..config import ConfigError
from ..kernels import add_kernels_argument, plan_for

if TYPE_CHECKING:  # the names are read torch-free (CLI parsers of store-only commands)
    import torch

BACKENDS = ("eager", "compiled")
DEFAULT_BACKEND = "eager"


class KVSession(Protocol):
    """One model's KV cache for one run; see the module docstring."""

    length: int

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                block: torch.Tensor | None = None, keep: int = 0, hidden: bool | str | tuple[int, ...] = False) -> Any: ...

    def keep(self, start: int, offsets: list[int]) -> None: ...

    def crop(self, n: int) -> None: ...

    def close(self) -> None: ...


GIVE_EAGER = "use --backend eager"  # how the CLI asks for the eager backend; the app passes its own words


def check_compression_backend(active: bool, backend: str, give_eager: str = GIVE_EAGER) -> None:
    """KV-cache compression (workbench.kv_compress, kv_quant) runs on the eager backend only: one line saying
    how this surface chooses it (`give_eager`)."""
    if active and backend != "eager":
        raise ConfigError(f"KV-cache compression runs on the eager backend only: {give_eager}")


def check_backend(name: Any) -> str:
    """A backend name, validated (None: the default)."""
    if name is None:
        return DEFAULT_BACKEND
    if not isinstance(name, str) or name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return name


def open_session(backend: str, model: Any, max_len: int, *, progress=None, compression: Any = None) -> KVSession:
    """A KV session of `backend` for `model` (a LoadedModel, or a bare transformers model: eager only).

    max_len: the most positions the run will cache (prompt + new tokens + one draft).
    compression: a workbench.config.KVConfig that evicts (eager only; workbench.backend.compressed) or quantises
    (workbench.backend.quantized).
    """
    import torch  # here, not above: check_backend and --backend serve torch-free commands

    from .eager import EagerSession  # (the same)

    if not isinstance(model, torch.nn.Module):
        plan_for(model, progress)  # the CPU linear kernels of this process's mode (workbench.kernels)
    if compression is not None and compression.active:
        check_compression_backend(True, check_backend(backend))
        from .compressed import CompressedSession  # (the same)
        from .quantized import QuantizedSession  # (the same)

        if compression.quantised:
            return QuantizedSession(model.model if not isinstance(model, torch.nn.Module) else model, compression)
        return CompressedSession(model.model if not isinstance(model, torch.nn.Module) else model, compression)
    if check_backend(backend) == "compiled" and not isinstance(model, torch.nn.Module):
        from .compiled import open_compiled  # (the same)

        session = open_compiled(model, max_len, progress=progress)
        if session is not None:
            return session
    return EagerSession(model.model if not isinstance(model, torch.nn.Module) else model)


def prepare(backend: str, model: Any, max_len: int, *, progress=None) -> float:
    """Compile (or load from the disk cache) what `backend` needs for `model`; seconds it took (0 for eager)."""
    if check_backend(backend) != "compiled":
        plan_for(model, progress)
        return 0.0
    from .compiled import prepare as compile_for  # torch-free until a model is prepared (above)

    return compile_for(model, max_len, progress=progress)


def add_backend_argument(parser) -> None:
    """--backend eager|compiled (default: $WORKBENCH_BACKEND, else eager)."""
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get("WORKBENCH_BACKEND") or DEFAULT_BACKEND,
                        help="how forwards run: eager (stock transformers, DynamicCache) or compiled (static KV "
                             "cache + torch.compile; compiles once per model, 2-5 min on a CPU, cached on disk); "
                             "default $WORKBENCH_BACKEND, else eager")
    add_kernels_argument(parser)  # which CPU linear kernels those forwards run
