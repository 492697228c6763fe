"""Trained drafter heads (EAGLE, EAGLE-3, Medusa, Hydra, DFlash, PARD): save, find and load them, safely matched to their target.

A head lives in a directory: `head.safetensors` (its own weights, fp16, or an
imported checkpoint's own precision; never the target's embedding or LM head,
which it reuses) and `card.json` (kind,
shape, the target it was trained for with a fingerprint of that target's
weights, the training settings and the held-out accuracy). Loading a head
against another target fails with a clear error.

Published heads are imported into this format, and exported from it, by
workbench.heads.porting (the card's `origin` says where an imported one came from).

Where heads are found (`workbench heads` lists them):
- a directory given as `head=DIR`;
- by name, in the user's heads dir ($WORKBENCH_HEADS, else $WORKBENCH_CACHE/heads/<name>, where
  `workbench train` writes by default) and among the heads shipped with the
  package (workbench/heads/builtin/<name>);
- by default (`head=""`): `<target name>-<kind>` in those places, user first,
  so a head the user trained for their model wins over the shipped one.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import HEAD_KINDS, ConfigError
from ..models.specs import model_base_name
from ..paths import cache_dir
from .modules import HEAD_CLASSES, Eagle3Head, EagleHead, HeadBase, HydraHeads, MedusaHeads, make_head
from .block import DFlashHead, make_dflash_head  # noqa: F401  (registers the dflash kind in HEAD_CLASSES)
from .pard import PardHead, make_pard_head  # noqa: F401  (registers the pard kind in HEAD_CLASSES)

CARD = "card.json"
WEIGHTS = "head.safetensors"
FORMAT = 1
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

__all__ = ["BUILTIN_DIR", "DFlashHead", "Eagle3Head", "EagleHead", "HEAD_KINDS", "HeadBase", "HeadError", "HydraHeads",
           "MedusaHeads", "default_head_name", "find_head", "fingerprint", "list_heads", "load_head", "make_dflash_head",
           "make_head", "make_pard_head", "PardHead", "save_head",
           "user_heads_dir"]


class HeadError(ConfigError):
    """A head that cannot be found, read, or used with this target."""


def user_heads_dir() -> Path:
    """$WORKBENCH_HEADS, else <cache dir>/heads."""
    env = os.environ.get("WORKBENCH_HEADS")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "heads"


def base_name(lm: Any) -> str:
    """The target's name without precision options (a head serves every precision of its model)."""
    return model_base_name(str(getattr(lm, "spec", None) or lm.name))


def default_head_name(lm: Any, kind: str) -> str:
    return f"{base_name(lm)}-{kind}"


def fingerprint(lm: Any) -> str:
    """A short hash of the target's token embedding (rounded to bf16, so every precision of one model agrees)
    and its shape: what a head's card is checked against."""
    model = lm.model if hasattr(lm, "model") else lm
    emb = model.get_input_embeddings().weight
    rows = emb[: min(512, emb.shape[0])].detach().to("cpu", torch.bfloat16).view(torch.int16)
    h = hashlib.sha256(rows.numpy().tobytes())
    h.update(f"{tuple(emb.shape)}|{model.config.hidden_size}".encode())
    return h.hexdigest()[:16]


def embed_scale(target: Any) -> float:
    """The factor the target multiplies its token embeddings by (Gemma: sqrt(hidden size)); 1 for most."""
    emb = target.model.get_input_embeddings()
    return float(getattr(emb, "scalar_embed_scale", None) or getattr(emb, "embed_scale", None) or 1.0)


