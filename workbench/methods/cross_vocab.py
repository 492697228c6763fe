"""Speculative decoding with a draft model of any tokenizer (universal assisted generation).

Like transformers' AssistedCandidateGeneratorDifferentTokenizers (Timor et al.
2025, "Accelerating LLM Inference with Lossless Speculative Decoding Algorithms
for Heterogeneous Vocabularies"), the two models meet in text. The text is
carried as UTF-8 bytes (workbench.methods.retokenize), so that a context with
an incomplete character translates exactly. Each step:

  1. target context -> draft tokens (DraftMirror): the text of the last
     32..64 committed tokens is re-encoded with the draft's tokenizer; the draft
     tokens before that window stay fixed, and the draft's KV cache keeps
     whatever did not change (DraftModelRunner feeds only the differing suffix);
  2. the draft writes γ tokens greedily in its own vocabulary, stopping at a
     special token (its EOS);
  3. draft tokens -> target proposal (target_proposal): the committed tail's text
     plus the draft's text is re-encoded with the target's tokenizer and the
     tokens past the committed ones are proposed as a chain; a last token that
     more text could still change is dropped, the draft's EOS becomes the target's.

Lossless. The proposal is a deterministic function of the committed tokens
(the draft decodes greedily; nothing random is drawn), so its q is one-hot:
the shared verification (workbench.verify) accepts a proposed x with
probability p(x) and otherwise samples from p without x, which leaves each
token distributed exactly as the target's p. Under greedy decoding the target
checks every token, so the output is token-identical to plain greedy. With a
shared vocabulary `speculative` is the better choice: no text round trip, and
under sampling it drafts from the draft's own q.
"""
from __future__ import annotations

import torch

from ..models.loaded_model import max_positions
from ..draft import Draft
from .base import DraftContext, Drafter, Param, register
from .draft_model import DraftModelRunner
from .retokenize import DraftMirror, target_proposal, translate, vocab_of


@register
class CrossVocab(Drafter):
    name = "cross_vocab"
    label = "Speculative, any draft tokenizer"
    family = "Draft model, chain"
    pays_when = ("the only good draft model has another tokenizer; with a shared vocabulary `speculative` pays"
                 " more")
    description = ("A draft model with its own tokenizer writes γ tokens; their text, re-tokenised for the "
                   "target, is verified in one forward pass. Lossless, under sampling too (the proposal is "
                   "deterministic, so its q is one-hot).")
    needs_draft_model = True
    any_draft_tokenizer = True  # workbench.api.run skips the shared-vocabulary check for this method
    params = (
        Param("gamma", "int", 5, "draft tokens per step, in the draft's own tokenizer (the target is proposed "
              "what their text re-encodes to, less a last token that may still change)", 1, 64),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        target, draft = self.env.target, self.env.draft
        self.t_vocab, self.d_vocab = vocab_of(target.tokenizer), vocab_of(draft.tokenizer)
        self.runner = DraftModelRunner(self.env)
        self.t_eos = target.eos_token_ids[0] if target.eos_token_ids else None
        self.d_eos = frozenset(draft.eos_token_ids)
        prefix = _bos_prefix(target.tokenizer, draft.tokenizer, translate(prompt_ids[:1], self.t_vocab, self.d_vocab))
        self.mirror = DraftMirror(self.t_vocab, self.d_vocab, prefix)
        limits = [max_positions(draft.model.config)]
        if self.env.backend != "eager":  # a static cache sized for the run in *target* tokens
            limits.append(self.env.max_len)
        self.d_limit = min((x for x in limits if x), default=None)  # draft positions it can attend to

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        if ctx.max_tokens <= 0:
            return None
        d_ctx = self.mirror.update(ctx.tokens)
        gamma = self.params["gamma"]
        if not d_ctx or (self.d_limit is not None and len(d_ctx) + gamma >= self.d_limit):
            return None  # no text yet, or past what the draft can attend to: the target goes on alone
        written = self._write(d_ctx, gamma)
        tokens = target_proposal(ctx.tokens, written, self.t_vocab, self.d_vocab, self.t_eos,
                                 self.d_eos)[: ctx.max_tokens]
        if not tokens:
            return None
        return Draft.chain(tokens, [1.0] * len(tokens))  # q_dist None: one-hot, the proposal is deterministic

    def _write(self, d_ctx: list[int], gamma: int) -> list[int]:
        """Up to gamma of the draft's greedy tokens after d_ctx, ending early on a special token."""
        written: list[int] = []
        logits = self.runner.logits_after(d_ctx)  # (V_draft,)
        while True:
            tok = int(logits.argmax())
            written.append(tok)
            if len(written) == gamma or not self.d_vocab.has_text(tok):
                return written
            logits = self.runner.logits_after(d_ctx + written)


def _bos_prefix(t_tok, d_tok, d_first: list[int]) -> list[int]:
    """The draft's BOS, to put in front of the translated context, when the draft's tokenizer adds one
    and the target's does not (a target's own BOS is translated like any special token); d_first is
    the translation of the context's first token. [] otherwise."""
    bos = _added_prefix(d_tok)
    if bos and not _added_prefix(t_tok) and d_first[: len(bos)] != bos:
        return bos
    return []


def _added_prefix(tok) -> list[int]:
    """What a tokenizer puts in front of a text by itself (its BOS, usually)."""
    with_special = list(tok("a", add_special_tokens=True)["input_ids"])
    plain = list(tok("a", add_special_tokens=False)["input_ids"])
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i:i + len(plain)] == plain:
            return with_special[:i]
    return []
