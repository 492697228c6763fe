"""Attention whose rows do not depend on how many rows are computed: the invariant mode's attention.

A fused attention kernel over T query rows blocks and reduces differently for different T,
so the last bits of a row's output depend on how many rows came with it. Here every query row
is computed on its own, by the same call plain decoding makes for one token:
scaled-dot-product attention of that one row over exactly the columns it may see.
- outside torch.compile (the eager backend's growing cache), the visible columns are gathered
  (a causal row sees a prefix: the very keys and values a one-token step sees);
- inside a compiled graph (the compiled backend's static cache), the row runs over all the cache's
  columns with its row of the mask, which is what the one-token graph runs too.
So a chain's verification forward gives each row the bits of the one-token forward at that
position. A tree's nodes sit at other cache columns than the accepted tokens later do, so
there the bits may differ in the last place (docs/backends.md, Kernels).
T small calls instead of one cost a little per layer: the price of the mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "workbench_invariant"
_REGISTERED = False


def invariant_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: query (B, Hq, T, D), key/value (B, Hkv, S, D) -> ((B, T, Hq, D), None)."""
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
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make NAME a transformers attention implementation (with sdpa's masks), once per process."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, invariant_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    _REGISTERED = True


def use(model: torch.nn.Module, invariant: bool) -> None:
    """Switch the model's attention to the invariant one, or back to what it had."""
    config = model.config
    before = model.__dict__.setdefault("_workbench_attention", config._attn_implementation)
    if invariant:
        register()
    for cfg in {id(c): c for c in (config, getattr(config, "text_config", None)) if c is not None}.values():
        cfg._attn_implementation = NAME if invariant else before
