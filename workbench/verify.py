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

Relaxed acceptance (lossy; workbench.config.AcceptanceConfig says each rule and
its paper): `relaxed_admits` marks the nodes a rule admits, from their parent's
row of p, and both walks take an admitted node as accepted: greedy after
preferring the argmax child, sampling whatever its rejection test says. A node
no rule admits is judged exactly as above, so with nothing admitted the result
(and, under sampling, every random draw) is the lossless one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .config import AcceptanceConfig
from .draft import Draft


@dataclass
class Verdict:
    accepted: list[int]  # node indices of the accepted path, root's child first
    bonus_token: int  # the target's own token after the path (bonus or correction)
    bonus_p: float  # its probability under the target (temperature 1 under greedy)


def node_target_probs(probs: torch.Tensor, draft: Draft) -> list[float]:
    """p of every node's token at its parent: probs (n+1, V) -> n floats, one sync."""
    if len(draft) == 0:
        return []
    return _p_at_parents(probs, draft).tolist()


def residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """norm(max(p - q, 0)): what is left of p after rejecting x drawn from q (q=None: one-hot at x)."""
    if q is None:
        out = p.clone()
        out[x] = 0.0  # max(p - onehot(x), 0): p without x
    else:
        out = torch.clamp(p - q.to(p.dtype), min=0.0)
    total = out.sum()  # 0 when p == q up to rounding: nothing to correct, keep p
    if _host_read_is_free(out):  # torch.where would cost another pass over V
        return out.div_(total) if total > 0 else p
    return torch.where(total > 0, out.div_(total), p)  # no host read


def verify_greedy(logits: torch.Tensor, draft: Draft, admits: list[bool] | None = None) -> Verdict:
    """logits: (n+1, V) target logits for [root] + nodes. Longest argmax-matching path.

    admits: per node, whether a relaxed rule admits it (relaxed_admits); a node matching the argmax is
    still preferred, then the first admitted child."""
    best = logits.argmax(-1).tolist()  # (n+1,) one sync for the whole tree
    children = draft.children
    path: list[int] = []
    node = -1
    while True:
        want = best[node + 1]
        kids = children.get(node, ())
        nxt = next((c for c in kids if draft.tokens[c] == want), None)
        if nxt is None and admits is not None:
            nxt = next((c for c in kids if admits[c]), None)
        if nxt is None:
            return Verdict(path, want, float("nan"))
        path.append(nxt)
        node = nxt


def verify_stochastic(probs: torch.Tensor, draft: Draft, generator: torch.Generator | None,
                      admits: list[bool] | None = None) -> Verdict:
    """probs: (n+1, V) warped target distributions for [root] + nodes.

    admits: per node, whether a relaxed rule admits it (relaxed_admits): accepted without the test.

    Recursive rejection sampling down the tree (see module docstring). p(x), q(x)
    and a uniform r for every node come to the CPU in one sync (gpt-fast); each
    node uses its own r at most once, so the draws stay independent. Only a
    rejection followed by another sibling needs the residual's value at that
    sibling's token (one more sync); the final sample and its p are one more.
    """
    p_x, q_x, r = _node_draws(probs, draft, generator)
    children = draft.children
    path: list[int] = []
    node = -1
    while True:
        p = probs[node + 1]  # (V,) target distribution for this node's children
        for j, c in enumerate(children.get(node, ())):
            x = draft.tokens[c]
            p_of_x = p_x[c] if j == 0 else float(p[x])  # after a rejection p is the residual
            if (q_x[c] > 0 and r[c] * q_x[c] < p_of_x) or (admits is not None and admits[c]):
                # r < p(x)/q(x): accept (q <= p: always); or a relaxed rule admits x
                path.append(c)
                node = c
                break
            # rejected: continue from the residual norm(max(p - q, 0))
            p = residual(p, None if draft.q_dist is None else draft.q_dist[c], x)
        else:
            tok, bonus_p = _sample_with_p(p, probs[node + 1], generator)
            return Verdict(path, tok, bonus_p)


