"""The linear layers of a loaded model, switched to the weight-streaming kernel for the row counts it wins.

`install(model)` turns every fp32 or bf16 `nn.Linear` of a model (the LM head too) into a
`StreamLinear` in place: the same module, the same weight and bias (so code reading
`lm_head.weight` still works), plus a packed copy of the weight (panels of 16 output columns,
[ceil(N / 16), K, 16], what stream_linear.cpp reads as one stream). The packed copy costs as
much memory as the weights again. A model's packed copies lie side by side, in module order, in
one block of memory backed by transparent huge pages where the system allows them (`arena`):
streaming 540 MB of weights through 4 KB pages costs a TLB miss every 4 KB, which on a virtual
machine (nested page tables) took 5-10% of the linears' time (docs/results/2026-12-07-cpu-kernels.md).
Which row counts T go through the kernel is the model's `KernelPlan` (`rows`); every other T, and
anything needing gradients, runs `F.linear` as before.

Under torch.compile the kernel is an opaque custom op (`workbench_kernels::stream_linear`,
with a shape function registered here), and the plan is read while tracing, so a compiled
graph keeps the plan it was compiled with (the compiled backend keys its graphs by it). In a
compiled graph the linears that read the same input (a layer's query, key and value
projections; its gate and up projections) become one call (`group_siblings`): one parallel region
and one dispatch instead of three or two, with each output's bits unchanged.
"""
from __future__ import annotations

import mmap
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LANES = 16  # output columns per packed panel (one vector register of fp32)
PACKED_DTYPES = (torch.float32, torch.bfloat16)
HUGE_PAGE = 2 * 2**20  # bytes of a transparent huge page on x86-64 and most arm64 kernels
# The row counts of stream_linear.cpp's tile shapes (its `run`), (first, last); each shape has its own prefetch
# distance (KernelPlan.prefetch)
ROW_SHAPES = ((1, 1), (2, 2), (3, 4), (5, None))


def shape_of(T: int) -> int:
    """The index in ROW_SHAPES of the tile shape that runs T rows."""
    return next(i for i, (lo, hi) in enumerate(ROW_SHAPES) if lo <= T <= (hi or T))


_FAKE_REGISTERED = False


@dataclass
class KernelPlan:
    """What one model's linears run: `rows`, the row counts that take the workbench kernel; `mode`, the
    choice it came from (kernels.MODES); `measured`, the seconds per T behind a "fast" choice."""

    mode: str
    rows: frozenset[int] = frozenset()
    measured: dict[int, dict[str, float]] = field(default_factory=dict)
    reason: str | None = None  # why the kernels are not used, where they could not be built
    # forwards of up to this many rows run attention through the row-attention kernel (kernels.attention;
    # 0: none, attention.ALL_ROWS: every forward)
    attention: int = 0
    # the kernel's software prefetch distance, in steps of k, per tile shape (ROW_SHAPES; 0: none): a property of
    # the machine, measured (kernels.choose); it never changes a result
    prefetch: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        contiguous = bool(self.rows) and len(self.rows) == max(self.rows) - min(self.rows) + 1
        self.span = (min(self.rows), max(self.rows)) if contiguous else None

    def takes(self, rows) -> bool:
        """Whether a forward of `rows` rows runs the kernel. Over a contiguous range of row counts this is
        a range check, so a shape-dynamic compiled graph guards on a range instead of one graph per T."""
        if self.span is not None:
            return self.span[0] <= rows <= self.span[1]
        return rows in self.rows

    def prefetch_rows(self) -> list[int]:
        """The row counts whose kernel calls prefetch."""
        return [T for T in sorted(self.rows) if shape_of(T) < len(self.prefetch) and self.prefetch[shape_of(T)]]

    def label(self) -> str:
        """e.g. "fast (1-16), prefetch (3-16), row attention (1-64)", "invariant (1-64), row attention (all)",
        "aten": what a run records."""
        label = f"{self.mode} ({_ranges(sorted(self.rows))})" if self.rows else self.mode
        if self.prefetch_rows():
            label += f", prefetch ({_ranges(self.prefetch_rows())})"
        if self.attention:
            label += f", row attention ({'all' if self.attention == sys.maxsize else f'1-{self.attention}'})"
        return label


