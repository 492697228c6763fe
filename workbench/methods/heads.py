"""Methods that draft with a trained head on the target's own hidden states: eagle, eagle3, medusa, hydra.

Each declares `needs_hidden_states`, so the engine hands it the target's final
hidden states of every committed position from the verification forward it
already ran (workbench.engine), with a low and a middle layer's outputs for a
head with fused features; the head reuses the target's embedding and LM head
(workbench.heads). Verification is the engine's, as for every method:

- medusa: a static tree (Medusa's "choices": paths over child ranks) whose
  node at depth d is a top-rank token of head d. Deterministic proposals, so
  verification under sampling treats each node as one-hot: exact.
- hydra: the same static tree, but each node's children come from the next
  head run on that node's own state and token (sequentially dependent heads).
- eagle3: the same drafting loop over an EAGLE-3 head (three fused target
  layers in, its own LM head over a draft vocabulary mapped to target ids).
- eagle: the EAGLE head drafts autoregressively on its predicted features, as
  a chain (under sampling each token is drawn from the head's distribution and
  verified against it: standard speculative sampling) or as EAGLE-2's dynamic
  tree (top-k expansion by cumulative probability, shared with tree_dynamic).

Heads run eagerly on either backend (they are a few small matmuls). A head is
found by name or directory (`head`), by default `<target>-<kind>` (see
workbench.heads); the draft's q is the head's own (trimmed) distribution.
"""
from __future__ import annotations

import torch

from ..heads import load_head
from ..heads.lm_head import DraftVocabLM, HeadLM
from ..sampling import logits_to_probs
from ..draft import Draft
from ..kernels import plan_for
from ..kernels.linear import install
from .base import DraftContext, Drafter, Param, StepFeedback, register
from .top_k_trees import NAMED_TREES, SIZING_PARAM, grow_dynamic, grow_from_paths, parse_paths, tree_budget

HEAD_PARAM_HELP = "head name (see `workbench heads`) or directory; empty: the default head for the target"
TRIM_PARAM = Param("trim", "bool", True, "propose only from the head's trimmed vocabulary, when it has one "
                   "(off: the whole vocabulary, at a higher LM-head cost)")
CHAIN4 = NAMED_TREES["chain4"]


class HeadDrafter(Drafter):
    """Shared set-up: load the head (checked against the target), keep the target's latest hidden state."""

    needs_hidden_states = True
    tree = True
    kind = ""

    def begin(self, prompt_ids: list[int]) -> None:
        target = self.env.target
        self.head, self.card = load_head(self.params["head"], target, self.kind)  # a fresh copy for this run
        if not self.params.get("trim", True):
            self.head.set_vocab(None)
        plan = plan_for(target)  # the target's CPU linear kernels serve the head's own layers too
        if plan.rows:
            install(self.head, plan)
        self.lm = HeadLM(target.model, self.head.vocab if self.head.trimmed else None, plan=plan)
        self.embed = target.model.get_input_embeddings()
        self.last: torch.Tensor | None = None  # (H,) the head's feature of the position before the root
        self.wants_feature_layers = self.head.layers_wanted  # the engine hands over those layers' states too

    @torch.inference_mode()
    def observe(self, fb: StepFeedback) -> None:
        if fb.hidden is not None:
            self.last = self.head.committed(fb.hidden[-1])


def _paths_param(default: str) -> tuple[Param, Param]:
    return (Param("tree", "choice", default, "named tree shape (paths over each head's top-k ranks)",
                  choices=tuple(NAMED_TREES)),
            Param("paths", "str", "", "custom tree as JSON paths over child ranks (overrides `tree`)",
                  check=lambda text: parse_paths(text) if text else None))