def save_head(head: HeadBase, out_dir: str | Path, target: Any, *, training: dict | None = None,
              accuracy: dict | None = None, extra: dict | None = None,
              dtype: torch.dtype = torch.float16) -> Path:
    """Write `head` (its float weights in `dtype`: fp16, or an imported checkpoint's own) and its card to
    out_dir; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in {**dict(head.named_parameters()), **dict(head.named_buffers())}.items():
        t = t.detach().to("cpu").contiguous()
        tensors[name] = t.to(dtype) if t.is_floating_point() and name != "inv_freq" else t
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / WEIGHTS)
    card = {
        "format": FORMAT, "kind": head.kind, "config": head.config,
        "target": {"name": base_name(target), "spec": getattr(target, "spec", None), "fingerprint": fingerprint(target),
                   "hidden_size": target.model.config.hidden_size, "vocab_size": int(target.vocab_size),
                   "architectures": list(getattr(target.model.config, "architectures", None)
                                        or [type(target.model).__name__]),
                   **({"embed_scale": embed_scale(target)} if embed_scale(target) != 1.0 else {})},
        "params": sum(p.numel() for p in head.parameters()),
        "vocab_trim": int(head.vocab.numel()),
        "training": training or {}, "accuracy": accuracy or {},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    (out / CARD).write_text(json.dumps(card, indent=1, allow_nan=False))
    return out


def read_card(path: str | Path) -> dict:
    p = Path(path) / CARD
    try:
        card = json.loads(p.read_text())
    except FileNotFoundError:
        raise HeadError(f"{path} is not a head directory (no {CARD})") from None
    except (OSError, ValueError) as e:
        raise HeadError(f"cannot read the head card {p}: {e}") from None
    if not isinstance(card, dict) or card.get("kind") not in HEAD_KINDS:
        raise HeadError(f"{p} is not a head card of a known kind ({', '.join(HEAD_KINDS)})")
    return card


def _places() -> list[tuple[str, Path]]:
    return [("user", user_heads_dir()), ("builtin", BUILTIN_DIR)]


def find_head(ref: str, target: Any, kind: str) -> Path:
    """The directory of head `ref` (a path or a name; "" = the default head of `kind` for `target`)."""
    ref = (ref or "").strip()
    if ref and (os.sep in ref or "/" in ref or Path(ref).is_dir()):
        if not Path(ref).is_dir():
            raise HeadError(f"head directory {ref} does not exist")
        return Path(ref)
    name = ref or default_head_name(target, kind)
    for _, root in _places():
        if (root / name / CARD).exists():
            return root / name
    known = ", ".join(h["name"] for h in list_heads()) or "none yet"
    how = (f"train one with `workbench train --kind {kind} --target {getattr(target, 'spec', base_name(target))}`"
           if not ref else "pass a head directory or a name from `workbench heads`")
    raise HeadError(f"no {kind} head {'named ' + repr(name) if ref else 'for ' + base_name(target)} "
                    f"(heads: {known}); {how}")


def load_head(ref: str, target: Any, kind: str) -> tuple[HeadBase, dict]:
    """Head `ref` of `kind`, checked against `target`, on the target's device and dtype -> (head, card)."""
    path = find_head(ref, target, kind)
    card = read_card(path)
    if card["kind"] != kind:
        raise HeadError(f"head {path} is a {card['kind']} head, not {kind}")
    want, have = card.get("target", {}), fingerprint(target)
    if want.get("fingerprint") != have:
        raise HeadError(f"head {path} was trained for target '{want.get('name')}' (fingerprint "
                        f"{want.get('fingerprint')}), not for '{getattr(target, 'spec', '?')}' ({have}); "
                        "train a head for this target with `workbench train`")
    layers = card["config"].get("feature_layers")
    if layers:
        from ..kv_cache import feature_layers  # here: kv_cache loads transformers; `workbench heads` needs none

        if list(layers) != list(feature_layers(target.model.config)):
            raise HeadError(f"head {path} fuses the target's layers {list(layers)}, but "
                            f"'{getattr(target, 'spec', '?')}' gives {list(feature_layers(target.model.config))}; "
                            "train a head for this target with `workbench train`")
    head = HEAD_CLASSES[kind](card["config"])
    try:
        state = load_file(str(path / WEIGHTS))
        if "vocab" in state:
            head.vocab = state["vocab"]
        missing, unexpected = head.load_state_dict({k: v.float() if v.is_floating_point() else v
                                                    for k, v in state.items()}, strict=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise HeadError(f"cannot load the head weights {path / WEIGHTS}: {e}") from None
    if missing or unexpected:
        raise HeadError(f"head weights {path / WEIGHTS} do not match its card (missing {missing}, "
                        f"unexpected {unexpected})")
    inv_freq = head.inv_freq.float() if isinstance(head, (EagleHead, DFlashHead, PardHead)) else None
    head.to(device=target.device, dtype=target.dtype if target.dtype.is_floating_point else torch.float32)
    if inv_freq is not None:  # rotary frequencies stay fp32 (as the target's own), whatever the weights' dtype
        head.inv_freq = inv_freq.to(target.device)
    return head.eval().requires_grad_(False), card


def list_heads(kind: str | None = None) -> list[dict]:
    """Every head found (user heads first, then shipped ones), with its card's facts; `origin` is "shipped"
    (with the package), "trained" (its card records a `workbench train` run) or "imported" (any other; an
    imported published head also has its `source` and `format`)."""
    out = []
    for where, root in _places():
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            try:
                card = read_card(d)
            except HeadError:
                continue
            if kind and card["kind"] != kind:
                continue
            acc = card.get("accuracy", {})
            origin = "shipped" if where == "builtin" else "trained" if card.get("training") else "imported"
            imported = card.get("origin") or {}  # a published head's source and layout (workbench.heads.porting)
            out.append({"name": d.name, "kind": card["kind"], "target": card.get("target", {}).get("name"),
                        "where": where, "origin": origin, "path": str(d), "params": card.get("params"),
                        "vocab_trim": card.get("vocab_trim", 0), "top1": acc.get("top1"), "top5": acc.get("top5"),
                        "feature_layers": (card.get("config") or {}).get("feature_layers") or [],
                        "aux_layers": (card.get("config") or {}).get("aux_layers") or [],
                        "samples": card.get("training", {}).get("samples"),
                        "source": imported.get("source"), "format": imported.get("format"),
                        "created_at": card.get("created_at")})
    return out