def _ranges(ns: list[int]) -> str:
    parts, start = [], None
    for i, n in enumerate(ns):
        start = n if start is None else start
        if i + 1 == len(ns) or ns[i + 1] != n + 1:
            parts.append(f"{start}-{n}" if n != start else str(n))
            start = None
    return ",".join(parts)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [ceil(N / 16), K, 16]: panel p holds output columns 16p..16p+15 (zeros past N), k-major."""
    N, K = weight.shape
    P = -(-N // LANES)
    padded = F.pad(weight.detach(), (0, 0, 0, P * LANES - N))  # (P * 16, K)
    return padded.view(P, LANES, K).transpose(1, 2).contiguous()  # (P, K, 16)


def packed_shape(N: int, K: int) -> tuple[int, int, int]:
    return (-(-N // LANES), K, LANES)


def arena(nbytes: int) -> torch.Tensor:
    """A zeroed block of `nbytes` bytes (uint8) for packed weights, backed by transparent huge pages where the
    kernel offers them (Linux, THP "always" or "madvise"): one 2 MB page table entry instead of 512, so a
    stream over the weights misses the TLB 512 times less often. Elsewhere the same block in ordinary pages."""
    # anonymous and private (a shared mapping is shmem, which THP leaves alone), zeroed, one huge page more than
    # asked so that the block can start on a huge page's boundary; freed with the last tensor over it
    block = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            block.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # a kernel without THP: ordinary pages
    whole = torch.frombuffer(block, dtype=torch.uint8)  # the tensor keeps `block` alive
    skip = -whole.data_ptr() % HUGE_PAGE
    return whole[skip:skip + nbytes]


def pack_all(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """pack() of each weight, the packed copies side by side in one `arena` (64-byte aligned each)."""
    sizes = [torch.Size(packed_shape(*w.shape)).numel() * w.element_size() for w in weights]
    starts, end = [], 0
    for nbytes in sizes:
        starts.append(end)
        end += -(-nbytes // 64) * 64
    block = arena(end)
    out = []
    for w, start, nbytes in zip(weights, starts, sizes):
        p = block[start:start + nbytes].view(w.dtype).view(packed_shape(*w.shape))  # (ceil(N / 16), K, 16)
        p.copy_(pack(w))
        out.append(p)
    return out


def register_fake() -> None:
    """The op's output shape for torch.compile's tracing (once per process, after the library loaded)."""
    global _FAKE_REGISTERED
    if _FAKE_REGISTERED:
        return

    torch.library.register_fake("workbench_kernels::stream_linear")(output_like)
    torch.library.register_fake("workbench_kernels::stream_linear_group")(group_output_like)
    _FAKE_REGISTERED = True


def output_like(x, packed, bias, N, ahead=()):
    """stream_linear's output, empty: (..., N) like x (its shape function for torch.compile)."""
    return x.new_empty((*x.shape[:-1], N))


