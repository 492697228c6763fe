"""Loading the causal LMs that the workbench decodes with: specs, built-in models, the loaded-model cache.

    from workbench.models import load_model, load_tokenizer
    lm = load_model("smollm2-135m:bf16")       # LoadedModel: model + tokenizer, cached per (spec, device)
    tok = load_tokenizer("smollm2-135m")       # the tokenizer alone, never the weights

Modules, one concern each:
  errors        ModelError (and the progress-line helpers); no torch import
  specs         "name[:opt...]" specs: parse_spec, normalize_spec, the allow-list; no torch import
  gguf          the built-in GGUF models (smollm2-135m, gemma3-270m): find, convert once (into workbench.paths.cache_dir)
  tiny          the tiny seeded random Llama with a byte-level vocabulary (tiny-random)
  quant         int8 weights, the ``:int8`` option: the CPU's int8 kernel (PackedInt8Linear), Int8Linear elsewhere
  hub           local model directories and Hugging Face hub ids (safetensors only, no remote code)
  loaded_model  LoadedModel (prompt encoding, decoding, facts) and check_compatible
  loading       load_model, resolve_device and the process-wide LRU ModelCache
  tokenizer     load_tokenizer: only the tokenizer, cached per model name

Importing this package is cheap: errors and specs load at once (no torch); every
other name loads its module on first use, so `from workbench.models import
ModelError` (the CLI's store commands) never imports torch. Patch a name in the
module that defines it (e.g. workbench.models.loading._LOADED): a name here is
looked up there at each access.
"""
from __future__ import annotations

from ..lazy import lazy_exports

from .errors import IncompatibleModelsError, ModelError, Progress
from .specs import (BUILTIN_NAMES, DTYPE_NAMES, EMBEDDED_DEFAULT, GEMMA3_NAME, QUANTS, SMOLLM2_NAME, TINY_ARCH_NAMES,
                    TINY_NAME, AllowList, model_base_name, model_name_key, normalize_spec, parse_spec)

_LAZY_MODULES = {
    "gguf": ("CACHE_MARKER", "CHATML_TEMPLATE", "GEMMA3", "GEMMA3_FILE", "GEMMA3_MODULE", "GEMMA3_PARTS",
             "GEMMA3_SHA256", "GGUF_SOURCES", "GGUFSource", "SMOLLM2", "SMOLLM2_FILE", "SMOLLM2_MODULE",
             "available_models", "convert_gguf", "converted_dir", "is_converted"),
    "tiny": ("TINY_BOS", "TINY_CHAT_TEMPLATE", "TINY_EOS", "TINY_HEAD_STD", "TINY_INIT_STD", "TINY_PAD",
             "TINY_VOCAB", "TINY_ARCHS", "TINY_WINDOW", "build_tiny_model", "build_tiny_tokenizer", "tiny_config"),
    "quant": ("Int8Linear", "PackedInt8Linear", "can_pack", "quantize_int8", "quantize_model_int8",
              "quantized_params"),
    "hub": ("PICKLE_WEIGHTS",),
    "loaded_model": ("LoadedModel", "check_compatible", "count_params", "eos_ids", "max_positions", "output_size"),
    "loading": ("DEFAULT_MAX_LOADED_MODELS", "DTYPES", "CacheKey", "ModelCache", "clear_loaded", "load_model",
                "max_loaded_models", "resolve_device"),
    "tokenizer": ("MAX_TOKENIZERS", "clear_tokenizers", "load_tokenizer"),
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = ["AllowList", "BUILTIN_NAMES", "DTYPE_NAMES", "EMBEDDED_DEFAULT", "GEMMA3_NAME", "IncompatibleModelsError",
           "ModelError", "Progress", "QUANTS", "SMOLLM2_NAME", "TINY_ARCH_NAMES", "TINY_NAME", "model_base_name",
           "model_name_key", "normalize_spec",
           "parse_spec"]
__all__ += sorted(_LAZY)