class _StaticHeadTree(HeadDrafter):
    """Medusa and Hydra: a static tree of rank paths, grown over the method's own session."""

    params = (Param("head", "str", "", HEAD_PARAM_HELP), TRIM_PARAM) + _paths_param("medusa16") + (SIZING_PARAM,)

    def session(self, ctx: DraftContext) -> "HeadTreeSession":
        raise NotImplementedError

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0 or self.last is None:
            return None
        return grow_from_paths(self.session(ctx), self.paths, ctx.max_tokens, self.lm.topk, self.budget)

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        paths = parse_paths(self.params["paths"]) if self.params["paths"] else NAMED_TREES[self.params["tree"]]
        K = len(self.head.blocks) if hasattr(self.head, "blocks") else len(self.head.inp)
        self.paths = [p for p in paths if len(p) <= K]  # a head predicts at most K tokens ahead
        self.budget = tree_budget(self, len(self.paths))

    @torch.inference_mode()
    def observe(self, fb: StepFeedback) -> None:
        super().observe(fb)
        if self.budget is not None:
            self.budget.observe(fb.draft, fb.accepted)


class HeadTreeSession:
    """What the tree growers (workbench.methods.top_k_trees) need from a session: `root_logits`, `add(token, parent)`
    -> a node id, `feed(nodes)` -> the logits of each node's children, `close()`. Nodes are kept here in the
    order they are added (parents first); subclasses compute `feed`."""

    root_logits: torch.Tensor

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
        return len(self.tokens) - 1

    def close(self) -> None:
        pass


class MedusaSession(HeadTreeSession):
    """Medusa heads: a node's children are head d's top-k, whatever the node's token (Cartesian candidates)."""

    def __init__(self, drafter: "Medusa") -> None:
        super().__init__()
        feats = drafter.head(drafter.last)  # (K, H)
        own = drafter.head.own_logits(feats)  # (K, V) an imported Medusa-1 head's own LM heads
        self.rows = own if own is not None else drafter.lm.logits(feats)  # (K, k): the distribution at depth k + 1
        self.root_logits = self.rows[0]

    def feed(self, nodes: list[int]) -> torch.Tensor:
        return self.rows[[self.depth[n] for n in nodes]]


@register
class Medusa(_StaticHeadTree):
    name = "medusa"
    kind = "medusa"
    label = "Medusa heads (static tree)"
    family = "Trained heads"
    pays_when = ("a head trained for this target exists and a wide verification is cheap (a GPU); its guesses "
                 "weaken past the first position")
    description = ("K trained heads on the target's last hidden state predict the next K tokens at once; their "
                   "top-k form a static tree verified in one target pass. Lossless.")

    def session(self, ctx: DraftContext) -> MedusaSession:
        return MedusaSession(self)


class HydraSession(HeadTreeSession):
    """Hydra heads: feeding a node at depth d runs head d on its parent's state and its token, so each
    branch continues from its own tokens."""

    def __init__(self, drafter: "Hydra", root_token: int) -> None:
        super().__init__()
        self.d = drafter
        emb = drafter.embed(torch.tensor([root_token], device=drafter.last.device))[0]  # (H,)
        self.root_state = drafter.head.step(0, drafter.last, emb)  # z_0: drafts the root's children
        self.root_logits = drafter.lm.logits(self.root_state)
        self.states: dict[int, torch.Tensor] = {}

    def feed(self, nodes: list[int]) -> torch.Tensor:
        out = []
        for depth in sorted({self.depth[n] for n in nodes}):  # one batched head call per depth
            group = [n for n in nodes if self.depth[n] == depth]
            z = torch.stack([self.root_state if self.parents[n] < 0 else self.states[self.parents[n]]
                             for n in group])  # (g, H)
            emb = self.d.embed(torch.tensor([self.tokens[n] for n in group], device=z.device))  # (g, H)
            new = self.d.head.step(depth, z, emb)  # (g, H)
            for n, s in zip(group, new):
                self.states[n] = s
        for n in nodes:
            out.append(self.states[n])
        return self.d.lm.logits(torch.stack(out))  # (len(nodes), k)


@register
class Hydra(_StaticHeadTree):
    name = "hydra"
    kind = "hydra"
    label = "Hydra heads (sequentially dependent, static tree)"
    family = "Trained heads"
    pays_when = ("a head trained for this target exists; each head reads the tokens drafted before it, so "
                 "deeper guesses hold up better than Medusa's")
    description = ("Like Medusa, but each head also reads the tokens drafted before it, so every branch of the "
                   "tree gets its own continuation. Lossless.")

    def session(self, ctx: DraftContext) -> HydraSession:
        return HydraSession(self, ctx.tokens[-1])


