"""Training losses of the PARD draft model (workbench.heads.pard), on the self-distilled data of workbench.train.

PARD (An et al. 2025) trains the draft on sequences extended with mask tokens:
for an anchor t (the root, the last committed token x_t) and a level j = 1..k-1,
a mask token at position t + j that sees x_1..x_t and the anchor's masks of the
levels before it predicts x_{t+1+j}; level 0 is the ordinary next-token
prediction at every real position. All of a sequence's real tokens and masks run
in ONE forward, each mask slot's attention restricted to its own anchor's
context and chain. PARD's conditional drop keeps that affordable: a level-j mask
of an anchor is kept with probability KEEP only if its level j-1 mask was kept
(a kept mask always has its chain of earlier masks), so level j holds about
KEEP^(j-1) of the anchors and the extra positions stay a small multiple of the
sequence however long the block.

Targets are the target model's own next-token distributions (stored as its
final hidden states f, turned into logits through its LM head): KL(target ||
draft) per level, over the head's (trimmed) LM-head rows, as the distilled draft
is trained; top-1/top-5 hits are counted against the target's argmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads.lm_head import HeadLM, topk_hits
from .heads.pard import PardHead

ANCHORS_PER_SEQUENCE = 16  # level-1 anchors drawn per sequence and training step
EVAL_ANCHORS = 48  # anchors per held-out sequence when evaluating (evenly spaced, every level kept)
KEEP = 0.8  # conditional drop: the chance that an anchor's next level is kept, given this one is


def _anchors(ok: torch.Tensor, k: int, training: bool) -> list[tuple[int, int]]:
    """(anchor position, level) pairs of one sequence's mask slots, chains in level order; ok (T,) the valid anchors."""
    cand = ok.nonzero()[:, 0]
    if training:
        picks = cand[torch.randperm(len(cand), device=cand.device)[:ANCHORS_PER_SEQUENCE]]
    else:
        picks = cand[torch.linspace(0, len(cand) - 1, min(EVAL_ANCHORS, len(cand))).long()] if len(cand) else cand
    slots = []
    for p in picks.tolist():
        for j in range(1, k):
            if j > 1 and training and torch.rand(()) >= KEEP:
                break  # conditional drop: the rest of this anchor's chain goes too
            slots.append((p, j))
    return slots


def extended_forward(head: PardHead, embed, tok: torch.Tensor, lens: torch.Tensor, slots: list[list[tuple[int, int]]]):
    """One forward over each sequence's real tokens followed by its mask slots (`slots[r]`: (anchor, level) pairs).

    tok (B, T), lens (B,). Returns out (B, S, H) the final states, anchor (B, S), level (B, S) (0: a real token),
    used (B, S) (False: padding), with S = T + the most mask slots of a sequence; a slot's output predicts the
    token at position anchor + level + 1.
    """
    B, T = tok.shape
    dev = tok.device
    M = max(1, max(len(s) for s in slots))
    S = T + M
    col = torch.arange(T, device=dev)
    anchor = torch.cat([col[None].expand(B, T), torch.zeros(B, M, dtype=torch.long, device=dev)], dim=1)  # (B, S)
    level = torch.zeros(B, S, dtype=torch.long, device=dev)
    used = torch.cat([col[None] < lens[:, None], torch.zeros(B, M, dtype=torch.bool, device=dev)], dim=1)  # (B, S)
    for r, s in enumerate(slots):
        if s:
            pj = torch.tensor(s, device=dev)  # (n, 2)
            anchor[r, T:T + len(s)], level[r, T:T + len(s)], used[r, T:T + len(s)] = pj[:, 0], pj[:, 1], True
    is_mask = (torch.arange(S, device=dev) >= T)[None]  # (1, S)
    # a real query sees the real keys up to itself (causal); a mask query the real keys up to its anchor and its
    # own anchor's masks up to its level (what drafting feeds: the context, then the masks); padding itself only
    qa, ka = anchor[:, :, None], anchor[:, None, :]  # (B, S, 1), (B, 1, S)
    see_real = ~is_mask[:, None, :] & (ka <= qa)
    see_mask = is_mask[:, :, None] & is_mask[:, None, :] & (ka == qa) & (level[:, None, :] <= level[:, :, None])
    eye = torch.eye(S, dtype=torch.bool, device=dev)[None]
    attn = (see_real | see_mask) & used[:, None, :] & used[:, :, None] | eye  # (B, S, S)
    H = head.mask.shape[0]
    embs = torch.cat([embed(tok).to(head.mask.dtype), head.mask.expand(B, M, H)], dim=1)  # (B, S, H)
    out, _ = head(embs, anchor + level, attn)  # (B, S, H); a level-j slot sits at position anchor + j
    return out, anchor, level, used


def pard_losses(head: PardHead, lmh: HeadLM, embed, b: dict):
    """(loss, {name: value}, per-position (top-1 hits, top-5 hits, count)) on one batch of workbench.train._batch.

    b: f (B, T, H) the target's final states, tok / a (B, T) tokens and the target's argmax, resp (B, T) positions
    whose next token is a response token, len (B,).
    """
    f, tok, a, resp, lens = b["f"], b["tok"], b["a"], b["resp"], b["len"]
    B, T, _ = f.shape
    col = torch.arange(T, device=f.device)
    ok = resp & (col[None] + 1 < lens[:, None])  # anchors with at least one target after them
    slots = [_anchors(ok[r], head.block, head.training) for r in range(B)]
    out, anchor, level, used = extended_forward(head, embed, tok, lens, slots)
    at = anchor + level  # (B, S): the target's state there is the distribution of the token the slot predicts
    real = torch.cat([resp & (col[None] < lens[:, None]), torch.zeros(B, out.shape[1] - T, dtype=torch.bool,
                                                                      device=f.device)], dim=1)  # (B, S)
    loss, parts, stats = f.new_zeros(()), {}, []
    for j in range(head.block):
        # level 0: every real response position (ordinary next-token prediction); level j: the kept masks
        sel = real if j == 0 else used & (level == j) & (at < lens[:, None])  # (B, S)
        bi, si = sel.nonzero(as_tuple=True)
        if not len(bi):
            stats.append((0, 0, 0))
            continue
        ti = at[bi, si]
        with torch.no_grad():
            p = lmh.logits(f[bi, ti]).log_softmax(-1)  # (N, rows) the target's own next-token distribution
        q = lmh.logits(out[bi, si].float()).log_softmax(-1)  # (N, rows)
        stats.append(topk_hits(q.detach(), lmh.labels(a[bi, ti])))
        lj = F.kl_div(q, p, log_target=True, reduction="batchmean")
        loss = loss + lj
        parts[f"pos{j + 1}_kl"] = float(lj.detach())
    return loss, parts, stats
