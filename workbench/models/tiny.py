"""The tiny random models: seeded two-layer transformers with a byte-level vocabulary, built in milliseconds.

``tiny-random[:arch=A][:seed=N]`` is for tests and quick experiments: its text
is noise, but its next-token distributions are peaked like a real model's, and
its bf16/int8 copies agree with it on most greedy tokens, so they make useful
drafts. The architecture (`TINY_ARCHS`, default llama) is one of the common
decoder families, each built from its own transformers config class with what
sets it apart kept: Qwen2 (q/k/v biases), Qwen3 (q/k norms), Mistral (a
sliding window of TINY_WINDOW positions on every layer, shorter than a test's
sequence, so the window matters), Gemma-3 (sliding and global layers, scaled
embeddings, its own norms and query scaling), Phi-3 (fused qkv and gate/up
projections) and Qwen3-MoE (top-2 of 4 experts on every layer). They share
the tokenizer, so any one drafts for any other. The tokenizer is built on its
own (`build_tiny_tokenizer`), without the model.
"""
from __future__ import annotations

from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn

TINY_VOCAB = 272
TINY_BOS, TINY_EOS, TINY_PAD = 256, 257, 258
# Weights ~ N(0, 0.2); the LM head ~ N(0, 0.5) so next-token distributions are peaked
# (top probability ~0.2-0.9) while bf16/int8 copies still agree on ~95% of greedy tokens.
TINY_INIT_STD, TINY_HEAD_STD = 0.2, 0.5
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


TINY_WINDOW = 16  # the sliding window of the tiny Mistral and Gemma-3 (positions, the token itself included)
# arch -> (transformers config class, causal-LM class, what the architecture sets beyond the shared shape)
TINY_ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"head_dim": 16, "sliding_window": TINY_WINDOW}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": TINY_WINDOW,
                "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": None}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                   "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}),
}
DEFAULT_TINY_ARCH = "llama"


def tiny_config(arch: str = DEFAULT_TINY_ARCH) -> Any:
    # here: transformers' model classes load only to build a model; `workbench models` lists without them
    import transformers

    config_cls, _, extra = TINY_ARCHS[arch]
    return getattr(transformers, config_cls)(
        vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
        tie_word_embeddings=False, initializer_range=TINY_INIT_STD,
        bos_token_id=TINY_BOS, eos_token_id=TINY_EOS, pad_token_id=TINY_PAD, **extra,
    )


def build_tiny_model(seed: int = 0, arch: str = DEFAULT_TINY_ARCH) -> nn.Module:
    """The tiny-random model of architecture `arch` for `seed`, built without touching the global RNG."""
    import transformers  # here: as in tiny_config
    from transformers import GenerationConfig

    config = tiny_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, TINY_ARCHS[arch][1])(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(TINY_HEAD_STD / TINY_INIT_STD)
    model.generation_config = GenerationConfig(bos_token_id=TINY_BOS, eos_token_id=TINY_EOS,
                                               pad_token_id=TINY_PAD)
    return model.eval()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel uses)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(161, 173)) | set(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_tokenizer() -> Any:
    """Byte-level tokenizer: ids 0-255 are bytes, 256 <s>, 257 </s>, 258 <pad>, 259-271 unused."""
    from transformers import PreTrainedTokenizerFast  # here: as in tiny_config

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    specials = ["<s>", "</s>", "<pad>"] + [f"<unused{i}>" for i in range(TINY_VOCAB - TINY_PAD - 1)]
    vocab.update({tok: 256 + i for i, tok in enumerate(specials)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", TINY_BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   chat_template=TINY_CHAT_TEMPLATE)
