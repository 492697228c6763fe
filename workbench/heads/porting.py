"""Import published drafter heads into the workbench's head format, and export the workbench's heads to theirs.

`import_head(source, target)`: a local directory or a hub id (downloaded through huggingface_hub) in one of
the published layouts (workbench.heads.formats: EAGLE-1/2, EAGLE-3, speculators, Medusa-1) is detected,
checked against the target (hidden size, vocabulary, layer ids, verifier architecture: one error per
mismatch), converted, and written as a head (card + safetensors, in the checkpoint's own precision) into the
user heads dir, atomically: a failed import leaves nothing behind. Pickled weights (.bin/.pt) are read only
through `torch.load(weights_only=True)`; a pickle holding anything but tensors is refused. The card records
where the head came from (source, format, original config) as `origin`.

`export_head(ref, fmt, out)`: the same tables backwards, config + safetensors with the keys and config fields
the reference loaders and vLLM/SGLang read, and a README card (training data, measured acceptance). A head a
format cannot express (another architecture, a trimmed vocabulary, norms the layout has no place for) is
refused in one line.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..kv_cache import eagle3_layers
from . import (CARD, WEIGHTS, HeadError, base_name, embed_scale, find_head, read_card, save_head,
               user_heads_dir)
from .formats import (KIND_OF, MEDUSA_FILES, OPTIONAL, WEIGHT_FILES, detect, eagle3_config, layer_config,
                      llama_layer_config, published_key, read_config, rope_of, rope_tables)
from .modules import Eagle3Head, EagleHead, HeadBase, MedusaHeads

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.pt", "README.md"]


# ---------------------------------------------------------------- import

def fetch_source(source: str) -> Path:
    """A local directory as it is; a hub id downloaded (or one line saying what to download and where)."""
    p = Path(source).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise HeadError(f"{source} is a file; pass the directory that holds the head's config and weights")
    if not HUB_ID.match(source):
        raise HeadError(f"{source} is neither a directory nor a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download  # here: only a hub import needs it

        return Path(snapshot_download(repo_id=source, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, gated repo: the same advice
        raise HeadError(f"cannot download {source} ({type(e).__name__}); on a machine with access run "
                        f"`huggingface-cli download {source} --local-dir DIR`, copy DIR here, then "
                        f"`workbench heads import DIR --target ...`") from None


def read_weights(src: Path, fmt: str) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's tensors and the file they came from (safetensors preferred; pickles weights-only)."""
    names = MEDUSA_FILES if fmt == "medusa" else WEIGHT_FILES
    path = next((src / n for n in names if (src / n).exists()), None)
    if path is None:
        raise HeadError(f"{src}: no weights file ({', '.join(names)})")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HeadError(f"refused {path}: not a plain tensor checkpoint (read with weights_only=True: {first[:160]})"
                        ) from None
    except OSError as e:
        raise HeadError(f"cannot read {path}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise HeadError(f"refused {path}: not a mapping of names to tensors")
    return state, path.name


def _target_facts(target: Any) -> tuple[Any, int, int, int]:
    """(text config, hidden size H, vocabulary rows V, decoder layers N) of the target."""
    cfg = getattr(target.model.config, "text_config", None) or target.model.config
    V = int(target.model.get_input_embeddings().weight.shape[0])
    return cfg, int(cfg.hidden_size), V, int(cfg.num_hidden_layers)


def _same_embedding(w: torch.Tensor, target: Any) -> bool:
    emb = target.model.get_input_embeddings().weight.detach().float().cpu()
    return w.shape == emb.shape and torch.allclose(w.float(), emb, rtol=1e-2, atol=1e-3)


def _fill(head: HeadBase, fmt: str, state: dict[str, torch.Tensor], source: str, layers: int = 1,
          optional: tuple[str, ...] = OPTIONAL) -> None:
    """Load the published tensors into `head` by the format's names: missing, extra or misshapen keys fail."""
    ours = [k for k in head.state_dict() if k not in ("vocab", "inv_freq")]
    names = {published_key(k, fmt, layers): k for k in ours}
    missing = sorted(set(names) - set(state))
    extra = sorted(set(state) - set(names) - set(optional))
    if missing:
        raise HeadError(f"{source}: missing keys for a {fmt} head: {', '.join(missing[:6])}"
                        + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""))
    if extra:
        raise HeadError(f"{source}: unexpected keys for a {fmt} head: {', '.join(extra[:6])}"
                        + (f" (+{len(extra) - 6} more)" if len(extra) > 6 else ""))
    mine = head.state_dict()
    for pub, k in names.items():
        t = state[pub]
        if fmt == "eagle" and k == "fc.weight":  # published input [e(x); f], ours [f; e(x)]
            H = t.shape[0]
            t = torch.cat([t[:, H:], t[:, :H]], dim=1) if t.dim() == 2 and t.shape[1] == 2 * H else t
        if tuple(t.shape) != tuple(mine[k].shape):
            raise HeadError(f"{source}: {pub} has shape {list(t.shape)}, the config implies {list(mine[k].shape)}")
        mine[k] = t.to(mine[k].dtype)
    head.load_state_dict(mine)