def relaxed_admits(probs: torch.Tensor, draft: Draft, acceptance: AcceptanceConfig,
                   scores: torch.Tensor | None = None) -> list[bool] | None:
    """Which nodes the relaxed rule admits, judged on their parent's row: (n+1, V) -> n bools, one sync.

    probs: the target's p per row; scores: what ranks tokens (greedy passes the logits, so ranks and the
    argmax agree with verify_greedy's; default probs). None for the exact rule (nothing to admit).
    """
    if acceptance.rule == "exact":
        return None
    n = len(draft)
    if n == 0:
        return []
    scores = probs if scores is None else scores
    dev = probs.device
    rows = _index([par + 1 for par in draft.parents], dev)  # (n,)
    x = _index(list(draft.tokens), dev).unsqueeze(1)  # (n, 1)
    P = probs.index_select(0, rows).float()  # (n, V) each node's parent row
    p_x = P.gather(1, x).squeeze(1)  # (n,)
    if acceptance.rule == "typical":  # Medusa-2: p(x) > min(eps, delta * exp(-H(p)))
        H = -(P * P.clamp_min(1e-30).log()).sum(-1)  # (n,) entropy in nats
        floor = torch.clamp(acceptance.delta * torch.exp(-H), max=acceptance.eps)
        ok = p_x > floor
    else:
        S = scores.index_select(0, rows).float()  # (n, V)
        s_x = S.gather(1, x)  # (n, 1)
        if acceptance.rule == "top_k":  # rank of x: tokens scored above it, then tied ones with lower ids
            ids = torch.arange(S.shape[-1], device=dev)
            rank = (S > s_x).sum(-1) + ((S == s_x) & (ids < x)).sum(-1)  # (n,)
            ok = rank < acceptance.k
        else:  # ratio: p(x) >= ratio * max p; at ratio 1 only the argmax (ties broken as argmax breaks them)
            ok = p_x >= acceptance.ratio * P.max(-1).values
            if acceptance.ratio >= 1.0:
                ok &= S.argmax(-1) == x.squeeze(1)
    return ok.tolist()


def _host_read_is_free(t: torch.Tensor) -> bool:
    """On the CPU a value read back costs nothing; on an accelerator it waits for the queued work."""
    return t.is_cpu


def _index(values: list[int], device: torch.device) -> torch.Tensor:
    """A long tensor on `device`, copied without waiting for the device's queue."""
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)


def _p_at_parents(probs: torch.Tensor, draft: Draft) -> torch.Tensor:
    """(n,) p(x_i) from the row of node i's parent: probs[parents + 1, tokens]."""
    V = probs.shape[-1]
    flat = [(par + 1) * V + x for par, x in zip(draft.parents, draft.tokens)]
    return probs.take(_index(flat, probs.device))  # (n,)


def _node_draws(probs: torch.Tensor, draft: Draft,
                generator: torch.Generator | None) -> tuple[list[float], list[float], list[float]]:
    """p(x_i) at its parent, q_i(x_i) (1 for a one-hot q) and a uniform r_i for every node, in one sync."""
    n = len(draft)
    if n == 0:
        return [], [], []  # nothing to judge: draw no uniforms, so plain sampling keeps its random stream
    rows = [_p_at_parents(probs, draft)]  # (n,)
    if draft.q_dist is not None:
        q_dist = draft.q_dist
        flat = [i * q_dist.shape[-1] + x for i, x in enumerate(draft.tokens)]
        rows.append(q_dist.take(_index(flat, q_dist.device)).to(probs.device))  # (n,)
    rows.append(torch.rand(n, generator=generator, device=probs.device))  # (n,)
    dtype = functools.reduce(torch.promote_types, [v.dtype for v in rows])  # float32 holds bf16/fp16 exactly
    out = torch.stack([v.to(dtype) for v in rows]).tolist()  # (2 or 3, n) -> lists: the numbers float(t) gives
    p_x, r = out[0], out[-1]
    q_x = out[1] if draft.q_dist is not None else [1.0] * n
    return p_x, q_x, r


def _sample_with_p(p: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None) -> tuple[int, float]:
    """Draw a token from p (V,); return it and its probability under `target` (V,), in one sync."""
    tok = torch.multinomial(p, 1, generator=generator)  # (1,)
    dtype = torch.promote_types(target.dtype, torch.float32)  # token ids < 2^24 are exact in float32
    tok_and_p = torch.cat([tok.to(dtype), target.gather(0, tok).to(dtype)]).tolist()
    return int(tok_and_p[0]), tok_and_p[1]