class EagleState:
    """The EAGLE head's KV cache over the committed positions, and its prediction at the root.

    Pair t = (f_t, e(x_{t+1})) sits in cache slot t at position t + 1 (the position of x_{t+1}); the pair of
    the root (the last committed token) is the last committed one, and its output feature drafts the root's
    children. Tree nodes go in the slots after the committed ones and are overwritten at the next step.
    """

    def __init__(self, head, embed, max_len: int) -> None:
        c = head.config
        dev, dtype = head.fc.weight.device, head.fc.weight.dtype
        self.head, self.embed = head, embed
        self.k = torch.zeros(1, c["heads_kv"], max_len, c["head_dim"], device=dev, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # committed pairs in the cache
        self.root_feature: torch.Tensor | None = None  # (H,) predicted feature at the root's position

    def run(self, feats: torch.Tensor, tokens: list[int], positions: list[int], start: int,
            block: torch.Tensor) -> torch.Tensor:
        """Feed pairs (feats (T, H), tokens) into slots start.. with `block` (T, start + T) bool visibility
        over slots [0, start + T); returns the predicted features (T, H)."""
        T = len(tokens)
        dev = feats.device
        embs = self.embed(torch.tensor([tokens], device=dev))  # (1, T, H)
        pos = torch.tensor([positions], device=dev)
        past = (self.k[:, :, :start], self.v[:, :, :start])
        out, (k, v) = self.head(feats[None], embs, pos, mask=block[None], past=past)
        self.k[:, :, start:start + T] = k
        self.v[:, :, start:start + T] = v
        return out[0]

    def commit(self, hidden: torch.Tensor, tokens: list[int]) -> None:
        """Pairs for the k positions whose target states just arrived (hidden (k, H)); tokens: the context."""
        k = hidden.shape[0]
        start = len(tokens) - 1 - k  # the first new position t; the cache holds pairs [0, start)
        self.length = start
        dev = hidden.device
        block = torch.ones(k, start + k, dtype=torch.bool, device=dev)
        block[:, start:] = torch.ones(k, k, dtype=torch.bool, device=dev).tril_()
        out = self.run(hidden.to(self.k.dtype), tokens[start + 1:start + 1 + k],
                       list(range(start + 1, start + 1 + k)), start, block)
        self.length = start + k
        self.root_feature = out[-1]


class EagleSession(HeadTreeSession):
    """The EAGLE head over its own cache: feeding nodes runs the head on (parent's predicted feature, token)
    with tree attention over the committed pairs and the nodes' ancestors."""

    def __init__(self, drafter: "Eagle") -> None:
        super().__init__()
        self.d = drafter
        st = drafter.state
        self.base = st.length  # tree slots start here
        self.root_pos = st.length  # position of the root token (pair slot length - 1 sits at position length)
        self.root_logits = drafter.lm.logits(st.root_feature)
        self.feature: dict[int, torch.Tensor] = {}

    def feed(self, nodes: list[int]) -> torch.Tensor:
        new = [n for n in nodes if n not in self.feature]
        if new:
            st = self.d.state
            first = min(new)
            upto = max(new) + 1  # nodes are fed in index order: every node below `first` is in the cache
            rows = list(range(first, upto))
            block = torch.zeros(len(rows), self.base + upto, dtype=torch.bool, device=st.k.device)
            block[:, :self.base] = True
            for r, i in enumerate(rows):
                j = i
                while j >= 0:  # the node and its ancestors
                    block[r, self.base + j] = True
                    j = self.parents[j]
            feats = torch.stack([st.root_feature if self.parents[i] < 0 else self.feature[self.parents[i]]
                                 for i in rows])  # (T, H) each node's parent's predicted feature
            out = st.run(feats, [self.tokens[i] for i in rows], [self.root_pos + self.depth[i] for i in rows],
                         self.base + first, block[:, : self.base + upto])
            for r, i in enumerate(rows):
                self.feature[i] = out[r]
        return self.d.lm.logits(torch.stack([self.feature[n] for n in nodes]))  # (len(nodes), k)


@register
class Eagle(HeadDrafter):
    name = "eagle"
    kind = "eagle"
    label = "EAGLE head (chain or dynamic tree)"
    family = "Trained heads"
    pays_when = ("a head trained for this target exists (shipped for SmolLM2-135M): a draft costs a few small "
                 "matmuls on the target's own features")
    description = ("A one-layer head drafts on the target's own features (feature + token in, next feature out), "
                   "as a chain or an EAGLE-2 dynamic tree verified in one target pass. Lossless.")
    params = (
        Param("head", "str", "", HEAD_PARAM_HELP),
        TRIM_PARAM,
        Param("mode", "choice", "tree", "a chain (sampled from the head under sampling) or EAGLE-2's dynamic tree",
              choices=("tree", "chain")),
        Param("depth", "int", 5, "draft depth (chain length)", 1, 16),
        Param("top_k", "int", 4, "tree: children per expanded node, and nodes expanded per level", 1, 16),
        Param("total_tokens", "int", 16, "tree: nodes kept for verification (with sizing=cost: at most)", 1, 128),
        SIZING_PARAM,
    )

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.budget = tree_budget(self, self.params["total_tokens"]) if self.params["mode"] == "tree" else None
        # committed pairs, plus the tree nodes a step may feed (at most depth x top_k)
        room = self.params["depth"] * max(self.params["top_k"], 1) + 1
        self.state = EagleState(self.head, self.embed, max(self.env.max_len, len(prompt_ids) + 128) + room)

    @torch.inference_mode()
    def observe(self, fb: StepFeedback) -> None:
        if fb.hidden is not None:
            self.state.commit(self.head.committed(fb.hidden), fb.tokens)
        if self.budget is not None:
            self.budget.observe(fb.draft, fb.accepted)

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0 or self.state.root_feature is None:
            return None
        depth = min(self.params["depth"], ctx.max_tokens)
        if self.params["mode"] == "tree":
            return grow_dynamic(EagleSession(self), depth, self.params["top_k"], self.params["total_tokens"],
                                self.lm.topk, self.budget)
        return self._chain(depth)

    def _chain(self, depth: int) -> Draft:
        """Draft `depth` tokens one by one: argmax under greedy, drawn from the head's distribution otherwise."""
        session, sampling = EagleSession(self), self.env.sampling
        V = self.env.target.vocab_size
        tokens: list[int] = []
        q: list[float] = []
        dists: list[torch.Tensor] = []
        logits, parent = session.root_logits, -1
        for _ in range(depth):
            probs = logits.float().softmax(-1) if sampling.greedy else logits_to_probs(logits, sampling)  # (k,)
            i = int(probs.argmax()) if sampling.greedy else int(torch.multinomial(probs, 1, generator=self.env.generator))
            tok = self.lm.tokens(torch.tensor(i))
            tokens.append(tok)
            q.append(float(probs[i]))
            if not sampling.greedy:
                dists.append(self.lm.full(probs, V))
            parent = session.add(tok, parent)
            if len(tokens) < depth:
                logits = session.feed([parent])[0]
        return Draft.chain(tokens, q, torch.stack(dists) if dists else None)  # q_dist (depth, V) when sampling


@register
class Eagle3(Eagle):
    name = "eagle3"
    kind = "eagle3"
    label = "EAGLE-3 head (chain or dynamic tree)"
    pays_when = ("an EAGLE-3 head for this target exists (trained here, or imported from a published one): it reads "
                 "three of the target's layers and drafts over its own small vocabulary")
    description = ("EAGLE-3's one-layer head on three fused target layers drafts over its own draft vocabulary "
                   "(mapped to target ids), as a chain or an EAGLE-2 dynamic tree verified in one target pass. "
                   "Lossless.")
    params = tuple(p for p in Eagle.params if p.name != "trim")

    def begin(self, prompt_ids: list[int]) -> None:
        super().begin(prompt_ids)
        self.lm = DraftVocabLM(self.head)  # its own norm + LM head; rows map to target ids through d2t
        if self.head.embed is not None:  # a head published with its own token embedding
            self.embed = self.head.embed
            self.state.embed = self.head.embed
