"""The compiled backend: a static, position-indexed KV cache and `torch.compile`d forwards.

A `CompiledForward` owns one transformers `StaticCache` of L positions for one
model and two compiled graphs over it (no patched modeling code: the stock model
is called with `cache=`, `position_ids=` and a 4D mask over all L columns):

    one     T == 1 new token (plain decoding, drafting a chain)      static shapes
    bucket  2 <= T <= max(STATIC_T): padded to the next of STATIC_T  static shapes, one graph each
    many    larger T up to MAX_COMPILED_T (big trees)                 T dynamic
    prefill and larger T run the same model eagerly over the same cache

Verification is what drafting methods pay for, so its common sizes get graphs of
their own: a static-shape graph lets inductor plan its matmuls for that row count,
so its cost grows more slowly with T than the shape-dynamic graph's (see
STATIC_T). A forward of T tokens in bucket B runs B rows: the B - T padding rows
repeat the last real token and position, see every real column and nothing
after, and their logits are dropped; their keys and values land in the B - T
cache columns after the real ones, which the mask hides and the next forward
overwrites (the same argument as free rollback).

Rollback is free (gpt-fast): the session's `length` says how many positions are
valid; the mask hides every column from `length + T` on, and the next write
overwrites them. Accepted tree nodes are copied into place (Medusa). A
sliding-window model's cache keeps every position on every layer too
(`kv_cache.cache_config`: a rolling layer could not be rolled back), and its
mask carries the window (`kv_cache.layer_masks`). On CPU the
graphs are compiled with inductor's freezing (a global setting, switched on when
the first compiled session opens), which pre-packs the weights so that a forward
of a few tokens costs little more than one; the one- and two-token graphs
(UNPACKED_MAX_T) are compiled without it and read the weights as they are, which
is faster for a single row, and so is every graph whose linears run the workbench's own
kernel (workbench.kernels), which reads weights it packed itself. On CUDA the one-token graph runs as a CUDA graph
("reduce-overhead").

Compiling takes a few minutes per model on a small CPU. It happens in `prepare`,
before a run's clock starts (reported as `warmup_s`), with progress and an
estimate from the last time. Inductor's on-disk cache lives in the workbench
cache dir: a second process reloads the unpacked graphs from it, but compiles
the pre-packed ones again (their packed weights cannot be stored). L is a bucket
(a power of two, at least MIN_CACHE_LEN) so that runs of similar length share
graphs.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import types
from typing import Any, Callable

import torch
from transformers import StaticCache

from .. import kv_cache as kv
from ..config import ConfigError
from ..device import device_sync, processor
from ..kernels import active_label, plan_for
from ..paths import cache_dir, read_json, write_json

logger = logging.getLogger(__name__)

MIN_CACHE_LEN = 512
MAX_COMPILED_T = 64  # verification forwards up to this many tokens use the compiled graph
# Verification sizes with a static-shape graph each (3 tokens run as 4, 5-8 as 8, 9-16 as 16). Each static graph
# costs clearly less per forward than the shape-dynamic one, but adds its own compile time; graphs of their own
# for sizes in between (5, 6) gain too little over padding to the next size to pay for that. The measurements:
# docs/results/2026-12-05-compiled-backend.md. `WORKBENCH_STATIC_T` overrides it ("" = none: the dynamic graph).
STATIC_T = (2, 4, 8, 16)
# Graphs of at most this many tokens are compiled without freezing, so nothing is pre-packed; the larger static
# graphs freeze and pre-pack their weights: pre-packing pays off over several rows but not for a single one
# (docs/results/2026-12-05-compiled-backend.md, pre-packed weights).
# Unfrozen graphs are also the ones inductor's disk cache keeps: pre-packed weights are bound to
# their addresses and are compiled afresh in every process. (Packing is switched per graph through freezing,
# not through inductor's `cpp.weight_prepack`: its packing passes are set up once per process, by the first
# frozen compilation, so that switch would turn packing off or on for every graph at once.)
UNPACKED_MAX_T = 2
Progress = Callable[[str], None] | None

_POOL: dict[tuple[int, int, str], list["CompiledForward"]] = {}
_POOL_LOCK = threading.Lock()
# Graphs of one code object beyond dynamo's default of 8 silently run eagerly; every graph here has its
# own code object (`_own_code`), so this is only a margin for its shape variants.
RECOMPILE_LIMIT = 64
_CODE_IDS = itertools.count()


def _own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own: dynamo keys compiled graphs and their guards by code object, so
    graphs over different models and caches never share (or evict, or misapply) each other's entries."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_CODE_IDS)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def cpp_wrapped(device: torch.device) -> bool:
    """Whether this device's static graphs run with C++ wrappers (`_compile_static`): every device but CUDA."""
    return device.type != "cuda"


