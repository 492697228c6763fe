"""The target's LM head as a drafter head uses it, in training and in decoding: over the head's kept rows.

With a trimmed vocabulary (VocabTrim / FR-Spec) only the rows of the kept token
ids are multiplied, so a head's logits cost k/V of the full head; `tokens` maps
a row back to its token id, `full` a distribution over the rows back to one over
the whole vocabulary, `labels` token ids to rows for a training loss. The
model's final soft-capping applies as in its own forward.

DraftVocabLM is the same interface over an EAGLE-3 head's own LM head: its
rows are a draft vocabulary, row i standing for target token i + d2t[i].
"""
from __future__ import annotations

from typing import Any

import torch

from .. import kv_cache as kv
from ..kernels.linear import KernelPlan, linear, packed_for


class HeadLM:
    def __init__(self, model: Any, ids: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                 plan: KernelPlan | None = None) -> None:
        """model: the target's transformers model; ids: the kept token ids, sorted (None: all);
        dtype: the weights' dtype for the matmul (training uses float32); plan: the target's CPU kernel plan
        (workbench.kernels), under which the kept rows run the workbench kernel like the target's own head."""
        self.model = model
        self.ids = ids  # (k,) or None
        head = model.get_output_embeddings()
        weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
        if weight is not None:  # frozen rows; an int8 head (no float weight) goes through the module instead
            weight = weight.detach() if dtype is None else weight.detach().to(dtype)
            bias = None if bias is None else (bias.detach() if dtype is None else bias.detach().to(dtype))
            if ids is not None:
                weight, bias = weight[ids], None if bias is None else bias[ids]
        self.weight, self.bias = weight, bias  # (k, H), (k,) or None
        self.plan, self.packed = plan, packed_for(weight, plan)
        self._rows: torch.Tensor | None = None

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., k) logits over the kept rows (k = V untrimmed)."""
        if self.weight is None:
            full = kv.logits_from_hidden(self.model, feats)
            return full if self.ids is None else full[..., self.ids]
        return kv.softcap(self.model, linear(feats, self.weight, self.bias, self.packed, self.plan))

    def tokens(self, idx: torch.Tensor) -> list[int]:
        return (self.ids[idx] if self.ids is not None else idx).tolist()

    def full(self, probs: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """A distribution over the kept rows (k,) as one over the target's vocabulary (V,) (zeros elsewhere)."""
        if self.ids is None:
            return probs
        out = torch.zeros(vocab_size, dtype=probs.dtype, device=probs.device)
        return out.index_copy_(0, self.ids, probs)

    def topk(self, logits: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        probs = logits.float().softmax(-1)
        vals, idx = torch.topk(probs, min(k, probs.shape[-1]))
        return self.tokens(idx), vals.tolist()

    def labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> row indices; -100 (ignored by cross-entropy) where a token is not a kept row."""
        if self.ids is None:
            return tokens
        if self._rows is None:
            V = int(self.ids.max()) + 1
            self._rows = torch.full((V,), -1, dtype=torch.long, device=self.ids.device)
            self._rows[self.ids] = torch.arange(len(self.ids), device=self.ids.device)
        inside = tokens < self._rows.shape[0]
        r = self._rows[tokens.clamp(max=self._rows.shape[0] - 1)]
        return torch.where(inside & (r >= 0), r, torch.full_like(r, -100))


class DraftVocabLM(HeadLM):
    """An EAGLE-3 head's own norm + LM head over its draft vocabulary (rows -> target ids through d2t)."""

    def __init__(self, head: Any) -> None:
        self.head = head
        self.ids = torch.arange(head.d2t.numel(), device=head.d2t.device) + head.d2t  # (Vd,) target ids
        self.weight = self.bias = self.plan = self.packed = None
        self._rows = None

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., H) the layer's outputs -> (..., Vd) logits over the draft vocabulary."""
        return self.head.draft_logits(feats)


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, int]:
    """(top-1 hits, top-5 hits, counted) of logits (N, k) against row labels (N,); label -100 is not counted."""
    keep = labels >= 0
    if not keep.any():
        return 0, 0, 0
    top = logits[keep].topk(min(5, logits.shape[-1]), dim=-1).indices
    lab = labels[keep][:, None]
    return int((top[:, :1] == lab).sum()), int((top == lab).any(-1).sum()), int(keep.sum())
