"""Loading a model by spec, and the process-wide cache of loaded models.

`load_model(spec, device)` parses the spec, builds or reads the base model
(tiny-random in process, a built-in GGUF model from its converted cache, a
local directory or a hub id), casts it to the spec's dtype, quantises it for
``:int8`` (with the device's int8 kernel, see quant.py), and moves it to the
device (`resolve_device`: cuda when available).
The result is cached per (normalized spec, device) in a `ModelCache`: the most
recently used $WORKBENCH_MAX_LOADED_MODELS (default 4) are kept, and a dropped
model still in use is found again rather than loaded twice. Loaded models are
shared, so treat them as read-only.

Grouped-query attention on a CPU (`cpu_gqa_attention`): on a machine without a
GPU, transformers' SDPA attention is told to pass grouped key/value heads to
the kernel as they are (`enable_gqa`) instead of first copying every cached
key and value once per query head (`repeat_kv`). Same attention, less memory
traffic, which on a CPU is a visible share of a small model's forward, compiled
or eager (docs/results/2026-12-05-compiled-backend.md). On CUDA,
transformers keeps its own choice (GQA with a mask falls back to the slow math
kernel there). $TRANSFORMERS_SDPA_FORCE_GQA set by the user is left alone.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any, Iterator

import torch
from torch import nn

from ..config import env_number
from .errors import ModelError, Progress, tell
from .gguf import GGUF_SOURCES, from_converted
from .hub import from_pretrained, load_directory, load_hub
from .loaded_model import LoadedModel, eos_ids
from .quant import quantize_model_int8
from .specs import TINY_NAME, cache_key, normalize_spec, parse_spec
from .tiny import build_tiny_model, build_tiny_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | None = None) -> torch.device:
    """None/"auto" -> cuda when available, else cpu; an explicit device is checked."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        _check_cuda(dev)
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelError("device 'mps' requested but Apple MPS is not available here; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def _check_cuda(dev: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ModelError(f"device '{dev}' requested but CUDA is not available "
                         f"(torch {torch.__version__}); use cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device '{dev}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")


# ---------------------------------------------------------------- the cache of loaded models

DEFAULT_MAX_LOADED_MODELS = 4
CacheKey = tuple[str, str]


def max_loaded_models() -> int:
    """$WORKBENCH_MAX_LOADED_MODELS: how many loaded models the cache keeps (default 4)."""
    return int(env_number("WORKBENCH_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED_MODELS, 1, integer=True,
                          error=ModelError))


class ModelCache(MutableMapping):
    """Loaded models by (spec, device): the `limit` most recently used are kept, the oldest dropped.

    A dropped model that someone still uses (a decode in progress, a caller's
    variable) is found again through a weak reference rather than loaded a
    second time, so memory holds at most `limit` idle models plus those in use.
    limit=None reads $WORKBENCH_MAX_LOADED_MODELS at every insertion.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._recent: OrderedDict[CacheKey, LoadedModel] = OrderedDict()  # least recently used first
        self._alive: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __getitem__(self, key: CacheKey) -> LoadedModel:
        hit = self._recent.get(key)
        if hit is None:
            hit = self._alive[key]  # KeyError when it is gone
        self._recent[key] = hit
        self._recent.move_to_end(key)
        self._evict()
        return hit

    def __setitem__(self, key: CacheKey, value: LoadedModel) -> None:
        self._recent[key] = value
        self._recent.move_to_end(key)
        self._alive[key] = value
        self._evict()

    def __delitem__(self, key: CacheKey) -> None:
        found = self._recent.pop(key, None) is not None
        found = self._alive.pop(key, None) is not None or found
        if not found:
            raise KeyError(key)

    def __iter__(self) -> Iterator[CacheKey]:
        return iter(list(self._recent))

    def __len__(self) -> int:
        return len(self._recent)

    def clear(self) -> None:
        self._recent.clear()
        self._alive.clear()

    def _evict(self) -> None:
        limit = self.limit if self.limit is not None else max_loaded_models()
        while len(self._recent) > limit:
            self._recent.popitem(last=False)


_LOADED: MutableMapping = ModelCache()
_LOCK = threading.RLock()


GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers' own switch (integrations/sdpa_attention.py)


def cpu_gqa_attention() -> bool:
    """On a machine without CUDA, make SDPA take grouped key/value heads as they are (module docstring);
    True when that is in effect."""
    if not torch.cuda.is_available():
        os.environ.setdefault(GQA_SWITCH, "1")
    return gqa_attention_in_effect()


def gqa_attention_in_effect() -> bool:
    """Whether SDPA takes grouped key/value heads as they are in this process (recorded with runs and costs)."""
    return os.environ.get(GQA_SWITCH) == "1"


def load_model(spec: str, device: str | None = None, progress: Progress | None = None) -> LoadedModel:
    """Load (or fetch from the in-process cache) the model named by `spec` on `device`."""
    name, opts = parse_spec(spec)
    dev = resolve_device(device)
    if dev.type == "cpu":
        cpu_gqa_attention()
    norm = normalize_spec(name, opts)
    key = (cache_key(name, norm), str(dev))
    max_loaded_models()  # a bad setting fails before a slow load, not after it
    with _LOCK:
        hit = _LOADED.get(key)
        if hit is not None:
            return hit
        loaded = _load_uncached(name, opts, norm, dev, progress)
        _LOADED[key] = loaded
        return loaded


def clear_loaded() -> None:
    """Forget every loaded model (frees memory once no one else holds them)."""
    with _LOCK:
        _LOADED.clear()


def _load_uncached(name: str, opts: dict, norm: str, dev: torch.device, progress: Progress | None) -> LoadedModel:
    dtype = DTYPES[opts["dtype"]]
    t0 = time.perf_counter()
    tell(progress, f"Loading {norm} on {dev}...")
    model, tokenizer = _load_base(name, opts, dtype, progress)
    if opts["quant"] == "int8":
        quantize_model_int8(model, dev)  # the kernel depends on the device
    model = model.to(dev).eval()
    model.requires_grad_(False)
    loaded = LoadedModel(spec=norm, name=name, model=model, tokenizer=tokenizer, device=dev, dtype=dtype,
                         quant=opts["quant"], eos_token_ids=eos_ids(tokenizer, model))
    tell(progress, f"Loaded {norm} in {time.perf_counter() - t0:.1f} s")
    return loaded


def _load_base(name: str, opts: dict, dtype: torch.dtype, progress: Progress | None) -> tuple[nn.Module, Any]:
    """The model (already in `dtype`, on cpu) and its tokenizer."""
    if name == TINY_NAME:
        model = build_tiny_model(opts["seed"], opts["arch"]).to(dtype)
        return model, build_tiny_tokenizer()
    if name in GGUF_SOURCES:
        return from_converted(GGUF_SOURCES[name], lambda path: from_pretrained(path, dtype), progress)
    if os.path.isdir(name):
        return load_directory(name, dtype)
    return load_hub(name, dtype)
