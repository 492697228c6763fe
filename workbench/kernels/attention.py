"""Attention for the kernel modes: the workbench's row-attention kernel (row_attention.cpp), and rows whose
results do not depend on how many rows are computed.

A decoding step asks attention for one query row per head over a few hundred cached columns. ATen's fused
attention for CPU (flash attention) took 142 us a layer for that on the 2-core test machine, 4.3 ms of a 23 ms
token for a 30-layer model, most of it not the reading of the keys and values; the row-attention kernel takes
about 52 us (docs/results/2026-12-07-cpu-kernels.md). It reads each column a row sees once for all the
forward's rows and heads, in chunks the threads share, and skips the columns no row sees (the static cache's
unfilled ones). Each row's result depends only on its query, the columns it sees and their places in the cache
(fixed chunk borders, the same operations in the same order), so it is also batch-invariant.

Two transformers attention implementations (`use` switches a model between them and what it had):
- FAST ("workbench_rows", the fast mode): the kernel for forwards of up to FAST_MAX_ROWS rows (decoding and
  every verification the compiled backend runs as a graph), transformers' SDPA for longer ones (prompts) and for
  what the kernel does not cover (`supported`);
- INVARIANT ("workbench_invariant"): every row by the kernel. A causal row sees a prefix of the cache, so a
  chain's verification forward gives each row the bits of the one-token forward at that position. Outside
  torch.compile a tree's rows (which see their ancestors' columns, not a prefix) are computed one at a time over
  their visible columns gathered in order, which are what a one-token forward of the accepted path later sees;
  inside a compiled graph (the static cache) a tree's row runs over the cache with its row of the mask, so its
  bits may differ in the last place from those later one-token forwards (docs/backends.md, Kernels). Where the
  kernel does not apply, every row is one call of SDPA, as a one-token step makes it.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

FAST = "workbench_rows"
INVARIANT = "workbench_invariant"
FAST_MAX_ROWS = 64  # the compiled backend's largest graph (MAX_COMPILED_T); longer forwards are prompts
ALL_ROWS = sys.maxsize  # a plan's `attention` for "every forward"
MAX_HEAD = 128  # the kernel's largest head size (a multiple of 16)

_REGISTERED = False


def supported(query, key, value, attention_mask, dropout: float = 0.0, **kwargs) -> bool:
    """Whether the row-attention kernel computes this call: fp32 on the CPU, head size a multiple of 16 up to
    MAX_HEAD, grouped heads, a 4-d float or boolean mask over the keys' columns (or none), and no softcap,
    attention sinks, position bias or dropout."""
    return (query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.float32
            and query.dim() == 4 and query.shape[-1] % 16 == 0 and query.shape[-1] <= MAX_HEAD
            and query.shape[1] % key.shape[1] == 0 and not dropout
            and all(kwargs.get(k) is None for k in ("softcap", "s_aux", "position_bias"))
            and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[-1] == key.shape[2]
                                            and attention_mask.dtype in (torch.float32, torch.bool))))


def _kernel(query, key, value, mask, scaling) -> torch.Tensor:
    """(B, Hq, T, D) queries over (B, Hkv, S, D) keys and values -> (B, T, Hq, D)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return torch.ops.workbench_kernels.row_attention(query, key, value, mask, float(scale))


