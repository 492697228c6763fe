"""Which row counts take the workbench kernel on this machine, and whether its tiles prefetch: measured, per
model, once.

"fast" mode times the model's own linears (every one, in order, with its real weights, so
the weights stream from memory as in a forward) through ATen's `F.linear` and through the
workbench kernel, without and with its software prefetch (PREFETCH_AHEAD steps ahead), for each
row count T of MEASURED_ROWS, the three back to back within each round (ROUNDS rounds after a
warm-up). Each tile shape (linear.ROW_SHAPES) prefetches where, over the T it serves, the median
of the rounds' ratios with / without prefetch is below 1: on the 2-core Intel Xeon test machine
prefetching made the compiled forward 7-14% faster for every row count, on the 2-core AMD EPYC it made
one row of linears slower. Then the kernel, as it will run, takes every T where the median of the rounds' ratios
kernel / ATen is at most 1 (ratios of pairs, so a slow spell of the machine during one round moves
both of its sides). The choice is cached in the workbench cache under the model spec, the CPU, the thread
count, the torch version and the kernel's build, so a second process reads it; the invariant mode takes the
prefetch from it too (a prefetch changes no result).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..device import processor
from ..paths import cache_dir, read_json, write_json
from .build import build_dir
from .linear import ROW_SHAPES, StreamLinear, shape_of

# The row counts timed: every verification size up to 16, then a few larger ones (big trees), each deciding for
# the sizes down to the previous one timed; larger forwards (prompts) run ATen.
MEASURED_ROWS = (*range(1, 17), 20, 24, 32, 48, 64)
ROUNDS = 5
# How far ahead a prefetching tile reads each panel's stream, in steps of k: 32 cache lines of fp32 weights (2 KB)
# per panel; on the Intel Xeon 24-48 steps were all within 1-3% of each other for 1-16 rows, 8 clearly less
PREFETCH_AHEAD = 32
# the op's distances with every tile shape prefetching (what the measurement times against none)
PREFETCH_EVERY_SHAPE = [PREFETCH_AHEAD] * len(ROW_SHAPES)


def _path():
    return cache_dir() / "kernel_choices.json"


def choice_key(spec: str) -> str:
    return (f"{spec}|{processor(torch.device('cpu'))}|threads={torch.get_num_threads()}|torch={torch.__version__}"
            f"|build={build_dir().name}")


@torch.inference_mode()
def measure_rows(model: torch.nn.Module, rounds: int = ROUNDS,
                 sizes: tuple[int, ...] = MEASURED_ROWS) -> dict[int, dict[str, float]]:
    """Median seconds of all the model's linears over T rows, per T: {"aten": s, "stream": s, "prefetch": s (the
    kernel prefetching), "ratio": the median of the rounds' stream / aten, "prefetch_ratio": of prefetch / aten,
    "prefetch_gain": of prefetch / stream}."""
    mods = [m for m in model.modules() if isinstance(m, StreamLinear)]
    g = torch.Generator().manual_seed(0)
    inputs = {m.in_features: torch.randn(max(sizes), m.in_features, generator=g) for m in mods}

    def aten(T: int) -> None:
        for m in mods:
            F.linear(inputs[m.in_features][:T].to(m.weight.dtype), m.weight, m.bias)

    def kernel(ahead: list[int]) -> Callable[[int], None]:
        def run(T: int) -> None:
            for m in mods:
                bias = None if m.bias is None else m.bias.float()
                torch.ops.workbench_kernels.stream_linear(inputs[m.in_features][:T], m.packed, bias, m.out_features,
                                                          ahead)
        return run

    arms = {"aten": aten, "stream": kernel([]), "prefetch": kernel(PREFETCH_EVERY_SHAPE)}
    times: dict[int, dict[str, list[float]]] = {T: {name: [] for name in arms} for T in sizes}
    for r in range(rounds + 1):  # round 0 warms up
        for T in sizes:
            for name, fn in arms.items():
                t0 = time.perf_counter()
                fn(T)
                if r:
                    times[T][name].append(time.perf_counter() - t0)

    def paired(d, a, b):  # paired within a round, so a slow spell of the machine lands on both sides of the ratio
        return statistics.median(x / y for x, y in zip(d[a], d[b]))

    return {T: {**{name: statistics.median(v) for name, v in d.items()}, "ratio": paired(d, "stream", "aten"),
                "prefetch_ratio": paired(d, "prefetch", "aten"), "prefetch_gain": paired(d, "prefetch", "stream")}
            for T, d in times.items()}


def prefetch_choice(measured: dict[int, dict[str, float]]) -> tuple[int, ...]:
    """The prefetch distance of each tile shape: PREFETCH_AHEAD where prefetching was faster over its row counts."""
    gains: dict[int, list[float]] = {}
    for T, m in measured.items():
        gains.setdefault(shape_of(T), []).append(m["prefetch_gain"])
    return tuple(PREFETCH_AHEAD if i in gains and statistics.median(gains[i]) < 1 else 0
                 for i in range(len(ROW_SHAPES)))


def kernel_ratio(T: int, m: dict[str, float], prefetch: tuple[int, ...]) -> float:
    """The kernel's time over ATen's at T rows, as the kernel runs with this prefetch choice."""
    return m["prefetch_ratio"] if prefetch[shape_of(T)] else m["ratio"]


def fast_rows(spec: str, model: torch.nn.Module, refresh: bool = False,
              progress: Callable[[str], None] | None = None
              ) -> tuple[frozenset[int], dict[int, dict[str, float]], tuple[int, ...]]:
    """The row counts where the kernel was not slower than ATen for this model here (cached), the timings, and
    the prefetch distance of each tile shape (prefetch_choice).

    A size between two timed ones takes the decision of the larger one (a 9-row forward runs the kernel when
    the kernel won at 9; a 30-row one when it won at 32)."""
    key = choice_key(spec)
    data = read_json(_path())
    if (refresh or key not in data or not {str(T) for T in MEASURED_ROWS} <= data[key].keys()
            or any("prefetch_gain" not in m for m in data[key].values())):
        if progress:
            progress(f"timing {spec}'s linear layers: the workbench kernel, with and without prefetching, against "
                     f"ATen for {MEASURED_ROWS[0]}-{MEASURED_ROWS[-1]} rows (once for this model here)...")
        measured = measure_rows(model)
        data = read_json(_path())  # another process may have written meanwhile
        data[key] = {str(T): m for T, m in measured.items()}
        write_json(_path(), data)
    measured = {int(T): m for T, m in data[key].items()}
    prefetch = prefetch_choice(measured)
    wins = {T for T, m in measured.items() if kernel_ratio(T, m, prefetch) <= 1.0}
    rows, previous = set(), 0
    for T in sorted(measured):
        if T in wins:
            rows.update(range(previous + 1, T + 1))
        previous = T
    return frozenset(rows), measured, prefetch
