"""Published drafter-head layouts: detect one, and map its keys and config to the workbench's heads and back.

The layouts (learned from the reference loaders: SafeAILab/EAGLE, FasterDecoding/Medusa, SpecForge,
vllm-project/speculators, vLLM; notes in the project's format reference):

- "eagle"  EAGLE-1/2 (Li et al. 2024): config.json (a one-layer Llama config) + pytorch_model.bin or
           model.safetensors; fc [H, 2H] over [e(x_{t+1}); f_t] (+ bias unless `"bias": false`), `layers.0.*`
           without an input norm, no final norm; the target's embedding and LM head.
- "eagle3" EAGLE-3 (Li et al. 2025), the SafeAILab release and SpecForge output: fc [H, 3H], `midlayer.*` with
           `input_layernorm` (on the embedding) and `hidden_norm` (on the fused feature), `norm`, `lm_head`
           over `draft_vocab_size` rows, `d2t` (target id = draft id + d2t) and `t2d`.
- "speculators" (what vLLM serves directly): EAGLE-3 weights with `midlayer.` named `layers.0.`, and a config
           with `speculators_model_type`, `transformer_layer_config`, the aux layer ids and `norm_before_residual`.
- "medusa" Medusa-1 (Cai et al. 2024): medusa_lm_head.pt/.safetensors, head h = `{h}.{l}.linear` residual blocks
           then `{h}.{L}.weight`, the head's own LM head.

Both directions read the same tables (`published_key`), so what is imported is what is exported.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FORMATS = ("eagle", "eagle3", "speculators", "medusa")
# our DecoderLayer's flat names -> the Llama decoder layer's nested ones
LAYER = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
         "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
         "down_proj": "mlp.down_proj", "post_attention_layernorm": "post_attention_layernorm",
         "input_layernorm": "input_layernorm"}
# what a format's head is in the workbench
KIND_OF = {"eagle": "eagle", "eagle3": "eagle3", "speculators": "eagle3", "medusa": "medusa"}
# keys a published checkpoint may carry that the head does not need (the target's own embedding)
OPTIONAL = ("embed_tokens.weight",)
MEDUSA_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def detect(src: Path) -> str:
    """The format of the checkpoint in directory `src`, or a ValueError saying what was found."""
    cfg = read_config(src)
    if "speculators_model_type" in cfg:
        if cfg["speculators_model_type"] != "eagle3":
            raise ValueError(f"speculators model type {cfg['speculators_model_type']!r} is not supported "
                             "(supported: eagle3)")
        return "speculators"
    if any((src / f).exists() for f in MEDUSA_FILES):
        return "medusa"
    arch = " ".join(map(str, cfg.get("architectures") or []))
    if "medusa_num_heads" in cfg or "Medusa" in arch:
        raise ValueError("a Medusa-2 model or vLLM's own Medusa layout, not Medusa-1 heads (medusa_lm_head.pt); "
                         "not supported")
    if not any((src / f).exists() for f in WEIGHT_FILES):
        raise ValueError(f"no head weights found (looked for {', '.join(WEIGHT_FILES + MEDUSA_FILES)})")
    if "Eagle3" in arch or "draft_vocab_size" in cfg:
        return "eagle3"
    return "eagle"


def read_config(src: Path) -> dict[str, Any]:
    p = src / "config.json"
    if not p.exists():
        return {}
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {p}: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p} is not a JSON object")
    return cfg


def published_key(ours: str, fmt: str, layers: int = 1) -> str:
    """The published name of our state-dict key `ours` in format `fmt` (`layers`: Medusa's blocks per head)."""
    if fmt == "medusa":
        parts = ours.split(".")
        if parts[0] == "lm_heads":  # lm_heads.{h}.weight -> {h}.{L}.weight
            return f"{parts[1]}.{layers}.{parts[2]}"
        if layers == 1:  # blocks.{h}.linear.* -> {h}.0.linear.*
            return ".".join([parts[1], "0"] + parts[2:])
        return ".".join(parts[1:])  # blocks.{h}.{l}.linear.* -> {h}.{l}.linear.*
    prefix = "midlayer." if fmt == "eagle3" else "layers.0."
    if ours.startswith("layer."):
        name, rest = ours[len("layer."):].split(".", 1)
        return prefix + LAYER[name] + "." + rest
    if ours.startswith("embed_norm."):
        return prefix + "input_layernorm." + ours.split(".", 1)[1]
    if ours.startswith("hidden_norm."):
        return prefix + ours
    if ours == "embed.weight":
        return "embed_tokens.weight"
    return ours  # fc.*, norm.weight, lm_head.weight, d2t, t2d


def layer_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our decoder layer's shape from a published (Llama-style) config."""
    H = int(cfg["hidden_size"])
    nh = int(cfg["num_attention_heads"])
    return {"hidden_size": H, "heads_q": nh, "heads_kv": int(cfg.get("num_key_value_heads") or nh),
            "head_dim": int(cfg.get("head_dim") or H // nh),
            "intermediate_size": int(cfg["intermediate_size"]), "eps": float(cfg.get("rms_norm_eps", 1e-6)),
            # Qwen2-style layers have q/k/v biases without saying so
            "attention_bias": bool(cfg.get("attention_bias", False)) or cfg.get("model_type") == "qwen2"}


def rope_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The rotary settings a published config states (kept on the card, written back on export). Settings per
    layer type (Gemma 3: sliding and full attention): the full-attention layers', as a head's layer is global."""
    params = cfg.get("rope_parameters") or {}
    if isinstance(params.get("full_attention"), dict):
        cfg = {**cfg, "rope_parameters": params["full_attention"]}
    out = {"rope_theta": float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
                               or 10000.0)}
    scaling = cfg.get("rope_scaling") or {k: v for k, v in (cfg.get("rope_parameters") or {}).items()
                                          if k != "rope_theta"}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        out["rope_scaling"] = scaling
    if cfg.get("max_position_embeddings"):
        out["max_position_embeddings"] = int(cfg["max_position_embeddings"])
    return out


def rope_tables(layer: dict[str, Any], rope: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """(inv_freq (head_dim/2,), attention scaling) of a head's rotary embedding, as transformers computes them
    for a Llama layer of this shape (so Llama 3's frequency scaling is the library's own)."""
    from transformers import LlamaConfig  # here: transformers is slow to import; `workbench heads` lists without it
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaling = dict(rope.get("rope_scaling") or {})
    max_pos = int(rope.get("max_position_embeddings") or 0)
    if "original_max_position_embeddings" in scaling:
        max_pos = max(max_pos, int(scaling["original_max_position_embeddings"]) + 1)
    cfg = LlamaConfig(hidden_size=layer["hidden_size"], num_attention_heads=layer["heads_q"],
                      head_dim=layer["head_dim"], rope_theta=rope["rope_theta"], rope_scaling=scaling or None,
                      max_position_embeddings=max_pos or 4096)
    rot = LlamaRotaryEmbedding(cfg)
    return rot.inv_freq.float().clone(), float(rot.attention_scaling)


def eagle3_config(cfg: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Our EAGLE-3 head config (less the target-dependent fields) from a published config."""
    if fmt == "speculators":
        layer = cfg.get("transformer_layer_config") or {}
        if not layer:
            raise ValueError("the speculators config has no transformer_layer_config")
        out = {**layer_config(layer), "rope": rope_of(layer), "vocab_size": int(layer.get("vocab_size") or 0),
               "draft_vocab": int(cfg.get("draft_vocab_size") or layer.get("draft_vocab_size") or 0),
               "norm_before_residual": bool(cfg.get("norm_before_residual", True)),
               "aux_layers": cfg.get("eagle_aux_hidden_state_layer_ids")}
        if cfg.get("target_hidden_size"):
            out["target_hidden_size"] = int(cfg["target_hidden_size"])
        return out
    eagle = cfg.get("eagle_config") or {}
    out = {**layer_config(cfg), "rope": rope_of(cfg), "vocab_size": int(cfg.get("vocab_size") or 0),
           "draft_vocab": int(cfg.get("draft_vocab_size") or cfg.get("vocab_size") or 0),
           "norm_before_residual": False,
           "aux_layers": eagle.get("eagle_aux_hidden_state_layer_ids") or cfg.get("eagle_aux_hidden_state_layer_ids")}
    if cfg.get("target_hidden_size"):
        out["target_hidden_size"] = int(cfg["target_hidden_size"])
    return out


def llama_layer_config(c: dict[str, Any], vocab_size: int, **extra: Any) -> dict[str, Any]:
    """A one-layer Llama config (the published heads' own) for our head config `c`."""
    rope = c.get("rope") or {"rope_theta": 10000.0}
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c["hidden_size"],
           "intermediate_size": c["intermediate_size"], "num_attention_heads": c["heads_q"],
           "num_key_value_heads": c["heads_kv"], "head_dim": c["head_dim"], "num_hidden_layers": 1,
           "rms_norm_eps": c["eps"], "hidden_act": "silu", "vocab_size": vocab_size,
           "max_position_embeddings": int(rope.get("max_position_embeddings") or 4096),
           "rope_theta": rope["rope_theta"], "rope_scaling": rope.get("rope_scaling"),
           "attention_bias": bool(c.get("attention_bias")), "tie_word_embeddings": False,
           "torch_dtype": "float16"}
    out.update(extra)
    return out
