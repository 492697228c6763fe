"""Decoding Workbench: run, see and compare fast decoding methods for causal language models.

    import workbench
    result = workbench.run("speculative", "Explain KV caches.", draft="smollm2-135m:bf16")
    result.output_text, result.summary.tokens_per_s, result.trace.steps[1]

Importing the package is cheap (no torch); the heavy modules load on first use.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "run": ("workbench.api", "run"),
    "RunResult": ("workbench.record", "RunResult"),
    "run_benchmark": ("workbench.api", "run_benchmark"),
    "generate": ("workbench.engine", "generate"),
    "load_model": ("workbench.models", "load_model"),
    "load_tokenizer": ("workbench.models", "load_tokenizer"),
    "SamplingConfig": ("workbench.config", "SamplingConfig"),
    "DecodeConfig": ("workbench.config", "DecodeConfig"),
    "Trace": ("workbench.trace", "Trace"),
    "Step": ("workbench.trace", "Step"),
    "list_methods": ("workbench.methods", "list_methods"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
