"""`LoadedModel`: a causal LM ready to decode, its tokenizer, and the facts the decode loop needs.

A LoadedModel is shared by every caller that loads the same spec on the same
device (see loading.py), so treat it as read-only. `encode_prompt` turns plain
text or chat messages into token ids (through the chat template when there is
one); `check_compatible` guards a target/draft pair against vocabularies that
do not match.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import IncompatibleModelsError, ModelError
from .quant import quantized_params


@dataclass(eq=False)
class LoadedModel:
    """A model ready to decode: the causal LM (eval mode, on `device`) and its tokenizer."""

    spec: str
    name: str
    model: nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    quant: str | None
    eos_token_ids: tuple[int, ...]

    @property
    def vocab_size(self) -> int:
        """Size of the model's output distribution (rows of the LM head)."""
        return output_size(self.model)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence (prompt + new tokens) the model was built for, when its config says."""
        return max_positions(self.model.config)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str | list[dict], chat: bool | None = None) -> list[int]:
        """Token ids for a prompt: plain text, or chat messages through the chat template.

        chat=None applies the template when the tokenizer has one; a list of
        messages always goes through the template.
        """
        if isinstance(prompt, list):
            if chat is False:
                raise ModelError("a list of chat messages needs chat=True (or None)")
            return self._encode_chat(_check_messages(prompt))
        if not isinstance(prompt, str):
            raise ModelError(f"a prompt must be text or a list of chat messages, not {type(prompt).__name__}")
        if chat is None:
            chat = self.has_chat_template
        if chat:
            return self._encode_chat([{"role": "user", "content": prompt}])
        return list(self.tokenizer(prompt)["input_ids"])

    def _encode_chat(self, messages: list[dict]) -> list[int]:
        if not self.has_chat_template:
            raise ModelError(f"model '{self.spec}' has no chat template; give a plain text prompt with chat off")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def facts(self) -> dict:
        """The model's facts (how fast a reduced precision runs here: workbench.backend.speed.speed_vs_fp32)."""
        return {
            "spec": self.spec,
            "name": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "quant": self.quant,
            "params": count_params(self.model),
            "vocab_size": self.vocab_size,
        }


def max_positions(config: Any) -> int | None:
    """max_position_embeddings (or what older configs call it), also inside a multimodal text_config."""
    for cfg in (config, getattr(config, "text_config", None)):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def output_size(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    if isinstance(getattr(head, "out_features", None), int):  # an int8 head (quant.py) has no float weight
        return head.out_features
    return int(model.config.vocab_size)


def count_params(model: nn.Module) -> int:
    """Parameters plus int8-quantized weights (which are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters()) + quantized_params(model)


def _check_messages(messages: list) -> list[dict]:
    if not messages:
        raise ModelError("the chat prompt has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ModelError(f"chat message {i} must be a dict with 'role' and 'content'")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def eos_ids(tokenizer: Any, model: nn.Module) -> tuple[int, ...]:
    """End-of-sequence ids from the tokenizer and the generation config, deduplicated, in order."""
    found: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(gen, "eos_token_id", None)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in found:
                found.append(int(i))
    return tuple(found)


def check_compatible(target: LoadedModel, draft: LoadedModel) -> None:
    """Raise IncompatibleModelsError unless draft and target share one vocabulary."""
    t_tok, d_tok = target.tokenizer, draft.tokenizer
    same_vocab = t_tok is d_tok or t_tok.get_vocab() == d_tok.get_vocab()
    if same_vocab and target.vocab_size == draft.vocab_size:
        return
    raise IncompatibleModelsError(
        f"draft '{draft.spec}' cannot draft for target '{target.spec}': their vocabularies differ "
        f"(target: {type(t_tok).__name__}, {len(t_tok)} tokens, output size {target.vocab_size}; "
        f"draft: {type(d_tok).__name__}, {len(d_tok)} tokens, output size {draft.vocab_size})")
