"""Memory-bandwidth roofline for plain decoding.

At batch size 1 a decode step reads every weight once and does ~2 flops per
weight, so plain decoding is bound by memory bandwidth, not compute:

    roofline tokens/s = memory bandwidth (bytes/s) / weight bytes read per token

Weight bytes per token: the sum of parameter (and int8 weight buffer) bytes;
an input embedding that is not tied to the LM head is left out, because a step
reads one row of it, not the whole matrix. KV-cache reads are ignored (a few
MB at these lengths, against hundreds for the weights).

The report compares it with plain decoding's tokens/s (the prompt's forward included) and with its decode
rate after the first token (`metrics.decode_tokens_per_s`), which is what the roofline bounds.

Memory bandwidth: the larger of two measurements, each the best of a few passes over a large tensor (512 MiB
by default) with the process's current thread count, so the achieved fraction compares like with like:
- read bandwidth: bytes / time of reading the tensor once, by the fastest of a few readers: a sum, and, on a
  CPU where the workbench kernels are loaded, their one-row linear over the same bytes as a packed weight,
  without and with its prefetch (on the 2-core Intel Xeon test machine a sum read 28-29 GB/s and the kernel
  32-35 GB/s: the weights' stream can reach more than a sum shows). On a CPU the tensor lies in memory
  backed by transparent huge pages where the system offers them, as the workbench kernels' packed weights do
  (`kernels.linear.arena`): on the 2-core AMD test machine, a virtual machine, a read of ordinary 4 KB pages
  reached about two thirds of the rate over huge pages, so it would understate what the weights' stream
  can reach.
- copy bandwidth: `dst.copy_(src)`, counting the bytes read and written: 2 * bytes / time. A copy also
  reads each destination line before writing it, so a roofline from the copy alone can be passed by plain
  decoding (on the 2-core AMD test machine a read over huge pages measured 10-25% more than a copy in the
  same process).
A decoding step reads its weights and writes next to nothing, so the read bandwidth is the bound; the copy is
kept as a floor for a reader slower than the memory.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..device import device_sync


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads (see the module docstring)."""
    seen: set[int] = set()
    total = 0
    # a linear's packed copy for the workbench's CPU kernel (workbench.kernels) is read instead of its weight,
    # never as well: counted once, as the weight
    buffers = [b for name, b in model.named_buffers() if not name.endswith(".packed") and name != "packed"]
    for t in list(model.parameters()) + buffers:
        if t.data_ptr() in seen or not t.is_floating_point() and t.dtype != torch.int8:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        tied = head is not None and getattr(head, "weight", None) is not None \
            and head.weight.data_ptr() == emb.weight.data_ptr()
        if not tied:
            total -= emb.weight.numel() * emb.weight.element_size()
    return int(total)


def _best_s(fn, repeats: int, device: torch.device) -> float:
    """The best time of `repeats` calls of `fn` (after one warm-up call, which also pages its buffers in)."""
    fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        device_sync(device)
        t0 = time.perf_counter()
        fn()
        device_sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(mib: int = 512, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Measured memory bandwidth in bytes/s: 2 * bytes / best time of `dst.copy_(src)`."""
    device = torch.device(device)
    n = int(mib) * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * n * 4 / _best_s(lambda: dst.copy_(src), repeats, device)


def read_bandwidth(mib: int = 512, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Measured memory bandwidth in bytes/s: bytes / best time of reading a tensor once (see the module
    docstring: in which memory)."""
    from ..kernels.linear import arena

    device = torch.device(device)
    n = int(mib) * 2**20 // 4
    if device.type == "cpu":
        src = arena(n * 4).view(torch.float32).fill_(1.0)
    else:
        src = torch.ones(n, dtype=torch.float32, device=device)
    return n * 4 / min(_best_s(fn, repeats, device) for fn in [src.sum, *_kernel_readers(src)])


def _kernel_readers(src: torch.Tensor) -> list:
    """The workbench kernel's one-row linear over `src`'s bytes as a packed weight (panels of 16 columns, K = 4096),
    without and with its prefetch: a read as the weights' stream makes it. Empty where the kernels are not loaded
    here, or for a tensor of another size."""
    from ..kernels import build
    from ..kernels.choose import PREFETCH_EVERY_SHAPE
    from ..kernels.linear import LANES

    K = 4096
    if src.device.type != "cpu" or not build.loaded() or src.numel() % (K * LANES):
        return []
    packed = src.view(-1, K, LANES)
    N = packed.shape[0] * LANES
    x = torch.ones(1, K)
    op = torch.ops.workbench_kernels.stream_linear
    return [lambda: op(x, packed, None, N), lambda: op(x, packed, None, N, PREFETCH_EVERY_SHAPE)]


def bound(copy: float, read: float | None = None) -> float:
    """The bandwidth a step is bound by (bytes/s): the larger of the read and the copy (module docstring)."""
    return max(copy, read or 0.0)


def roofline(weight_bytes: int, copy: float, measured_tokens_per_s: float | None = None,
             read: float | None = None) -> dict[str, Any]:
    """Roofline tokens/s from the larger of the `read` and `copy` bandwidths (bytes/s; a benchmark stored before
    read bandwidths were measured has only the copy) and, given a measured plain-decoding speed, the fraction
    achieved."""
    bandwidth = bound(copy, read)
    tps = bandwidth / weight_bytes if weight_bytes else float("nan")
    out: dict[str, Any] = {"weight_bytes_per_token": weight_bytes, "copy_bandwidth_GBps": copy / 1e9,
                           "read_bandwidth_GBps": read / 1e9 if read else None,
                           "bandwidth_GBps": bandwidth / 1e9, "roofline_tokens_per_s": tps}
    if measured_tokens_per_s is not None:
        out["measured_tokens_per_s"] = measured_tokens_per_s
        out["achieved_fraction"] = measured_tokens_per_s / tps if tps == tps and tps > 0 else float("nan")
    return out