def _compile_static(run: Callable, T: int, device: torch.device, kernel_rows: frozenset[int] = frozenset()) -> Callable:
    """`run` compiled for exactly T new tokens (module docstring: which graphs pre-pack their weights).

    On CPU a static graph runs without dynamo's guards (`skip_all_guards_unsafe`): checking them, hundreds
    over the model's modules, is a visible share of a small model's one-token forward. It is safe here
    because nothing a guard would catch can change: each graph has a code object of its own (`_own_code`),
    is called only through `CompiledForward.call` with tensors of exactly its shapes, dtypes and device,
    under inference mode, over one model and one cache that live as long as it does; every Python value
    that varies (length, positions, mask) enters as a tensor.
    The shape-dynamic graph keeps its guards: its shapes do vary.

    A graph whose linears run the workbench's kernel (T in `kernel_rows`, workbench.kernels) is not frozen
    either: that kernel reads weights it packed itself, so ATen's pre-packing would only add memory, and
    graphs frozen or not differ in the last bits of what they fuse, which the invariant mode must avoid.

    On CPU a static graph's wrapper (the code that allocates buffers and calls its kernels and matmuls,
    hundreds per forward) is C++, not Python (`cpp_wrapper`), built apart from the kernels
    (`cpp_wrapper_build_separate`): each forward runs a little faster (the same logits, where compared).
    Building the wrapper together with the kernels runs no faster and compiles much longer; built apart,
    compiling still takes longer than with a Python wrapper. The measurements:
    docs/results/2026-12-05-compiled-backend.md.
    """
    if not cpp_wrapped(device):
        return torch.compile(_own_code(run), dynamic=False, mode="reduce-overhead" if T == 1 else None)
    options = {"guard_filter_fn": torch.compiler.skip_all_guards_unsafe,
               "cpp_wrapper": True, "cpp_wrapper_build_separate": True, **graph_passes()}
    if T <= UNPACKED_MAX_T or T in kernel_rows:  # the workbench's kernel reads its own packed weights
        options["freezing"] = False
    return torch.compile(_own_code(run), dynamic=False, options=options)