def _check(source: str, what: str, theirs: Any, ours: Any) -> None:
    if theirs != ours:
        raise HeadError(f"{source}: the head's {what} is {theirs}, the target's {ours}")


def _with_rope(head: EagleHead, rope: dict[str, Any]) -> None:
    inv_freq, scale = rope_tables(head.config, rope)
    head.inv_freq = inv_freq
    head.rope_scale = scale
    head.config["rope_scale"] = scale


def build_head(fmt: str, cfg: dict[str, Any], state: dict[str, torch.Tensor], target: Any,
               source: str) -> HeadBase:
    """The workbench head for a published checkpoint (config `cfg`, tensors `state`) checked against `target`."""
    tcfg, H, V, N = _target_facts(target)
    try:
        if fmt == "medusa":
            return _medusa(cfg, state, source, H, V)
        if fmt == "eagle":
            scale = embed_scale(target)
            if scale != 1.0:
                arch = type(target.model).__name__
                raise HeadError(f"{source}: an EAGLE-1/2 head reads the target's token embedding rows as they are, "
                                f"and {arch} scales its embeddings by {scale:g}, which the layout has no place for")
            c = layer_config(cfg)
            _check(source, "hidden size", c["hidden_size"], H)
            _check(source, "vocabulary size", int(cfg.get("vocab_size") or V), V)
            head = EagleHead({**c, "embed_norm": False, "final_norm": False, "layer_input_norm": False,
                              "fc_bias": cfg.get("bias", True) is not False, "rope": rope_of(cfg)})
            _fill(head, fmt, state, source)
            _with_rope(head, head.config["rope"])
            return head
        c = eagle3_config(cfg, fmt)
    except KeyError as e:
        raise HeadError(f"{source}: its config lacks {e.args[0]!r}") from None
    if fmt == "speculators":
        verifier = ((cfg.get("speculators_config") or {}).get("verifier") or {}).get("architectures") or []
        mine = list(getattr(target.model.config, "architectures", None) or [type(target.model).__name__])
        if verifier and mine and not set(verifier) & set(mine):
            raise HeadError(f"{source}: the head was trained for a {', '.join(verifier)} verifier, the target is "
                            f"{', '.join(mine)}")
    _check(source, "target hidden size", int(c.get("target_hidden_size") or c["hidden_size"]), H)
    _check(source, "vocabulary size", c["vocab_size"] or V, V)
    aux = [int(i) for i in (c["aux_layers"] or eagle3_layers(tcfg))]
    if len(aux) != 3 or not all(0 <= i <= N for i in aux):
        raise HeadError(f"{source}: aux layer ids {aux} do not fit the target (three hidden-state indices in "
                        f"0..{N} for its {N} layers)")
    if not 0 < c["draft_vocab"] <= V:
        raise HeadError(f"{source}: draft vocabulary size {c['draft_vocab']} (the target has {V} tokens)")
    emb = state.get("embed_tokens.weight")
    own = emb is not None and not _same_embedding(emb, target)
    if c["hidden_size"] != H and not own:
        raise HeadError(f"{source}: the head is {c['hidden_size']} wide but carries no token embedding of its own")
    state = dict(state)
    if not own:
        state.pop("embed_tokens.weight", None)
    if "d2t" not in state and c["draft_vocab"] == V:  # a full draft vocabulary needs no map
        state["d2t"] = torch.zeros(V, dtype=torch.long)
    if "t2d" not in state and "d2t" in state:
        t2d = torch.zeros(V, dtype=torch.bool)
        t2d[torch.arange(c["draft_vocab"]) + state["d2t"].long()] = True
        state["t2d"] = t2d
    d2t = state.get("d2t")
    if d2t is not None and d2t.numel() == c["draft_vocab"]:
        ids = torch.arange(c["draft_vocab"]) + d2t.long()
        if int(ids.min()) < 0 or int(ids.max()) >= V or ids.unique().numel() != ids.numel():
            raise HeadError(f"{source}: d2t maps draft ids outside the target's {V} tokens or onto one twice")
    config = {**c, "aux_layers": aux, "vocab_size": V, "own_embed": own}
    head = Eagle3Head(config)
    _fill(head, "eagle3" if fmt == "eagle3" else "speculators", state, source)
    _with_rope(head, c["rope"])
    return head