def group_output_like(x, packed, bias, N, ahead=()):
    """stream_linear_group's output, empty: flat, T * sum(N) (T = x's rows), every weight's T rows one after the
    other."""
    return x.new_empty((x.numel() // x.shape[-1] * sum(N),))


def group_siblings(graph: torch.fx.Graph) -> int:
    """A graph pass for inductor (after its own post-grad passes; the compiled backend runs it): the kernel's calls
    on the same input node, with the same weight dtype and all with or all without a bias, become one
    `stream_linear_group` call (with their prefetch distances, the same for the group), whose one flat output
    holds each former call's output, contiguous, one after the other (graphs of static shapes only: the row count sets where each one starts). A decoding step's linears
    are bound by streaming their weights, and what each call adds besides (the dispatch, a parallel region and
    its join, a thread idle at the end of a small weight) is paid once per group instead of once per linear.
    The outputs are the same bits: each column is computed as in a call of its own. Returns how many calls were
    merged away."""
    try:  # the ops read while compiling, like the kernel's calls in the graph (scripts/kernel_ab.py swaps them)
        single = torch.ops.workbench_kernels.stream_linear.default
        grouped = torch.ops.workbench_kernels.stream_linear_group.default
    except AttributeError:  # the kernels are not loaded here (or a build without groups): nothing to group
        return 0
    order = {node: i for i, node in enumerate(graph.nodes)}
    groups: dict[tuple, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target is not single or node.kwargs or len(node.args) not in (4, 5):
            continue
        x, packed, bias = node.args[:3]
        ahead = tuple(node.args[4]) if len(node.args) == 5 else ()
        if not isinstance(packed, torch.fx.Node) or "val" not in packed.meta:
            continue
        groups.setdefault((x, packed.meta["val"].dtype, bias is None, ahead), []).append(node)
    merged = 0
    for (x, _, no_bias, ahead), members in groups.items():
        first = members[0]
        # every weight and bias must exist where the group's call goes (graph inputs and constants always do)
        inputs = [a for m in members for a in m.args[1:3] if isinstance(a, torch.fx.Node)]
        if len(members) < 2 or any(order[a] > order[first] for a in inputs):
            continue
        widths = [m.args[3] for m in members]
        rows = x.meta["val"].numel() // x.meta["val"].shape[-1] if "val" in x.meta else None
        if not isinstance(rows, int):  # a shape-dynamic graph: left as it is
            continue
        with graph.inserting_before(first):
            biases = [] if no_bias else [m.args[2] for m in members]
            call = graph.call_function(grouped, (x, [m.args[1] for m in members], biases, widths,
                                                 *([list(ahead)] if ahead else [])))
            whole = call.meta["val"] = group_output_like(x.meta["val"], None, None, widths)  # a fake tensor
            start = 0
            for m, n in zip(members, widths):
                part = graph.call_function(torch.ops.aten.slice.Tensor, (call, 0, start, start + rows * n))
                part.meta["val"] = whole[start:start + rows * n]
                shaped = graph.call_function(torch.ops.aten.view.default, (part, list(m.meta["val"].shape)))
                shaped.meta.update(m.meta)
                shaped.meta["val"] = part.meta["val"].view(m.meta["val"].shape)
                m.replace_all_uses_with(shaped)
                start += rows * n
        for m in members:
            graph.erase_node(m)
        merged += len(members) - 1
    return merged


def _version(t: torch.Tensor) -> int:
    """A tensor's in-place version counter; -1 for an inference tensor, which has none (and which code
    outside inference mode cannot change in place)."""
    return -1 if t.is_inference() else t._version


class StreamLinear(nn.Linear):
    """An nn.Linear that runs the weight-streaming kernel for the row counts in its model's plan.

    Its packed copy follows the weight: a weight changed in place (its version counter moved) is packed
    again before the kernel reads it (outside compiled graphs, which hold the copy they were traced with)."""

    plan: KernelPlan
    packed: torch.Tensor
    packed_version: int

    def repack(self) -> None:
        self.packed = pack(self.weight)
        self.packed_version = _version(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and _version(self.weight) != self.packed_version:
            self.repack()  # the weight changed in place since it was packed (training, an edited copy)
        return linear(x, self.weight, self.bias, self.packed, self.plan)


def install(model: nn.Module, plan: KernelPlan) -> int:
    """Switch the model's linears to StreamLinear under `plan` (or give an installed model the new plan);
    returns how many linears run it. CPU fp32/bf16 weights only: quantised modules and other dtypes stay."""
    register_fake()
    new = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"
           and m.weight.dtype in PACKED_DTYPES]
    for module, packed in zip(new, pack_all([m.weight for m in new])):
        module.__class__ = StreamLinear
        module.register_buffer("packed", packed, persistent=False)
        module.packed_version = _version(module.weight)
    count = 0
    for module in model.modules():
        if isinstance(module, StreamLinear):
            module.plan = plan
            count += 1
    return count


def linear_shapes(model: nn.Module) -> list[tuple[int, int, torch.dtype]]:
    """(N, K, dtype) of every linear the kernel can run, in module order (what a measurement replays)."""
    return [(m.out_features, m.in_features, m.weight.dtype) for m in model.modules()
            if isinstance(m, nn.Linear) and m.weight.device.type == "cpu" and m.weight.dtype in PACKED_DTYPES]


def packed_for(weight: torch.Tensor | None, plan: KernelPlan | None) -> torch.Tensor | None:
    """A weight used outside an nn.Linear (a head's rows of the LM head), packed for the kernel when `plan`
    runs it for some row count (None otherwise)."""
    if (plan is None or not plan.rows or weight is None or weight.device.type != "cpu"
            or weight.dtype not in PACKED_DTYPES):
        return None
    return pack_all([weight])[0]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor | None,
           plan: KernelPlan | None) -> torch.Tensor:
    """F.linear(x, weight, bias), through the kernel when `packed` is given, x is on the CPU, the plan takes its
    row count and no gradient is wanted (the kernel has no backward)."""
    if (packed is not None and plan is not None and plan.takes(x.numel() // weight.shape[1])
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        # the prefetch distances only where there are some: a call without them is what a build from before
        # them takes too (scripts/kernel_ab.py runs one)
        y = torch.ops.workbench_kernels.stream_linear(x.float(), packed, None if bias is None else bias.float(),
                                                      weight.shape[0], *([list(plan.prefetch)] if any(plan.prefetch)
                                                                         else []))
        return y if x.dtype == torch.float32 else y.to(x.dtype)
    return F.linear(x, weight, bias)