def graph_passes() -> dict[str, Any]:
    """Inductor options for the workbench's own pass over its static-shape graphs (the pass leaves shape-dynamic
    ones as they are): the kernel's linears that read the same input run as one call
    (`kernels.linear.group_siblings`). Inductor's disk cache keys a graph by the pass's source, so a changed pass
    compiles anew."""
    # here: inductor is slow to import; only compiling needs it
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    from ..kernels import linear

    class GroupSiblings(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            linear.group_siblings(graph)

        def uuid(self) -> bytes:
            return get_hash_for_files((linear.__file__,))

    return {"post_grad_custom_post_pass": GroupSiblings()}


def cache_len_bucket(max_len: int, limit: int | None) -> int:
    """The static cache size for a run needing `max_len` positions: a power of two >= MIN_CACHE_LEN."""
    n = MIN_CACHE_LEN
    while n < max_len:
        n *= 2
    if limit is not None and n > limit:
        if max_len > limit:
            raise ConfigError(f"the compiled backend needs {max_len} cache positions; the model has {limit}")
        n = limit
    return n


def compiler_settings() -> None:
    """Keep inductor's compiled artefacts in the workbench cache (unless the user chose a place); room for
    every model's graphs; freezing on.

    Freezing is set in inductor's global config, not per call through torch.compile's `options`: a
    one-token graph compiled with options={"freezing": True} runs many times slower than the same graph
    under the global setting (docs/results/2026-12-05-compiled-backend.md).
    """
    # here: dynamo and inductor are slow to import; only compiling needs them, not every importer of this
    # module (the cost profiles and the benchmark read its buckets)
    import torch._dynamo
    import torch._inductor.config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._inductor.config.freezing = True  # pre-packed weights: a few tokens cost little more than one
    # importing inductor's config already wrote its default (a per-user folder under /tmp) into the
    # variable, so "unset" is "unset or that default"; inductor reads the variable at every compilation
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")


def static_buckets() -> tuple[int, ...]:
    """The verification sizes that get a static graph: STATIC_T, or $WORKBENCH_STATIC_T ("4,8"; "" = none)."""
    raw = os.environ.get("WORKBENCH_STATIC_T")
    if raw is None:
        return STATIC_T
    try:
        sizes = tuple(sorted({int(x) for x in raw.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"WORKBENCH_STATIC_T must be comma-separated token counts, got {raw!r}") from None
    if any(not 2 <= b <= MAX_COMPILED_T for b in sizes):
        raise ConfigError(f"WORKBENCH_STATIC_T sizes must lie in 2..{MAX_COMPILED_T}, got {raw!r}")
    return sizes


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why `model` cannot use the compiled backend, or None."""
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        return "dynamically quantised linears (inductor does not compile them)"
    return None


class CompiledForward:
    """One model's static cache of L positions and its compiled forwards; used by one session at a time."""

    def __init__(self, lm: Any, L: int) -> None:
        self.lm, self.model, self.L = lm, lm.model, L
        self.device = lm.device
        self.hidden_size = int(lm.model.config.hidden_size)  # the final states' width in the graphs' output
        self.window = kv.sliding_window(lm.model.config)  # None: no layer slides
        self.cache = StaticCache(config=kv.cache_config(self.model.config), max_cache_len=L)
        self.cols = torch.arange(L, device=self.device)
        self.busy = False
        self.warmup_s: float | None = None
        model, cache = self.model, self.cache
        # the layers every graph hands out after the final states (fused heads' and EAGLE-3's: `kv.state_layers`)
        self.layer_ids = layer_ids = kv.state_layers(self.model.config)

        def run(input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | dict[str, torch.Tensor]):
            # the stock forward split at the LM head, so the hidden states come out too (drafter heads): the
            # final ones and the feature layers' (a few (T, H) copies; one graph serves every drafter)
            logits, hidden = kv.forward_hidden(model, input_ids, cache, layers=layer_ids, position_ids=position_ids,
                                               attention_mask=mask)
            return logits[0], hidden[0]  # (T, V), (T, H (1 + k))

        self.eager = run
        plan = plan_for(lm)
        rows = plan.rows  # row counts whose linears run the workbench kernel (workbench.kernels)
        self.row_attention = plan.mode == "invariant"  # attention row by row (workbench.kernels.attention)
        self.kernel_rows = rows
        self.one = _compile_static(run, 1, self.device, rows)
        self.buckets = {B: _compile_static(run, B, self.device, rows) for B in static_buckets()}
        self.many = torch.compile(_own_code(run), dynamic=True)

    def pick(self, states: torch.Tensor, hidden: bool | str | tuple[int, ...]) -> torch.Tensor:
        """The states a session asked for out of the graphs' (T, H (1 + k)): True the final ones, "layers" also
        the feature layers', a tuple also those layers' (each one the graphs hand out)."""
        H = self.hidden_size
        if hidden is True:
            return states[:, :H]
        ids = kv.feature_layers(self.model.config) if hidden == "layers" else hidden
        missing = [i for i in ids if i not in self.layer_ids]
        if missing:
            raise ConfigError(f"the compiled backend hands out the hidden states of layers "
                              f"{list(self.layer_ids)} of {self.lm.spec}, not {missing}; use --backend eager")
        cols = [0] + [1 + self.layer_ids.index(i) for i in ids]
        return states.view(states.shape[0], -1, H)[:, cols].reshape(states.shape[0], -1)  # (T, H (1 + len(ids)))

    def bucket(self, T: int, length: int) -> int | None:
        """The static size a T-token verification at `length` runs as, or None (no bucket, or no room)."""
        if T < 2 or length <= 0:
            return None
        B = next((b for b in sorted(self.buckets) if b >= T), None)
        return B if B is not None and length + B <= self.L else None

    @torch.inference_mode()
    def call(self, ids: torch.Tensor, positions: torch.Tensor, block: torch.Tensor | None,
             length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (T, V) and hidden states (T, H (1 + k)) of T new tokens after `length` cached positions
        (the final ones first, then the feature layers': `cache.forward_hidden`)."""
        for layer in self.cache.layers:  # where the new keys/values go
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.fill_(length)
        T = ids.shape[1]
        B = self.bucket(T, length)
        if B is not None:  # padded to B rows (module docstring); outputs of the padding dropped
            pad = B - T
            ids = torch.cat([ids, ids[:, -1:].expand(1, pad)], dim=1)  # (1, B)
            positions = torch.cat([positions, positions[:, -1:].expand(1, pad)], dim=1)  # (1, B)
            logits, hidden = self.buckets[B](ids, positions, self.mask(length, T, block, positions, rows=B))
            return logits[:T], hidden[:T]
        # the invariant kernels' row-by-row attention loops over T, which a shape-dynamic graph cannot trace
        # (it would recompile for every T): those forwards run eagerly
        dynamic = T <= MAX_COMPILED_T and length > 0 and not self.row_attention
        fn = self.one if T == 1 else self.many if dynamic else self.eager
        # inputs as the graphs were compiled for (dense strides, inference tensors): a slice of a longer
        # row or a tensor made outside inference mode would otherwise trigger a recompilation
        ids = ids.clone(memory_format=torch.contiguous_format)
        positions = positions.clone(memory_format=torch.contiguous_format)
        return fn(ids, positions, self.mask(length, T, block, positions))  # (T, V), (T, H (1 + k))

    def mask(self, length: int, T: int, block: torch.Tensor | None, positions: torch.Tensor,
             rows: int | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """(1, 1, rows, L) additive mask: columns < length + T - W visible, `block` over the next W, the rest
        hidden; rows past T (a bucket's padding) see the T real columns' context and nothing after. With the
        sliding window added where the model has one (`kv_cache.layer_masks`; positions (1, rows) the rows')."""
        if block is None:
            block = torch.ones(T, T, dtype=torch.bool, device=self.device).tril_()  # causal over the new tokens
        rows = rows or T
        W = block.shape[1]
        start = length + T - W
        allowed = (self.cols < start).expand(rows, self.L).clone()  # (rows, L)
        allowed[:T, start:start + W] = block.to(self.device)
        mask = torch.zeros(rows, self.L, dtype=self.model.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
        if self.window is None:
            return mask[None, None]
        kv_pos = self.cols.clone()  # (L,) the column's position: its index, a new token's own position
        kv_pos[length:length + T] = positions[0, :T]
        return kv.layer_masks(self.model.config, mask[None, None], positions[0], kv_pos)

    @torch.inference_mode()
    def compile(self, progress: Progress = None) -> float:
        """Compile both graphs (or load them from the disk cache) on dummy tokens; seconds taken."""
        if self.warmup_s is not None:
            return 0.0
        name = self.lm.spec
        guess = _estimate(self._key())
        say = progress or (lambda msg: None)
        say(f"compiling {name} for the compiled backend (cache of {self.L} positions; "
            + (f"about {guess:.0f} s, as last time" if guess else "2-5 minutes the first time on a CPU, "
               "then cached on disk") + ")...")
        t0 = time.perf_counter()
        session = StaticSession(self)
        try:
            session.forward(torch.zeros(1, 4, dtype=torch.long, device=self.device))  # eager: allocates the cache
            for T in [1, *sorted(self.buckets), *self.dynamic_warmups()]:  # every graph the decode can meet
                session.crop(4)
                session.forward(torch.zeros(1, T, dtype=torch.long, device=self.device))
        finally:
            session.close()
        device_sync(self.device)
        self.warmup_s = time.perf_counter() - t0
        _remember(self._key(), self.warmup_s)
        say(f"compiled {name} in {self.warmup_s:.0f} s")
        return self.warmup_s

    def dynamic_warmups(self) -> list[int]:
        """The sizes the shape-dynamic graph is compiled at in the warm-up: one graph per stretch of sizes on
        which the kernel plan makes the same choice (its row check is a guard, so a size past the plan's
        rows would compile a second graph in the middle of a run), the first stretch twice."""
        sizes = [T for T in range(2, MAX_COMPILED_T + 1) if self.bucket(T, 4) is None and not self.row_attention]
        stretches: list[list[int]] = []
        for T in sizes:
            if stretches and (T in self.kernel_rows) == (stretches[-1][-1] in self.kernel_rows) \
                    and T == stretches[-1][-1] + 1:
                stretches[-1].append(T)
            else:
                stretches.append([T])
        if not stretches:
            return []
        return [*reversed(stretches[0][:2]), *(stretch[0] for stretch in stretches[1:])]

    def _key(self) -> str:
        static = ",".join(map(str, sorted(self.buckets)))  # every static graph is compiled in the warm-up
        return (f"{self.lm.spec}|{processor(self.device)}|L={self.L}|static={static}|torch={torch.__version__}"
                f"|threads={torch.get_num_threads()}|kernels={active_label(self.lm)}")


class StaticSession:
    """A run's view of a CompiledForward: its valid length; rollback is setting it."""

    def __init__(self, compiled: CompiledForward) -> None:
        self.compiled = compiled
        self.length = 0
        compiled.busy = True

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                block: torch.Tensor | None = None, keep: int = 0, hidden: bool | str | tuple[int, ...] = False) -> Any:
        c = self.compiled
        T = ids.shape[1]
        if self.length + T > c.L:
            raise ConfigError(f"the compiled backend's cache for {c.lm.spec} holds {c.L} positions; this forward "
                              f"needs {self.length + T} (use a smaller draft or fewer new tokens)")
        if positions is None:
            positions = (self.length + torch.arange(T, device=c.device))[None]  # (1, T)
        logits, states = c.call(ids, positions, block, self.length)  # (T, V), (T, H (1 + k))
        self.length += T
        logits = logits[-keep:] if keep else logits
        if not hidden:
            return logits
        return logits, c.pick(states, hidden)

    def keep(self, start: int, offsets: list[int]) -> None:
        if offsets != list(range(len(offsets))):
            src = torch.tensor([start + o for o in offsets], device=self.compiled.device)
            end = start + len(offsets)
            for layer in self.compiled.cache.layers:
                layer.keys[:, :, start:end] = layer.keys.index_select(2, src)  # gathered first: overlap-safe
                layer.values[:, :, start:end] = layer.values.index_select(2, src)
        self.length = start + len(offsets)

    def crop(self, n: int) -> None:
        self.length = min(self.length, n)

    def close(self) -> None:
        self.compiled.busy = False


def _acquire(lm: Any, L: int) -> CompiledForward:
    """A free CompiledForward for (model, L, kernel plan), made when every existing one is in use (a graph
    keeps the kernel plan it was traced with: workbench.kernels)."""
    compiler_settings()
    kernels = plan_for(lm).label()
    with _POOL_LOCK:
        pool = _POOL.setdefault((id(lm.model), L, kernels), [])
        for cf in pool:
            if not cf.busy and cf.lm is lm:
                cf.busy = True
                return cf
        cf = CompiledForward(lm, L)
        cf.busy = True
        pool.append(cf)
        return cf


def open_compiled(lm: Any, max_len: int, progress: Progress = None) -> StaticSession | None:
    """A compiled session for `lm`, or None (with a warning) when the model cannot use this backend."""
    reason = unsupported_reason(lm.model)
    if reason is not None:
        logger.warning("%s runs eagerly: the compiled backend does not support %s", lm.spec, reason)
        return None
    cf = _acquire(lm, cache_len_bucket(max_len, lm.max_positions))
    try:
        cf.compile(progress)
    except BaseException:
        cf.busy = False
        raise
    return StaticSession(cf)


def prepare(lm: Any, max_len: int, progress: Progress = None) -> float:
    """Compile `lm` for runs of up to max_len positions before they start; seconds spent (0 when warm)."""
    if unsupported_reason(lm.model) is not None:
        return 0.0
    cf = _acquire(lm, cache_len_bucket(max_len, lm.max_positions))
    try:
        return cf.compile(progress)
    finally:
        cf.busy = False


def _estimates_path():
    return cache_dir() / "compile_times.json"


def _estimate(key: str) -> float | None:
    try:
        return float(json.loads(_estimates_path().read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember(key: str, seconds: float) -> None:
    path = _estimates_path()
    try:
        data = read_json(path)
        data[key] = round(seconds, 1)
        write_json(path, data)
    except OSError:
        pass  # an estimate is a nicety
