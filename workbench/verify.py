"""Lossless verification of a draft tree against the target, shared by every method.

Notation (Leviathan et al. 2023; Chen et al. 2023; SpecInfer, Miao et al. 2024):
    p  = the target's distribution at a position (after temperature/top-k/top-p)
    q  = the distribution the drafter drew a token x from
Rows of the target's output: row 0 is the root (last committed token), row i+1
is draft node i, so the distribution for node i's *children* is row i+1 and the
distribution node i itself was judged by is row parents[i]+1.

Greedy: walk down the tree following the target's argmax; the first argmax with
no matching child is the bonus/correction token. Token-identical to plain greedy.

Sampling: at each node, try its children in order with recursive rejection
sampling (SpecInfer's multi-step speculative sampling; with one child it is the
ordinary speculative sampling rule):
    accept child x with probability min(1, p(x) / q_x(x))
    on rejection          p <- norm(max(p - q_x, 0))     (the residual)
and if every child is rejected, sample the next token from the final residual.
This leaves the output distributed exactly as p, provided q_x is the
distribution x was really drawn from given the earlier siblings (i.i.d. siblings
share q; siblings drawn without replacement get q renormalised without the
earlier ones; deterministic proposals get a one-hot q).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import Draft


@dataclass
class Verdict:
    accepted: list[int]  # node indices of the accepted path, root's child first
    bonus_token: int  # the target's own token after the path (bonus or correction)
    bonus_p: float  # its probability under the target (temperature 1 under greedy)


def node_target_probs(probs: torch.Tensor, draft: Draft) -> list[float]:
    """p of every node's token at its parent: probs (n+1, V) -> n floats."""
    if len(draft) == 0:
        return []
    rows = torch.tensor([par + 1 for par in draft.parents], device=probs.device)
    toks = torch.tensor(draft.tokens, device=probs.device)
    return probs[rows, toks].tolist()


def residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """norm(max(p - q, 0)): what is left of p after rejecting x drawn from q (q=None: one-hot at x)."""
    if q is None:
        out = p.clone()
        out[x] = 0.0  # max(p - onehot(x), 0): p without x
    else:
        out = torch.clamp(p - q.to(p.dtype), min=0.0)
    total = out.sum()
    if total <= 0:  # p == q up to rounding: nothing left to correct, keep p
        return p
    return out / total


def verify_greedy(logits: torch.Tensor, draft: Draft) -> Verdict:
    """logits: (n+1, V) target logits for [root] + nodes. Longest argmax-matching path."""
    best = logits.argmax(-1).tolist()  # (n+1,) one sync for the whole tree
    children = draft.children
    path: list[int] = []
    node = -1
    while True:
        want = best[node + 1]
        nxt = next((c for c in children.get(node, ()) if draft.tokens[c] == want), None)
        if nxt is None:
            return Verdict(path, want, float("nan"))
        path.append(nxt)
        node = nxt


def verify_stochastic(probs: torch.Tensor, draft: Draft, generator: torch.Generator | None) -> Verdict:
    """probs: (n+1, V) warped target distributions for [root] + nodes.

    Recursive rejection sampling down the tree (see module docstring).
    """
    children = draft.children
    path: list[int] = []
    node = -1
    while True:
        p = probs[node + 1]  # (V,) target distribution for this node's children
        for c in children.get(node, ()):
            x = draft.tokens[c]
            q_x = 1.0 if draft.q_dist is None else float(draft.q_dist[c, x])
            r = float(torch.rand((), generator=generator, device=probs.device))
            if q_x > 0 and r * q_x < float(p[x]):  # r < p(x)/q(x): accept (q <= p: always)
                path.append(c)
                node = c
                break
            # rejected: continue from the residual norm(max(p - q, 0))
            p = residual(p, None if draft.q_dist is None else draft.q_dist[c], x)
        else:
            tok = int(torch.multinomial(p, 1, generator=generator).item())
            return Verdict(path, tok, float(probs[node + 1, tok]))
