"""Early exit (CALM, Schuster et al. 2022, "Confident Adaptive Language Modeling"): a lossy method.

Each new token runs up the target's decoder layers one at a time; at every `every`-th layer from `min_layer`
on, the model's own final norm and LM head read the intermediate hidden state (CALM's softmax confidence
measure) and the token exits there when that softmax's top probability is above `threshold`. The layers it
skipped still need its keys and values for later tokens: as CALM's hidden-state propagation, each skipped
layer computes them from the exit layer's hidden state (the layer's own input norm and attention module on
that state; the attention output is not used).

A token may also "exit" at the last layer (when it is a checked one): its prediction is then the full stack's,
over CALM's cache. A token that reaches the last layer without exiting ends the draft: the exited tokens
before it are the draft of one engine step, and the engine's one verification forward over them runs every
layer in parallel (as FREE's synchronized parallel decoding, Bae et al. 2023, "Fast and Robust Early-Exiting
with Synchronized Parallel Decoding"), which gives the target's cache their full keys and values and the
next token from the full stack. The verifier keeps every exited token (`verify_rule`: any token the target
gives a non-zero probability); the method's own cache keeps the propagated states, as CALM does, so later
exits see what CALM would. Its prompt prefill (every layer) happens at the first step, on the clock.

What it approximates: the target's own decoding, with shallow layers' predictions where they are confident.
threshold 1 never exits (plain decoding, token for token: each token is then computed twice); threshold 0
exits at `min_layer`. Calibrated variant (`agreement` > 0, "Learn then Test" in CALM, here a plain empirical
choice): before the run, the target greedily continues the calibration prompts of workbench.methods.
layer_skip; at each position every check layer's confidence and whether its argmax equals the full model's
are recorded (teacher-forced, with exact states), and the threshold chosen is the lowest at which the exits
it would make agree with the full model on at least `agreement` of the positions. The run's notes give it.

Checking a layer costs an LM-head product (on SmolLM2-135M about eight decoder layers' worth), so `every`
keeps the checks few. Under sampling an exited token is sampled from the intermediate distribution (warped
as the run samples), which is its q. Decoder-only models with `model.layers` (as layer_skip) only.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from .. import kv_cache as kv
from ..config import AcceptanceConfig
from ..draft import Draft
from ..sampling import logits_to_probs
from .base import DraftContext, Drafter, Param, register
from .layer_skip import _decoder, calibration_sequences


@register
class EarlyExit(Drafter):
    name = "early_exit"
    label = "Early exit (CALM)"
    family = "Without a draft model"
    pays_when = ("the model is often confident after few layers and its LM head is cheap next to the layers it "
                 "skips (a deep model with a small vocabulary)")
    description = ("Each token leaves the layer stack at the first checked layer whose own LM-head prediction "
                   "is confident enough; skipped layers' keys/values come from the exit state. LOSSY.")
    lossless = False
    params = (
        Param("threshold", "float", 0.9, "exit when the intermediate softmax's top probability is above this "
              "(1: never, plain decoding)", 0.0, 1.0),
        Param("min_layer", "int", 12, "the first layer (counted from 1) whose output may exit", 1, 1000),
        Param("every", "int", 6, "check every this many layers from min_layer (each check is an LM-head product)",
              1, 1000),
        Param("max_draft", "int", 16, "at most this many exited tokens per target forward", 1, 256),
        Param("agreement", "float", 0.9, "calibrated variant: choose the lowest threshold whose exits agree with "
              "the full model on this share of calibration positions (0: use threshold)", 0.0, 1.0),
    )

    @classmethod
    def verify_rule(cls, params: dict[str, Any]) -> AcceptanceConfig:
        """Keep every exited token the target gives a non-zero probability (the forward only completes it)."""
        return AcceptanceConfig("typical", eps=0.0, delta=0.0)

    def begin(self, prompt_ids: list[int]) -> None:
        self.lm = self.env.target
        self.model = self.lm.model
        self.inner = _decoder(self.model)
        n = len(self.inner.layers)
        first = min(self.params["min_layer"], n)
        self.checks = list(range(first, n + 1, self.params["every"]))  # layer counts after which to check
        self.cache = DynamicCache(config=self.model.config)
        self.tokens: list[int] = []  # tokens whose keys/values (all layers) are in self.cache
        self.threshold = self.params["threshold"]
        self.calibrated: dict[str, Any] | None = None
        if self.params["agreement"] > 0:
            self.threshold, self.calibrated = calibrate_threshold(self.lm, self.checks, self.params["agreement"])
        self.exits: list[int] = []  # the layer count each drafted token left at

    def run_notes(self) -> list[dict[str, Any]]:
        n = len(self.inner.layers)
        mean = sum(self.exits) / len(self.exits) if self.exits else float(n)
        note = {"kind": "early_exit", "threshold": self.threshold, "exited_tokens": len(self.exits),
                "mean_exit_layer": round(mean, 2), "layers": n,
                "text": f"early exit: {len(self.exits)} tokens left the {n}-layer stack early (mean exit layer "
                        f"{mean:.1f}) at threshold {self.threshold:.3g}"}
        if self.calibrated:
            note.update(self.calibrated)
            note["text"] += (f", calibrated for agreement {self.params['agreement']:g} on "
                             f"{self.calibrated['calibration_positions']} positions")
        return [note]

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        self._catch_up(ctx.tokens[:-1])
        tokens: list[int] = []
        q: list[float] = []
        dists: list[torch.Tensor] = []
        last = ctx.tokens[-1]
        while len(tokens) < min(self.params["max_draft"], ctx.max_tokens + 1):
            probs, exit_at = self._step(last)  # (V,) the distribution at the exit layer, or None: no exit
            if probs is None:
                break
            tok = int(probs.argmax()) if self.env.sampling.greedy else int(
                torch.multinomial(probs, 1, generator=self.env.generator))
            tokens.append(tok)
            q.append(float(probs[tok]))
            if not self.env.sampling.greedy:
                dists.append(probs)
            self.exits.append(exit_at)
            last = tok
        if not tokens:
            return None
        return Draft.chain(tokens, q, torch.stack(dists) if dists else None)

    def _catch_up(self, prefix: list[int]) -> None:
        """Make the cache hold exactly `prefix`: drop what differs, run the missing tokens through every layer."""
        n = 0
        while n < min(len(self.tokens), len(prefix)) and self.tokens[n] == prefix[n]:
            n += 1
        if n < len(self.tokens):
            kv.crop(self.cache, n)
            self.tokens = self.tokens[:n]
        if n < len(prefix):
            ids = torch.tensor([prefix[n:]], device=self.lm.device)  # (1, T_missing)
            kv.forward(self.model, ids, self.cache, logits_to_keep=1)
            self.tokens = list(prefix)

    def _step(self, token: int) -> tuple[torch.Tensor | None, int]:
        """Feed `token` up the stack -> (the next token's distribution at the exit layer, that layer's count);
        (None, n) when no checked layer was confident (the token has then run every layer)."""
        pos = torch.tensor([[len(self.tokens)]], device=self.lm.device)  # (1, 1)
        h = self.inner.embed_tokens(torch.tensor([[token]], device=self.lm.device))  # (1, 1, H)
        pe = self.inner.rotary_emb(h, position_ids=pos)
        layers = self.inner.layers
        self.tokens.append(token)
        for i, layer in enumerate(layers):
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe, use_cache=True,
                      **{kv.cache_arg_name(layer): self.cache})  # (1, 1, H)
            if i + 1 in self.checks:
                logits = kv.logits_from_hidden(self.model, self.inner.norm(h))[0, -1]  # (V,)
                probs = logits.float().softmax(-1) if self.env.sampling.greedy else logits_to_probs(
                    logits, self.env.sampling)
                if float(probs.max()) > self.threshold:
                    self._propagate(h, i + 1, pos, pe)
                    return probs, i + 1
        return None, len(layers)

    def _propagate(self, h: torch.Tensor, first: int, pos: torch.Tensor, pe) -> None:
        """CALM's state propagation: layers [first, n) get keys/values computed from the exit state h (1, 1, H)."""
        for layer in self.inner.layers[first:]:
            attn = layer.self_attn
            attn(hidden_states=layer.input_layernorm(h), attention_mask=None, position_ids=pos,
                 position_embeddings=pe, use_cache=True, **{kv.cache_arg_name(attn): self.cache})


