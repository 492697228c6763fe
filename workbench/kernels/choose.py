"""Which row counts take the workbench kernel on this machine: measured, per model, once.

"fast" mode times the model's own linears (every one, in order, with its real weights, so
the weights stream from memory as in a forward) through ATen's `F.linear` and through the
workbench kernel, for each row count T of MEASURED_ROWS, the two back to back within each
round (ROUNDS rounds after a warm-up); the kernel takes every T where the median of the rounds'
ratios kernel / ATen is at most 1 (a ratio of a pair, so a slow spell of the machine during one
round moves both of its sides). The choice is cached in the workbench cache under the model spec, the CPU, the thread
count, the torch version and the kernel's build, so a second process reads it.
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
from .linear import StreamLinear

# The row counts timed: every verification size up to 16, then a few larger ones (big trees), each deciding for
# the sizes down to the previous one timed; larger forwards (prompts) run ATen.
MEASURED_ROWS = (*range(1, 17), 20, 24, 32, 48, 64)
ROUNDS = 5


def _path():
    return cache_dir() / "kernel_choices.json"


def choice_key(spec: str) -> str:
    return (f"{spec}|{processor(torch.device('cpu'))}|threads={torch.get_num_threads()}|torch={torch.__version__}"
            f"|build={build_dir().name}")


@torch.inference_mode()
def measure_rows(model: torch.nn.Module, rounds: int = ROUNDS,
                 sizes: tuple[int, ...] = MEASURED_ROWS) -> dict[int, dict[str, float]]:
    """Median seconds of all the model's linears over T rows, per T: {"aten": s, "stream": s, "ratio": the median
    of the rounds' stream / aten}."""
    mods = [m for m in model.modules() if isinstance(m, StreamLinear)]
    g = torch.Generator().manual_seed(0)
    inputs = {m.in_features: torch.randn(max(sizes), m.in_features, generator=g) for m in mods}

    def aten(T: int) -> None:
        for m in mods:
            F.linear(inputs[m.in_features][:T].to(m.weight.dtype), m.weight, m.bias)

    def stream(T: int) -> None:
        for m in mods:
            bias = None if m.bias is None else m.bias.float()
            torch.ops.workbench_kernels.stream_linear(inputs[m.in_features][:T], m.packed, bias, m.out_features)

    times: dict[int, dict[str, list[float]]] = {T: {"aten": [], "stream": []} for T in sizes}
    for r in range(rounds + 1):  # round 0 warms up
        for T in sizes:
            for name, fn in (("aten", aten), ("stream", stream)):
                t0 = time.perf_counter()
                fn(T)
                if r:
                    times[T][name].append(time.perf_counter() - t0)
    return {T: {"aten": statistics.median(d["aten"]), "stream": statistics.median(d["stream"]),
                # paired within a round, so a slow spell of the machine lands on both sides of the ratio
                "ratio": statistics.median(s / a for s, a in zip(d["stream"], d["aten"]))}
            for T, d in times.items()}


def fast_rows(spec: str, model: torch.nn.Module, refresh: bool = False,
              progress: Callable[[str], None] | None = None) -> tuple[frozenset[int], dict[int, dict[str, float]]]:
    """The row counts where the kernel was not slower than ATen for this model here (cached), and the timings.

    A size between two timed ones takes the decision of the larger one (a 9-row forward runs the kernel when
    the kernel won at 9; a 30-row one when it won at 32)."""
    key = choice_key(spec)
    data = read_json(_path())
    if refresh or key not in data or not {str(T) for T in MEASURED_ROWS} <= data[key].keys():
        if progress:
            progress(f"timing {spec}'s linear layers: the workbench kernel against ATen for "
                     f"{MEASURED_ROWS[0]}-{MEASURED_ROWS[-1]} rows...")
        measured = measure_rows(model)
        data = read_json(_path())  # another process may have written meanwhile
        data[key] = {str(T): m for T, m in measured.items()}
        write_json(_path(), data)
    measured = {int(T): m for T, m in data[key].items()}
    wins = {T for T, m in measured.items() if m["ratio"] <= 1.0}
    rows, previous = set(), 0
    for T in sorted(measured):
        if T in wins:
            rows.update(range(previous + 1, T + 1))
        previous = T
    return frozenset(rows), measured
