"""Device facts and helpers shared by the engine, the benchmarks and the profilers.

What machine this is (the CPU model and the vector extensions that decide which
kernels and dtypes are fast, or the GPU model), synchronising before a clock
read, and peak memory.

Timing follows gpt-fast: synchronise the device before every clock read, so a
timer measures what the step cost, not what was queued. Peak memory is the CUDA
allocator's peak on a GPU and the process's resident set on the CPU.
"""
from __future__ import annotations

import platform

import psutil
import torch

# The vector extensions that decide which CPU kernels and dtypes are fast.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """The CPU's model name, e.g. 'AMD EPYC' ('unknown' where the system does not say)."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_isa() -> str:
    """The vector extensions that decide which CPU kernels and dtypes are fast, e.g. 'avx2 avx512f amx_bf16'.

    Two machines with one model name ("Intel(R) Xeon(R) Processor" in a VM) can differ in exactly these.
    """
    have = set((_cpuinfo("flags") or "").split())
    return " ".join(flag for flag in ISA_FLAGS if flag in have)


def processor(device: torch.device) -> str:
    """The CPU (with its vector extensions) or GPU model a measurement ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    isa = cpu_isa()
    return f"{cpu_name()} [{isa}]" if isa else cpu_name()


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (None where there is no such file or line)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def rss_mb() -> float:
    """The process's resident set size in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def memory_mb(device: torch.device) -> float:
    """The CUDA allocator's peak on a GPU, the resident set elsewhere (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mb()


class PeakMemory:
    """Peak memory during a run: CUDA allocator peak, or the process's resident set on CPU.

    On CPU the resident set is read every EVERY samples (a /proc read is visible next to a
    tiny model's forward) and once more at the end.
    """

    EVERY = 16

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0
        self.calls = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.sample()

    def sample(self, force: bool = False) -> None:
        self.calls += 1
        if self.device.type == "cuda" or (not force and self.calls % self.EVERY != 1):
            return
        self.peak = max(self.peak, rss_mb())

    def peak_mb(self) -> float:
        self.sample(force=True)
        if self.device.type == "cuda":
            return memory_mb(self.device)
        return self.peak if self.peak else float("nan")
