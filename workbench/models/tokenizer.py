"""Loading only a model's tokenizer, for turning token ids into text without loading the weights.

`load_tokenizer(spec)` gives the tokenizer `load_model(spec)` would attach, but
never builds, reads or moves the model: tiny-random's byte tokenizer is built on
its own; a built-in GGUF model's comes from its converted cache (converting once
if needed, as load_model does); a local directory's or hub id's goes through
AutoTokenizer with trust_remote_code=False, from the local Hugging Face cache
first and downloaded only when the hub is reachable and not offline. Options
(dtype, int8, tiny-random's seed) do not change a tokenizer, so the cache keys
on the name alone: the most recently used MAX_TOKENIZERS are kept.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from .errors import Progress
from .gguf import GGUF_SOURCES, from_converted
from .hub import directory_tokenizer, hub_tokenizer, tokenizer_from_pretrained
from .specs import TINY_NAME, cache_key, parse_spec
from .tiny import build_tiny_tokenizer

MAX_TOKENIZERS = 16

_TOKENIZERS: OrderedDict[str, Any] = OrderedDict()  # least recently used first
_LOCK = threading.Lock()


def load_tokenizer(spec: str, progress: Progress | None = None) -> Any:
    """The tokenizer of the model named by `spec` (cached per name); ModelError when it cannot load."""
    name, _ = parse_spec(spec)
    key = cache_key(name, name)
    with _LOCK:
        hit = _TOKENIZERS.get(key)
        if hit is None:
            hit = _load_uncached(name, progress)
        _TOKENIZERS[key] = hit
        _TOKENIZERS.move_to_end(key)
        while len(_TOKENIZERS) > MAX_TOKENIZERS:
            _TOKENIZERS.popitem(last=False)
        return hit


def clear_tokenizers() -> None:
    """Forget every cached tokenizer."""
    with _LOCK:
        _TOKENIZERS.clear()


def _load_uncached(name: str, progress: Progress | None) -> Any:
    if name == TINY_NAME:
        return build_tiny_tokenizer()
    if name in GGUF_SOURCES:
        return from_converted(GGUF_SOURCES[name], tokenizer_from_pretrained, progress)
    if os.path.isdir(name):
        return directory_tokenizer(name)
    return hub_tokenizer(name)
