"""Model specs: the string that names a model, parsed and normalised, and the allow-list. No torch import.

A spec is ``name[:opt[:opt...]]``. Names: ``smollm2-135m`` (the embedded
default), ``gemma3-270m``, ``tiny-random``, or anything else, taken as a local
model directory (with config.json) or a Hugging Face hub id. Options: ``fp32``
(default), ``bf16``, ``fp16`` pick the dtype; ``int8`` quantises the weights;
``seed=N`` picks the tiny-random model (default 0); ``arch=A`` its architecture
(llama, the default, qwen2, qwen3, mistral, gemma3, phi3, qwen3_moe: workbench.models.tiny).

`parse_spec` splits a spec into its name and options, `normalize_spec` writes
the canonical spelling back (what caches key on and runs record), `cache_key`
adds a directory's real path, and `AllowList` is what a shared server may load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ModelError

SMOLLM2_NAME = "smollm2-135m"
GEMMA3_NAME = "gemma3-270m"
TINY_NAME = "tiny-random"
EMBEDDED_DEFAULT = SMOLLM2_NAME
BUILTIN_NAMES = (SMOLLM2_NAME, GEMMA3_NAME, TINY_NAME)
DTYPE_NAMES = ("fp32", "bf16", "fp16")
QUANTS = ("int8",)
# The tiny-random architectures (workbench.models.tiny.TINY_ARCHS builds them; named here, torch-free, to parse specs).
TINY_ARCH_NAMES = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "qwen3_moe")


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split "name[:opt...]" into the name and {"dtype", "quant", "seed", "arch"}.

    dtype is "fp32" unless given; quant is None or "int8"; seed is an int and
    arch an architecture name for tiny-random (default 0 and "llama") and None otherwise. A spec that is an existing
    directory (and not a built-in name) is taken whole as a path, colons and all.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError("empty model spec; use a name such as " + ", ".join(BUILTIN_NAMES))
    spec = spec.strip()
    if spec.lower() not in BUILTIN_NAMES and os.path.isdir(spec):
        return spec, {"dtype": "fp32", "quant": None, "seed": None, "arch": None}
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
    out: dict = {"dtype": None, "quant": None, "seed": None, "arch": None}
    for raw in opts:
        opt = raw.strip().lower()
        if opt in DTYPE_NAMES:
            _set_once(out, "dtype", opt, spec)
        elif opt in QUANTS:
            _set_once(out, "quant", opt, spec)
        elif opt.startswith("seed="):
            _set_once(out, "seed", _parse_seed(spec, name, opt), spec)
        elif opt.startswith("arch="):
            _set_once(out, "arch", _parse_arch(spec, name, opt), spec)
        else:
            raise ModelError(f"unknown option '{raw}' in model spec '{spec}' "
                             "(known: fp32, bf16, fp16, int8, seed=N and arch=A for tiny-random)")
    out["dtype"] = out["dtype"] or "fp32"
    if name == TINY_NAME:
        out["seed"] = 0 if out["seed"] is None else out["seed"]
        out["arch"] = out["arch"] or TINY_ARCH_NAMES[0]
    return out


def _parse_arch(spec: str, name: str, opt: str) -> str:
    if name != TINY_NAME:
        raise ModelError(f"option 'arch=A' only applies to {TINY_NAME}, not to '{name}' (spec '{spec}')")
    arch = opt.split("=", 1)[1]
    if arch not in TINY_ARCH_NAMES:
        raise ModelError(f"unknown tiny-random architecture '{arch}' in model spec '{spec}' "
                         f"(known: {', '.join(TINY_ARCH_NAMES)})")
    return arch


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
    """The canonical spec: name, then arch (if not llama), seed (if not 0), dtype (if not fp32), quant."""
    parts = [name]
    if opts.get("arch") and opts["arch"] != TINY_ARCH_NAMES[0]:
        parts.append(f"arch={opts['arch']}")
    if opts.get("seed"):
        parts.append(f"seed={opts['seed']}")
    if opts.get("dtype", "fp32") != "fp32":
        parts.append(opts["dtype"])
    if opts.get("quant"):
        parts.append(opts["quant"])
    return ":".join(parts)


def model_base_name(spec: str) -> str:
    """The model's name without precision options, as heads are named after it: a directory's last part;
    a tiny-random architecture other than llama keeps it ("tiny-random-qwen2": another model)."""
    try:
        name, opts = parse_spec(spec)
    except ModelError:
        name, opts = str(spec or "").split(":")[0], {}
    base = os.path.basename(str(name).rstrip("/\\")) or str(name)
    arch = opts.get("arch")
    return f"{base}-{arch}" if arch and arch != TINY_ARCH_NAMES[0] else base


def model_name_key(spec: str) -> str:
    """What an allow-list compares: the spec's name (a directory's real path), without its options."""
    name, _ = parse_spec(spec)
    return os.path.realpath(name) if name not in BUILTIN_NAMES and os.path.isdir(name) else name

def cache_key(name: str, norm: str) -> str:
    """What an in-process cache keys on: the normalized spec, with a directory's real path as its name."""
    if name not in BUILTIN_NAMES and os.path.isdir(name):
        return os.path.realpath(name) + norm[len(name):]
    return norm


@dataclass(frozen=True)
class AllowList:
    """The models a shared server may load: the built-in names plus what the operator named.

    A name allows every option of it (dtype, int8, tiny-random's seed and arch); a
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
