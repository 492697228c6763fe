"""KV-cache helpers over transformers' DynamicCache: pass it, roll it back, keep accepted tree nodes.

`forward` hands the cache to a stock transformers model under the argument name
the installed version declares (`cache` in transformers 5.24 and later,
`past_key_values` in earlier 5.x releases), so no call site depends on the
version. `crop` and `keep_positions` operate on every layer's
(B, heads, T, head_dim) key/value tensors along T, so the accepted prefix is
never recomputed.

Sliding-window models (Mistral, Gemma 3, Qwen2 with its window on): the
backends build their caches from `cache_config`, which keeps every position on
every layer, so a rollback never needs a state a rolling window layer would
have dropped; the window is then the mask's job. A model builds its own
windowed causal mask; a tree or a static cache's mask comes from the backend,
and `layer_masks` adds the window to it (where a position is more than the
window behind the query's, it is hidden, positions being tree depths for draft
nodes), per layer type. A cache built from the model's own config still has
rolling layers: those are only cut while they hold every position, and past
the window a rollback is refused with a clear error (CacheRollbackError).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from transformers import DynamicCache

class CacheRollbackError(RuntimeError):
    """The cache cannot be rolled back to the requested length (a sliding window already dropped states)."""


def cache_arg_name(model: torch.nn.Module) -> str:
    """The name under which `model.forward` takes its KV cache in the installed transformers.

    Remembered on the model's class (`_workbench_cache_arg`: the class it was read for, and the name), not in
    a module-level table: a compiled graph that calls this guards on what it reads, and a table that grows
    when another class is asked about (early exit asks about decoder layers) would make every compiled graph
    of the target compile again in the middle of a run."""
    cls = type(model)
    memo = getattr(cls, "_workbench_cache_arg", None)
    if memo is None or memo[0] is not cls:  # unset, or inherited from a parent class
        params = inspect.signature(model.forward).parameters
        memo = (cls, "cache" if "cache" in params else "past_key_values")
        cls._workbench_cache_arg = memo
    return memo[1]


def forward(model: torch.nn.Module, input_ids: torch.Tensor, cache: DynamicCache, **kwargs: Any) -> Any:
    """`model(input_ids=..., <cache arg>=cache, use_cache=True, **kwargs)` for any transformers 5.x."""
    kwargs[cache_arg_name(model)] = cache
    return model(input_ids=input_ids, use_cache=True, **kwargs)


def forward_hidden(model: torch.nn.Module, input_ids: torch.Tensor, cache: Any, keep: int = 0,
                   layers: bool | tuple[int, ...] = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock forward split at the LM head: (logits (1, T or keep, V), final hidden states (1, T, H)).

    The decoder (`model.get_decoder()`, its final norm included) runs once with the cache; the LM head
    then runs on the kept rows, as the model's own forward does, with the final logit soft-capping of
    the models that have one. Drafter heads (EAGLE, Medusa, Hydra) read these hidden states: no extra
    forward, no patched modeling code. `layers`: the states are (1, T, H (1 + k)), the final ones
    followed by the outputs of the k decoder layers `feature_layers` picks (the model's own
    `output_hidden_states`), which a head with fused features adds to the final ones; a tuple of indices
    into the model's `hidden_states` instead picks those (an EAGLE-3 head's three layers).
    """
    decoder = model.get_decoder()
    kwargs[cache_arg_name(decoder)] = cache
    if layers:
        kwargs["output_hidden_states"] = True
    out = decoder(input_ids=input_ids, use_cache=True, **kwargs)
    hidden = out.last_hidden_state  # (1, T, H)
    logits = logits_from_hidden(model, hidden[:, -keep:] if keep else hidden)
    if layers:
        hidden = torch.cat([hidden, layer_states(out, model.config, None if layers is True else layers)], dim=-1)
    return logits, hidden


def layer_states(out: Any, config: Any, ids: tuple[int, ...] | None = None) -> torch.Tensor:
    """The outputs of layers `ids` (default: the feature layers) side by side, (..., T, H k), from a decoder
    output that has `hidden_states`."""
    return torch.cat([out.hidden_states[i] for i in (feature_layers(config) if ids is None else ids)], dim=-1)