def _medusa(cfg: dict[str, Any], state: dict[str, torch.Tensor], source: str, H: int, V: int) -> MedusaHeads:
    """Medusa-1 heads: the head and block counts come from the weights (some configs under-state them)."""
    heads = sorted({int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()})
    if not heads or heads != list(range(len(heads))):
        raise HeadError(f"{source}: no Medusa heads numbered 0.. in its weights")
    L = len({k.split(".")[1] for k in state if k.startswith("0.") and ".linear." in k})
    if "0.0.linear.weight" not in state or f"0.{L}.weight" not in state:
        raise HeadError(f"{source}: missing keys for a medusa head: 0.0.linear.weight, 0.{L}.weight")
    _check(source, "hidden size", int(state["0.0.linear.weight"].shape[1]), H)
    _check(source, "vocabulary size", int(state[f"0.{L}.weight"].shape[0]), V)
    head = MedusaHeads({"hidden_size": H, "heads": len(heads), "layers": L, "own_lm_head": True,
                        "vocab_size": V})
    _fill(head, "medusa", state, source, layers=L, optional=())
    return head


def _dtype_of(state: dict[str, torch.Tensor]) -> torch.dtype:
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    return torch.bfloat16 if torch.bfloat16 in floats else torch.float32 if torch.float32 in floats else torch.float16


def default_import_name(source: str, target: Any, fmt: str) -> str:
    tail = re.sub(r"[^\w.-]+", "-", Path(source.rstrip("/\\")).name or source).strip("-.") or "head"
    return f"{base_name(target)}-{KIND_OF[fmt]}-{tail}"