@torch.inference_mode()
def calibrate_threshold(lm: Any, checks: list[int], agreement: float) -> tuple[float, dict[str, Any]]:
    """The lowest threshold whose exits agree with the full model on >= `agreement` of the calibration
    positions (module docstring) -> (threshold, what the choice rests on); 1.0 (never exit) when none does."""
    model = lm.model
    rows: list[tuple[list[float], list[bool]]] = []  # per position: each check layer's confidence and agreement
    for x, p in calibration_sequences(lm):  # each prompt and the full model's own greedy continuation
        full = model(input_ids=x, use_cache=False, output_hidden_states=True)
        ref = full.logits[0, p - 1:-1].argmax(-1)  # (T,)
        confs, hits = [], []
        for c in checks:
            norm = _decoder(model).norm
            probs = kv.logits_from_hidden(model, norm(full.hidden_states[c][0, p - 1:-1])).float().softmax(-1)
            top, arg = probs.max(-1)  # (T,), (T,)
            confs.append(top.tolist())
            hits.append((arg == ref).tolist())
        rows += [([cf[t] for cf in confs], [ht[t] for ht in hits]) for t in range(len(ref))]

    def agree(th: float) -> float:
        ok = 0
        for cf, ht in rows:
            j = next((k for k, v in enumerate(cf) if v > th), None)
            ok += True if j is None else ht[j]
        return ok / max(1, len(rows))

    candidates = sorted({v for cf, _ in rows for v in cf} | {0.0})
    chosen = next((th for th in candidates if agree(th) >= agreement), 1.0)
    return chosen, {"calibration_positions": len(rows), "calibration_agreement": round(agree(chosen), 4)}