def fast_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: query (B, Hq, T, D), key/value (B, Hkv, S, D) -> ((B, T, Hq, D), None)."""
    T, S = query.shape[2], key.shape[2]
    # without a mask SDPA aligns causality top-left, the kernel bottom-right: the same when T is 1 or T == S
    if (T <= FAST_MAX_ROWS and (attention_mask is not None or T == 1 or T == S)
            and supported(query, key, value, attention_mask, dropout, **kwargs)):
        return _kernel(query, key, value, attention_mask, scaling), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  **kwargs)


def invariant_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface, every row computed as a one-row forward would compute it."""
    if not supported(query, key, value, attention_mask, dropout, **kwargs):
        return _one_by_one(query, key, value, attention_mask, scaling), None
    if attention_mask is None or torch.compiler.is_compiling():
        return _kernel(query, key, value, attention_mask, scaling), None
    mask = attention_mask[0, 0]  # (T, S)
    visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    if bool((visible.long().cumprod(-1).sum(-1) == visible.sum(-1)).all()):  # every row sees a prefix: a chain
        return _kernel(query, key, value, attention_mask, scaling), None
    rows = []
    for i in range(query.shape[2]):  # a tree's row: its ancestors' columns gathered, in order
        idx = visible[i].nonzero().squeeze(1)
        rows.append(_kernel(query[:, :, i:i + 1], key.index_select(2, idx), value.index_select(2, idx), None,
                            scaling))  # (B, 1, Hq, D)
    return torch.cat(rows, dim=1), None  # (B, T, Hq, D)


def _one_by_one(query, key, value, attention_mask, scaling) -> torch.Tensor:
    """Each query row by its own SDPA call over the columns it sees: (B, Hq, T, D) -> (B, T, Hq, D)."""
    T, S = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    compiling = torch.compiler.is_compiling()
    rows = []
    for i in range(T):
        q = query[:, :, i:i + 1]  # (B, Hq, 1, D)
        if attention_mask is None:  # causal over the new rows: row i sees the first S - T + i + 1 columns
            k, v, mask = key[:, :, :S - T + i + 1], value[:, :, :S - T + i + 1], None
        else:
            row = attention_mask[:, :, i:i + 1, -S:]  # (B, 1, 1, S): bool, or additive (0 = visible)
            if compiling:
                k, v, mask = key, value, row
            else:
                visible = row[0, 0, 0] if row.dtype == torch.bool else row[0, 0, 0] == 0
                n = int(visible.sum())
                if bool(visible[:n].all()):  # a prefix (a chain's row): a view, as a one-token step reads it
                    k, v = key[:, :, :n], value[:, :, :n]
                else:  # a tree's row: its ancestors' columns gathered, in order
                    idx = visible.nonzero().squeeze(1)
                    k, v = key.index_select(2, idx), value.index_select(2, idx)
                mask = None
        rows.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa))
    out = torch.cat(rows, dim=2)  # (B, Hq, T, D)
    return out.transpose(1, 2).contiguous()


def register() -> None:
    """Make FAST and INVARIANT transformers attention implementations (with sdpa's masks), once per process;
    the kernel's shape function for torch.compile with them."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    for name, fn in ((FAST, fast_attention), (INVARIANT, invariant_attention)):
        AttentionInterface.register(name, fn)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)

    torch.library.register_fake("workbench_kernels::row_attention")(output_like)
    _REGISTERED = True


def output_like(q, k, v, mask, scale):
    """row_attention's output, empty: (B, T, Hq, D) for q (B, Hq, T, D) (its shape function for torch.compile)."""
    return q.new_empty((q.shape[0], q.shape[2], q.shape[1], q.shape[3]))


def model_supported(model: torch.nn.Module) -> bool:
    """Whether the kernel can run this model's attention layers (fp32 weights, head size, no attention sinks)."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_attention_heads", None)
    head = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    dtype = next(model.parameters()).dtype
    return (dtype == torch.float32 and isinstance(head, int) and head % 16 == 0 and head <= MAX_HEAD
            and getattr(config, "attn_logit_softcapping", None) is None)


def use(model: torch.nn.Module, name: str | None) -> None:
    """Switch the model's attention to FAST or INVARIANT, or back to what it had (None)."""
    config = model.config
    before = model.__dict__.setdefault("_workbench_attention", config._attn_implementation)
    if name is not None:
        register()
    for cfg in {id(c): c for c in (config, getattr(config, "text_config", None)) if c is not None}.values():
        cfg._attn_implementation = name or before