def import_head(source: str, target: Any, name: str | None = None, root: str | Path | None = None) -> Path:
    """Import the head at `source` for `target` as head `name` in `root` (default the user heads dir)."""
    src = fetch_source(source)
    try:
        fmt = detect(src)
        cfg = read_config(src)
    except ValueError as e:
        raise HeadError(f"{source}: {e}") from None
    state, file = read_weights(src, fmt)
    head = build_head(fmt, cfg, state, target, source)
    name = name or default_import_name(source, target, fmt)
    if not re.match(r"^[\w.-]+$", name) or name.startswith("."):
        raise HeadError(f"head name {name!r}: use letters, digits, '.', '-' and '_'")
    root = Path(root) if root is not None else user_heads_dir()
    dest = root / name
    if dest.exists():
        raise HeadError(f"a head named {name} already exists in {root}; pass another --name or remove it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.importing-{os.getpid()}"
    origin = {"source": source, "format": fmt, "file": file, "config": cfg}
    try:
        save_head(head, tmp, target, dtype=_dtype_of(state), extra={"origin": origin})
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------- export

EXPORTS = ("speculators", "eagle3", "eagle", "medusa")


def _refuse(name: str, kind: str, fmt: str, why: str) -> HeadError:
    return HeadError(f"head {name} ({kind}) cannot be written as {fmt}: {why}")


def export_tensors(path: Path, card: dict, fmt: str, lm_head: Callable[[], torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """The head's tensors under the format's names, or a one-line refusal."""
    kind, c, name = card["kind"], card["config"], path.name
    state = load_file(str(path / WEIGHTS))
    if fmt in ("eagle3", "speculators") and kind != "eagle3":
        raise _refuse(name, kind, fmt, "the layout holds EAGLE-3 heads only (train one with --kind eagle3)")
    if fmt == "eagle" and kind != "eagle":
        raise _refuse(name, kind, fmt, "the layout holds EAGLE-1/2 heads only")
    if fmt == "medusa" and kind != "medusa":
        raise _refuse(name, kind, fmt, "the layout holds Medusa-1 heads only")
    if c.get("feature_layers"):
        raise _refuse(name, kind, fmt, f"it fuses the target's layers {c['feature_layers']}, which the layout "
                                       "has no place for")
    if state.get("vocab") is not None and state["vocab"].numel():
        raise _refuse(name, kind, fmt, f"it proposes from a trimmed vocabulary of {state['vocab'].numel()} tokens, "
                                       "which the layout has no place for")
    scale = float((card.get("target") or {}).get("embed_scale") or 1.0)
    if fmt == "eagle" and scale != 1.0:
        arch = ", ".join((card.get("target") or {}).get("architectures") or []) or "its target"
        raise _refuse(name, kind, fmt, f"{arch} scales its token embeddings by {scale:g}, and an EAGLE-1/2 head reads "
                                       "them as they are, which the layout has no place for")
    if fmt == "eagle":
        extras = [what for what, on in (("an embedding norm", c.get("embed_norm")),
                                        ("a final norm", c.get("final_norm", True)),
                                        ("an input norm on its layer", c.get("layer_input_norm", True))) if on]
        if extras:
            raise _refuse(name, kind, fmt, f"it has {' and '.join(extras)}, which EAGLE-1/2 heads do not")
    L = int(c.get("layers", 1))
    out = {}
    for k, t in state.items():
        if k in ("vocab", "inv_freq"):
            continue
        if fmt == "eagle" and k == "fc.weight":  # ours [f; e(x)] -> published [e(x); f]
            H = t.shape[0]
            t = torch.cat([t[:, H:], t[:, :H]], dim=1)
        out[published_key(k, fmt, L)] = t.contiguous()
    if fmt == "medusa" and not c.get("own_lm_head"):  # Medusa-1 heads carry their own LM heads: the target's
        if lm_head is None:
            raise _refuse(name, kind, fmt, "it shares the target's LM head, which is needed to write one per head")
        w = lm_head().detach().to("cpu").contiguous()  # in the target's precision: the drafts stay the same
        for h in range(int(c["heads"])):
            out[f"{h}.{L}.weight"] = w.clone()
    return out


def export_config(card: dict, fmt: str, speculative_tokens: int = 5) -> dict[str, Any]:
    """The config.json the format's loaders read."""
    c, tgt = card["config"], card.get("target", {})
    V = int(c.get("vocab_size") or tgt.get("vocab_size") or 0)
    if fmt == "medusa":
        return {"medusa_num_heads": c["heads"], "medusa_num_layers": int(c.get("layers", 1)),
                "base_model_name_or_path": tgt.get("spec") or tgt.get("name"), "hidden_size": c["hidden_size"],
                "vocab_size": V}
    if fmt == "eagle":
        # "bias" is fc's: the Vicuna/LLaMA-2 heads leave it out and carry fc.bias (vLLM reads an explicit true as
        # attention biases too), the LLaMA-3 heads say false and have none
        return llama_layer_config(c, V, **({} if c.get("fc_bias", True) else {"bias": False}))
    aux = list(c["aux_layers"])
    if fmt == "eagle3":
        return llama_layer_config(c, V, architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=c["draft_vocab"],
                                  eagle_config={"eagle_aux_hidden_state_layer_ids": aux})
    layer = llama_layer_config(c, V, draft_vocab_size=c["draft_vocab"])
    layer.pop("torch_dtype")
    return {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
            "speculators_version": "0.1.0", "transformer_layer_config": layer, "draft_vocab_size": c["draft_vocab"],
            "target_hidden_size": int(c.get("target_hidden_size") or c["hidden_size"]),
            "norm_before_residual": bool(c.get("norm_before_residual", False)),
            "eagle_aux_hidden_state_layer_ids": aux, "torch_dtype": "float16",
            "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                   "proposal_methods": [{"proposal_type": "greedy",
                                                         "speculative_tokens": speculative_tokens}],
                                   "verifier": {"name_or_path": tgt.get("spec") or tgt.get("name"),
                                                "architectures": list(tgt.get("architectures") or [])}}}