def feature_layers(config: Any) -> tuple[int, ...]:
    """The decoder layers whose outputs a head with fused features reads besides the final hidden states:
    a low and a middle one, as EAGLE-3 picks them (the 2nd and the N/2-th of N; their index in the model's
    `hidden_states`, where 0 is the embeddings). The top one is the final hidden state itself."""
    cfg = getattr(config, "text_config", None) or config
    n = int(cfg.num_hidden_layers)
    return (min(2, n), max(1, n // 2))


def eagle3_layers(config: Any) -> tuple[int, ...]:
    """EAGLE-3's default fused layers as indices into the model's `hidden_states` (the state going into layer k):
    2, N//2 and N-3, i.e. the outputs of layers 1, N/2-1 and N-4 of N (SafeAILab EAGLE, vLLM, SpecForge)."""
    cfg = getattr(config, "text_config", None) or config
    n = int(cfg.num_hidden_layers)
    return (min(2, n), n // 2, max(0, n - 3))


def state_layers(config: Any) -> tuple[int, ...]:
    """Every layer a compiled forward hands out besides the final states (one graph serves every head): the
    fused heads' feature layers and EAGLE-3's default three, ascending, each once."""
    return tuple(sorted(set(feature_layers(config)) | set(eagle3_layers(config))))


def logits_from_hidden(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's LM head on final hidden states (..., H) -> logits (..., V), soft-capped where the model is."""
    return softcap(model, model.get_output_embeddings()(hidden))


def softcap(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The model's final logit soft-capping (Gemma 2 style), or the logits as they are."""
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def cache_from_kwargs(kwargs: dict[str, Any]) -> Any:
    """The KV cache a caller passed to a forward (either argument name), or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def sliding_window(config: Any) -> int | None:
    """The smallest attention window of a model config with sliding-window layers, else None."""
    configs = [config] + [getattr(config, k) for k in ("text_config",) if getattr(config, k, None) is not None]
    for cfg in configs:
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None)
        if window and (types is None or any("sliding" in str(t) for t in types)):
            return int(window)
    return None


def cache_config(config: Any) -> Any:
    """`config` to build a KV cache from: every layer a full-length one (module docstring); the config itself
    when the model has no sliding window."""
    if sliding_window(config) is None:
        return config
    config = copy.deepcopy(config)
    for cfg in [config] + [getattr(config, k) for k in ("text_config",) if getattr(config, k, None) is not None]:
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = ["full_attention"] * len(cfg.layer_types)
        if getattr(cfg, "sliding_window", None) is not None:
            cfg.sliding_window = None
    return config


def layer_masks(config: Any, mask: torch.Tensor, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> Any:
    """The attention mask to hand a model whose cache keeps every position: `mask` itself, or with the
    sliding window added where layers have one (module docstring).

    mask: additive (1, 1, T, K); q_pos (T,) the queries' positions, kv_pos (K,) the columns'. A model whose
    layers all slide (Mistral) gets the windowed mask; one that mixes window and full layers (Gemma 3) a
    {"full_attention": mask, "sliding_attention": windowed} mapping, which its forward takes as given.
    """
    window = sliding_window(config)
    if window is None:
        return mask
    far = kv_pos[None, :] <= q_pos[:, None] - window  # (T, K): past the window (transformers' sliding overlay)
    windowed = mask.masked_fill(far, torch.finfo(mask.dtype).min)  # (1, 1, T, K)
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(cfg, "layer_types", None)
    if types is None or all("sliding" in str(t) for t in types):
        return windowed
    return {"full_attention": mask, "sliding_attention": windowed}


def cache_len(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def _layers(cache: DynamicCache):
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is None or keys.numel() == 0:
            continue
        yield layer


def _check_window(layer: Any, length: int) -> None:
    window = getattr(layer, "sliding_window", None)
    if window is None:
        return
    seen = getattr(layer, "cumulative_length", layer.keys.shape[-2])
    if layer.keys.shape[-2] < seen and length < seen:  # states before the window are gone
        raise CacheRollbackError(
            f"cannot roll a sliding-window attention layer (window {window}) back from {seen} to {length} "
            "positions: the layer has already dropped the states it would need; keep prompt + new tokens "
            f"below {window - 1} for this model, or decode with 'autoregressive'")


# every layer's (keys, values), each (B, heads, rows, head_dim)
LayerRows = list[tuple[torch.Tensor, torch.Tensor]]


def layer_rows(cache: DynamicCache) -> LayerRows:
    """Every layer's cached (keys, values) as the layers hold them now."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def crop(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of every layer."""
    for layer in _layers(cache):
        _check_window(layer, length)
        if layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = min(layer.cumulative_length, length)


def keep_positions(cache: DynamicCache, start: int, keep: list[int]) -> None:
    """Keep positions [0, start) plus `start + k` for k in keep (in that order), drop the rest.

    Used after tree verification: `start` is the root's slot, `keep` the offsets
    (root = 0) of the accepted path. When the path is a prefix run this is a crop;
    otherwise the rows after the prefix run are copied into place (Medusa) and the
    cache is cropped: no layer is rebuilt.
    """
    run = next((j for j, k in enumerate(keep) if k != j), len(keep))  # keep[:run] is already in place
    length = start + len(keep)
    if run < len(keep):
        src = torch.tensor([start + k for k in keep[run:]])  # (m,) rows that move to start+run .. length-1
        idx: dict[torch.device, torch.Tensor] = {}  # src on each device the layers live on
        for layer in _layers(cache):
            _check_window(layer, length)
            device = layer.keys.device
            if device not in idx:
                idx[device] = src.to(device, non_blocking=True)
            # in place, in the mode the cache's tensors were made in (an inference tensor only changes there)
            with torch.inference_mode(layer.keys.is_inference()):
                for t in (layer.keys, layer.values):  # (B, heads, T, head_dim)
                    rows = t.index_select(-2, idx[device])  # (B, heads, m, head_dim): gathered first, rows overlap
                    t[..., start + run:length, :] = rows
    crop(cache, length)
