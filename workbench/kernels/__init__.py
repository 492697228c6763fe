"""CPU kernels for small-batch forwards (the linear layers and attention): decoding one token and verifying a few.

Speculative decoding pays when verifying k drafted tokens costs little more than decoding
one. A general GEMM library is tuned for many rows; for one to sixteen rows it re-reads or
repacks weights per call and streams them at half the memory bandwidth or less. The workbench
kernel (stream_linear.cpp) reads each weight once per forward, as one sequential stream, and
applies it to every row in registers, so its cost stays near the memory-bound cost of one row
until the arithmetic catches up (docs/backends.md, Kernels; measurements in docs/results/).
Attention over the cache for up to a few dozen query rows has a kernel of its own (row_attention.cpp,
kernels.attention): ATen's flash attention spends most of a decoding step's attention time on set-up.

Modes ($WORKBENCH_KERNELS, `--kernels`, the API's `kernels=`; one per process):
    fast       the workbench kernel for the row counts where it measured faster than ATen on this
               machine for this model (kernels.choose), ATen for the rest, its tiles prefetching where
               that measured faster; the row-attention kernel
               for forwards of up to attention.FAST_MAX_ROWS rows; the default
    invariant  the workbench kernel for every forward of up to INVARIANT_MAX_ROWS rows, whatever it
               costs (prefetching as the fast mode measured), and attention computed row by row
               (kernels.attention): each row's result is then bit-identical whatever the number of
               rows, so verifying a chain of k tokens gives exactly the logits of k one-token forwards
    aten       every linear through ATen (torch's own path, as before)
Where the kernels cannot be built (no compiler) every mode runs as "aten" and says why once.
The mode, the row counts it resolved to and the attention (`KernelPlan.label`) are recorded with every run and are
part of the cost profile's key and of the compiled graphs' identity.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from ..config import ConfigError

MODES = ("fast", "invariant", "aten")
DEFAULT_MODE = "fast"
INVARIANT_MAX_ROWS = 64  # verification forwards up to the compiled backend's largest graph; prefill uses ATen

_chosen: str | None = None


def check_mode(name: Any) -> str:
    """A kernel mode, validated (None: $WORKBENCH_KERNELS, else the default)."""
    if name is None:
        name = os.environ.get("WORKBENCH_KERNELS") or DEFAULT_MODE
    if not isinstance(name, str) or name not in MODES:
        raise ConfigError(f"unknown kernel mode {name!r}; available: {', '.join(MODES)}")
    return name


def set_mode(name: str | None) -> str:
    """Choose this process's kernel mode (None: $WORKBENCH_KERNELS, else the default); returns it."""
    global _chosen
    _chosen = check_mode(name)
    os.environ["WORKBENCH_KERNELS"] = _chosen  # processes started from this one (app workers) follow it
    return _chosen


def current_mode() -> str:
    return _chosen if _chosen is not None else check_mode(None)


def add_kernels_argument(parser) -> None:
    """--kernels fast|invariant|aten (default: $WORKBENCH_KERNELS, else fast)."""
    parser.add_argument("--kernels", choices=MODES, default=None,
                        help="CPU linear kernels: fast (the workbench's weight-streaming kernel where it measured "
                             "faster here, built on first use), invariant (that kernel for every verification "
                             "size: bit-identical rows whatever their number), aten (torch's own); default "
                             "$WORKBENCH_KERNELS, else fast")


def plan_for(lm: Any, progress: Callable[[str], None] | None = None):
    """The KernelPlan of a loaded model under this process's mode, installing the kernels on first use.

    Imports torch and builds the extension lazily: store-only commands never pay for either.
    """
    from . import attention
    from .linear import KernelPlan, install

    mode = current_mode()
    model = getattr(lm, "model", lm)
    plans = model.__dict__.setdefault("_workbench_plans", {})
    if mode in plans:
        return _activate(model, plans[mode])
    device = getattr(lm, "device", None) or next(model.parameters()).device
    if mode == "aten" or device.type != "cpu":
        plan = KernelPlan("aten")
    else:
        from .build import load_extension, unavailable_reason

        if not load_extension(progress):
            plan = KernelPlan("aten", reason=unavailable_reason())
        else:
            from .choose import fast_rows

            if mode == "invariant":
                _check_invariant(lm, model)
            install(model, KernelPlan("aten"))  # packed first: the measurement times the packed weights
            # the measurement is the fast mode's (cached); the invariant mode takes its prefetch choice alone
            rows, measured, prefetch = fast_rows(getattr(lm, "spec", type(model).__name__), model,
                                                 progress=progress)
            if mode == "invariant":
                plan = KernelPlan("invariant", frozenset(range(1, INVARIANT_MAX_ROWS + 1)), prefetch=prefetch,
                                  attention=attention.ALL_ROWS if attention.model_supported(model) else 0)
            else:
                plan = KernelPlan("fast", rows, measured, prefetch=prefetch,
                                  attention=attention.FAST_MAX_ROWS if attention.model_supported(model) else 0)
    plans[mode] = plan
    return _activate(model, plan)


def _check_invariant(lm: Any, model) -> None:
    """Refuse the invariant mode for a model with weights its kernels do not run: a mixture of experts keeps
    each layer's experts as one (experts, out, in) tensor, multiplied in batches whose grouping depends on the
    number of rows, so its rows cannot be made bit-identical whatever their number."""
    for name, module in model.named_modules():
        if any(p.ndim == 3 for p in module.parameters(recurse=False)) and "Conv" not in type(module).__name__:
            raise ConfigError(f"the invariant kernels cannot make {getattr(lm, 'spec', type(model).__name__)}'s "
                              f"rows bit-identical: its experts ({name}) run as batched matmuls outside the "
                              "linear kernels; use --kernels fast or aten")


def _activate(model, plan):
    from . import attention
    from .linear import install

    if plan.rows or any(hasattr(m, "packed") for m in model.modules()):
        install(model, plan)
    # the invariant mode's attention computes every row as a one-row forward, with or without the kernel
    name = attention.INVARIANT if plan.mode == "invariant" else attention.FAST if plan.attention else None
    attention.use(model, name)
    model.__dict__["_workbench_active_plan"] = plan
    return plan


def active_label(lm: Any) -> str:
    """The plan a model's forwards run now ("aten" when none was installed)."""
    plan = getattr(getattr(lm, "model", lm), "_workbench_active_plan", None)
    return plan.label() if plan is not None else "aten"
