"""Models that are not built in: a local model directory or a Hugging Face hub id, through transformers.

Both load with trust_remote_code=False (a model that needs its own Python code
is refused; there is no switch to allow it) and from safetensors only: pickle
weights (pytorch_model.bin) can run code when loaded, so a directory holding
only those is refused with a line saying how to convert. A hub id is read from
the local Hugging Face cache first and downloaded only when the hub is
reachable and HF_HUB_OFFLINE is not set. Each source can also give its
tokenizer alone (`directory_tokenizer`, `hub_tokenizer`), without the weights.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import torch
from huggingface_hub.utils import validate_repo_id
from torch import nn

from .errors import ModelError, short
from .specs import BUILTIN_NAMES

T = TypeVar("T")
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# ---------------------------------------------------------------- local directories


def load_directory(path: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The model (in `dtype`, on cpu) and tokenizer saved in a directory with save_pretrained."""
    _check_directory(path)
    _check_safetensors(path)
    return _from_directory(path, lambda: from_pretrained(path, dtype))


def directory_tokenizer(path: str) -> Any:
    """Only the tokenizer of a model directory (its weights are not read)."""
    _check_directory(path)
    return _from_directory(path, lambda: tokenizer_from_pretrained(path))


def _from_directory(path: str, load: Callable[[], T]) -> T:
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear line
        raise ModelError(f"could not load model from directory '{path}': {short(exc)}") from exc


def _check_directory(path: str) -> None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"could not load model '{path}': the directory has no config.json "
                         "(expected a Hugging Face model saved with save_pretrained)")
    _check_no_remote_code(path)


def _check_no_remote_code(path: str) -> None:
    """Refuse a model directory whose config asks for its own Python code (trust_remote_code stays off)."""
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


# ---------------------------------------------------------------- hub ids


def load_hub(name: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The model (in `dtype`, on cpu) and tokenizer of a hub id: from the local cache, else downloaded."""
    return _via_hub(name, lambda **kw: from_pretrained(name, dtype, **kw))


def hub_tokenizer(name: str) -> Any:
    """Only the tokenizer of a hub id (its weights are neither downloaded nor read)."""
    return _via_hub(name, lambda **kw: tokenizer_from_pretrained(name, **kw))


def _via_hub(name: str, load: Callable[..., T]) -> T:
    def fail(reason: str, exc: Exception | None = None) -> ModelError:
        err = ModelError(f"could not load model '{name}': not a built-in name ({', '.join(BUILTIN_NAMES)}), "
                         f"not a local directory, and not downloadable from the Hugging Face hub ({reason})")
        err.__cause__ = exc
        return err

    bad_id = _invalid_hub_id(name)
    if bad_id:
        raise fail(bad_id)
    try:  # already in the local Hugging Face cache: no network needed
        return load(local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached; try the hub below
        pass
    offline = _hub_unreachable()
    if offline:
        raise fail(offline)
    try:
        return load()
    except Exception as exc:  # noqa: BLE001
        raise fail(short(exc), exc) from exc


def tokenizer_from_pretrained(source: str, **kwargs: Any) -> Any:
    """A hub id's or directory's tokenizer through transformers, never running its own Python code."""
    # here: transformers' auto classes load only to read a model; `workbench models` lists without them
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)


def from_pretrained(source: str, dtype: torch.dtype, **kwargs: Any) -> tuple[nn.Module, Any]:
    """A hub id or directory through transformers: never its own Python code, weights from safetensors only."""
    from transformers import AutoModelForCausalLM  # here: as in tokenizer_from_pretrained

    tokenizer = tokenizer_from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=False, use_safetensors=True,
                                                 **kwargs)
    return model, tokenizer


def _invalid_hub_id(name: str) -> str | None:
    try:
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
