"""Training losses of the DFlash-style block head (workbench.heads.block), on the self-distilled data of
workbench.train.

DFlash (Chen et al. 2025) trains its block drafter on random anchor positions of
the target's own outputs: each anchor t is a block whose context is the target's
fused features up to t, whose first slot is the (known) token x_{t+1} and whose k
mask slots are to be filled with x_{t+2..t+k+1}. Here the labels are the target's
own greedy choices a_{t+1..t+k} (what a greedy verifier accepts), cross-entropy
per block position over the head's (trimmed) LM-head rows, later positions
weighted 0.8^(i-1) as Medusa's heads are. A training step takes ANCHORS_PER_SEQUENCE
random anchors per sequence of the batch (all of them when evaluating), so a step
costs the same whatever the sequences' lengths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads.block import DFlashHead
from .heads.lm_head import HeadLM, topk_hits

ANCHORS_PER_SEQUENCE = 16


def dflash_losses(head: DFlashHead, lmh: HeadLM, embed, b: dict):
    """(loss, {name: value}, per-position (top-1 hits, top-5 hits, count)) on one batch of workbench.train._batch.

    b: f (B, T, H) final states, g (B, T, H m) feature layers, tok / a (B, T) tokens and the target's argmax,
    resp (B, T) positions whose next token is a response token, len (B,).
    """
    f, tok, a, resp, lens = b["f"], b["tok"], b["a"], b["resp"], b["len"]
    B, T, _ = f.shape
    C, k = head.context, head.block
    feats = head.committed(torch.cat([f, b["g"]], dim=-1))  # (B, T, H) fused features
    col = torch.arange(T, device=f.device)
    anchor = resp & (col[None] >= C - 1) & (col[None] + 1 < lens[:, None])  # t with C features and a root
    bi, ti = anchor.nonzero(as_tuple=True)  # (N,), (N,)
    if head.training and len(bi) > ANCHORS_PER_SEQUENCE * B:
        pick = torch.randperm(len(bi), device=f.device)[: ANCHORS_PER_SEQUENCE * B]
        bi, ti = bi[pick], ti[pick]
    window = ti[:, None] + torch.arange(1 - C, 1, device=f.device)[None]  # (N, C) positions t-C+1..t
    ctx = feats[bi[:, None], window]  # (N, C, H)
    root = embed(tok[bi, ti + 1])  # (N, H) e(x_{t+1})
    out = head(ctx, root)  # (N, k, H)
    loss, parts, stats = feats.new_zeros(()), {}, []
    for i in range(1, k + 1):
        at = ti + i  # a_{t+i}: the target's token at t + i + 1, drafted at mask slot i
        labels = lmh.labels(a[bi, at.clamp(max=T - 1)])
        labels = torch.where(at < lens[bi], labels, torch.full_like(labels, -100))
        logits = lmh.logits(out[:, i - 1])  # (N, rows)
        stats.append(topk_hits(logits.detach(), labels))
        if not (labels >= 0).any():
            continue
        li = F.cross_entropy(logits, labels, ignore_index=-100)
        loss = loss + li * 0.8 ** (i - 1)
        parts[f"pos{i}_loss"] = float(li.detach())
    return loss, parts, stats