def readme(card: dict, fmt: str, name: str) -> str:
    """The exported head's model card: what it is, how it was made, what it measured."""
    tr, acc, tgt = card.get("training") or {}, card.get("accuracy") or {}, card.get("target") or {}
    serving = acc.get("serving") or {}
    lines = [f"# {name}", "", f"A {card['kind']} drafter head for `{tgt.get('spec') or tgt.get('name')}`, "
             f"written in the {fmt} layout by the Decoding Workbench.", ""]
    if tr:
        lines += ["## Training", "", f"- command: `{tr.get('command', '')}`",
                  f"- responses: {tr.get('samples')}, tokens: {tr.get('tokens')}, steps: {tr.get('steps')}, "
                  f"batch size: {tr.get('batch_size')}, unrolled steps: {tr.get('unroll')}", ""]
    if card.get("origin"):
        o = card["origin"]
        lines += ["## Origin", "", f"Imported from `{o.get('source')}` ({o.get('format')} layout).", ""]
    lines += ["## Measured acceptance", ""]
    if acc.get("top1"):
        lines.append("- held-out top-1 per draft position: " + ", ".join(f"{a:.3f}" for a in acc["top1"] if a is not None))
    if serving:
        lines.append(f"- serving on {serving.get('prompts')} held-out prompts: tau {serving.get('tau')} "
                     "(tokens per target forward, bonus token included)")
    if not acc.get("top1") and not serving:
        lines.append("- none recorded on the head's card")
    return "\n".join(lines) + "\n"


def export_head(ref: str, fmt: str, out: str | Path, lm_head: Callable[[], torch.Tensor] | None = None) -> Path:
    """Write head `ref` (a name or a directory) in layout `fmt` to the new directory `out`, atomically."""
    if fmt not in EXPORTS:
        raise HeadError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORTS)}")
    path = find_head(ref, None, "eagle3")
    card = read_card(path)
    tensors = export_tensors(path, card, fmt, lm_head)
    config = export_config(card, fmt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HeadError(f"{out} exists and is not empty; pick a new directory")
    tmp = out.parent / f".{out.name}.exporting-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=False)
        if fmt == "medusa":
            save_file(tensors, str(tmp / "medusa_lm_head.safetensors"))
            torch.save(tensors, str(tmp / "medusa_lm_head.pt"))  # the file the reference loaders read
        else:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(readme(card, fmt, path.name))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["EXPORTS", "build_head", "export_head", "fetch_source", "import_head", "read_weights", "CARD"]
