"""Train a drafter on the target's own outputs: EAGLE, Medusa and Hydra heads, or a distilled draft model.

`train(TrainConfig(...))` runs four stages, each with progress and an ETA, each
resumable (its output is saved in the out dir before the next one starts):

1. generate  self-distillation data: the target's own greedy responses to a
             prompt set (the project's workbench/suites/train_prompts.jsonl, or
             the user's JSONL), batched; past one response per prompt, further
             responses are sampled (temperature 0.7) for variety; with
             `self_prompts=n` the target also writes n instructions of its own
             (Magpie: it continues its chat template's opening of a user turn)
             and answers each once, greedily;
2. features  one teacher-forced target forward per sequence: its final hidden
             states f_t (fp16) and its argmax a_t (the token the target would
             put at t + 1: what a greedy verifier accepts); for a head with
             fused features (`fuse`) also a low and a middle layer's
             outputs, which the head projects onto f_t (EAGLE-3);
3. train     AdamW on the held-in sequences, loss on response positions only:
             medusa  head k: cross-entropy of LM-head(head_k(f_t)) against a_{t+k+1}
             hydra   the same, head k also reading e(x_{t+1..t+k+1})
             eagle   (f_t, x_{t+1}) -> f^_{t+1}: smooth-L1 to f_{t+1} plus
                     cross-entropy of LM-head(f^_{t+1}) against a_{t+1}
                     (EAGLE's two losses; features get uniform noise, as the paper)
             eagle3  the published EAGLE-3: fc over three target layers (their
                     states are extracted in stage 2), its own LM head over a
                     draft vocabulary (the `vocab_trim` tokens the target produced
                     most often; d2t/t2d map it), cross-entropy against a_{t+j}
                     at each of `unroll` (default 3) draft positions, each after
                     the first on the head's own previous output (training-time test)
             draft   a few-layer copy of the target (its embedding, LM head and
                     evenly spaced layers) trained by KL to the target's
                     next-token distribution (knowledge distillation);
             pard    a PARD parallel draft (the target's evenly spaced layers, or a
                     distilled draft's, over its embedding and LM head, plus a
                     mask embedding) trained to predict k tokens from the
                     context and k - 1 masks (workbench.train_pard);
             checkpoints every `checkpoint_every` steps (`resume=True` continues);
4. evaluate  held-out top-1/top-5 per head (per draft position) and, for heads,
             what serving sees: tau and alpha per position of the real method on a
             few held-out prompts.

A `training` record in the run store follows the whole thing (curves, accuracy,
data sizes, timings), which the app's Train tab and notebook 05 draw.

Vocabulary trimming (`vocab_trim=k`): the drafter may only propose the k tokens
the target produced most often in the generated responses (VocabTrim /
FR-Spec); its LM head shrinks to those rows. Still lossless.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from store import RunStore

from .config import ConfigError, DecodeConfig
from .engine import generate
from .heads import (base_name, default_head_name, fingerprint, make_dflash_head, make_head, make_pard_head, save_head,
                    user_heads_dir)
from .heads.lm_head import DraftVocabLM, HeadLM, topk_hits as _topk_hits
from .kv_cache import eagle3_layers, layer_states, logits_from_hidden
from .metrics import acceptance_by_position
from .models import load_model
from .record import environment
from .train_block import dflash_losses
from .train_pard import pard_losses
from .train_config import TRAIN_PROMPTS, TrainConfig  # noqa: F401  (re-exported)

Progress = Callable[[str, int, int, str], None]  # (stage, done, total, message)


@dataclass
class TrainResult:
    out_dir: str
    card: dict
    training_id: str | None
    accuracy: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


EVAL_UNROLL = 3  # eagle heads are evaluated at draft positions 1-3 (the first teacher-forced)


def read_prompts(path: str | Path | None) -> list[Any]:
    """Prompts from a JSONL file: each line {"prompt": text}, {"messages": [...]} or {"prompt_ids": [ids]}
    (already tokenised, used as they are) -> text, messages or token ids."""
    p = Path(path) if path else TRAIN_PROMPTS
    out = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read prompts {p}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ConfigError(f"{p}:{i}: not a JSON line") from None
        prompt = (row.get("messages") or row.get("prompt") or row.get("text") or row.get("prompt_ids")
                  if isinstance(row, dict) else None)
        if not prompt or not isinstance(prompt, (str, list)):
            raise ConfigError(f"{p}:{i}: needs a 'prompt' (text), 'messages' (chat) or 'prompt_ids' (token ids) field")
        out.append(prompt)
    if not out:
        raise ConfigError(f"{p} holds no prompts")
    return out


class _Bar:
    """A stage's progress: a tqdm bar on the terminal and/or a callback, with the ETA in its message."""

    def __init__(self, stage: str, total: int, progress: Progress | None, quiet: bool) -> None:
        self.stage, self.total, self.progress = stage, total, progress
        self.bar = None
        if not quiet:  # (imported only here: tqdm.auto warns in a notebook without ipywidgets)
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=stage, unit="it", leave=True)
        self.t0, self.done = time.perf_counter(), 0

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note)
        if self.progress is not None:
            el = time.perf_counter() - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else float("nan")
            self.progress(self.stage, self.done, self.total, f"{note} ETA {eta:.0f} s" if eta == eta else note)

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.t0


# ---------------------------------------------------------------- 1. generate

@torch.inference_mode()
def generate_responses(lm, prompts: list[Any], n: int, max_new_tokens: int, batch: int, seed: int,
                       bar: _Bar, done: list[dict] | None = None,
                       save: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """n self-distilled samples [{"prompt_ids", "response_ids"}]: one greedy response per prompt, then
    sampled ones (T = 0.7). `done`: samples already generated (continued from there); `save` is called
    after every batch, so an interrupted generation resumes where it stopped."""
    pad = _pad_id(lm)
    order = [(i % len(prompts), i >= len(prompts)) for i in range(n)]
    out: list[dict] = list(done or [])
    for b in range(len(out), n, batch):
        chunk = order[b:b + batch]
        encoded = [list(prompts[i]) if _token_ids(prompts[i]) else lm.encode_prompt(prompts[i]) for i, _ in chunk]
        for sampled in (False, True):
            rows = [(e, c) for e, c in zip(encoded, chunk) if c[1] == sampled]
            if not rows:
                continue
            width = max(len(e) for e, _ in rows)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e, _ in rows], device=lm.device)  # left padding
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e, _ in rows], device=lm.device)
            torch.manual_seed(seed * 1_000_003 + b)  # each batch's samples are reproducible, also when resumed
            gen = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=sampled, temperature=0.7 if sampled else None, top_p=None, top_k=None,
                                    pad_token_id=pad, eos_token_id=list(lm.eos_token_ids) or None)
            for (e, _), row in zip(rows, gen[:, width:].tolist()):
                resp = []
                for t in row:
                    resp.append(t)
                    if t in lm.eos_token_ids:
                        break
                out.append({"prompt_ids": e, "response_ids": resp})
        if save is not None:
            save(out)
        bar.update(len(chunk), f"{sum(len(r['response_ids']) for r in out)} tokens")
    return out


PROMPT_TOKENS = 64  # the most tokens of one instruction the target writes for itself


@torch.inference_mode()
def write_prompts(lm, n: int, batch: int, seed: int, bar: _Bar, done: list[str] | None = None,
                  save: Callable[[list[str]], None] | None = None) -> list[str]:
    """n distinct instructions written by the target itself (Magpie): its chat template up to
    where a user's message starts, continued by sampling (T = 1, top-p 0.95) until the turn ends.
    An instruction cut off at PROMPT_TOKENS ends at its last full sentence; empty and repeated
    ones are dropped. `done`/`save` resume as in `generate_responses`."""
    if not lm.has_chat_template:
        raise ConfigError(f"self-written prompts need a chat model: '{lm.spec}' has no chat template "
                          "(give --prompts FILE.jsonl instead)")
    tok = lm.tokenizer
    marker = "\u2063PROMPT\u2063"
    opening = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    if marker not in opening:
        raise ConfigError(f"the chat template of '{lm.spec}' does not show a user message; cannot write prompts")
    prefix = list(tok(opening.split(marker)[0], add_special_tokens=False)["input_ids"])
    pad = _pad_id(lm)
    stops = set(lm.eos_token_ids)
    out = list(done or [])
    seen = {_prompt_key(p) for p in out}
    idle = 0  # batches in a row that added nothing new
    while len(out) < n:
        torch.manual_seed(seed * 1_000_003 + 7_919 * len(out) + idle)  # reproducible, also when resumed
        ids = torch.tensor([prefix] * batch, device=lm.device)
        gen = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=PROMPT_TOKENS,
                                do_sample=True, temperature=1.0, top_p=0.95, top_k=None, pad_token_id=pad,
                                eos_token_id=list(stops) or None)
        added = 0
        for row in gen[:, len(prefix):].tolist():
            ended = next((i for i, t in enumerate(row) if t in stops), None)
            text = tok.decode(row[:ended], skip_special_tokens=True).strip()
            if ended is None:  # cut off: keep it up to its last full sentence
                cut = max(text.rfind(c) for c in ".?!\n")
                text = text[:cut + 1].strip() if cut > 0 else ""
            key = _prompt_key(text)
            if len(key) < 8 or key in seen or len(out) >= n:
                continue
            seen.add(key)
            out.append(text)
            added += 1
        idle = 0 if added else idle + 1
        if idle >= 20:
            raise ConfigError(f"'{lm.spec}' wrote only {len(out)} distinct prompts of the {n} asked for; "
                              "ask for fewer, or give --prompts FILE.jsonl")
        if save is not None:
            save(out)
        bar.update(added, f"{len(out)} prompts")
    return out


def _pad_id(lm) -> int:
    """The id batched generation pads with: the tokenizer's pad token, else the first end-of-sequence token."""
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (lm.eos_token_ids[0] if lm.eos_token_ids else 0)


def _prompt_key(text: str) -> str:
    """What makes two self-written prompts the same: their words, lower-cased."""
    return " ".join(text.lower().split())


def _token_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) and not isinstance(t, bool)
                                                             for t in prompt)


# ---------------------------------------------------------------- 2. features

@torch.inference_mode()
def extract_features(lm, samples: list[dict], bar: _Bar, batch: int = 8,
                     layers: bool | tuple[int, ...] = False) -> list[dict]:
    """Per sequence: tokens (T,), final hidden states f (T, H) fp16, argmax a (T,), and where the response starts;
    with `layers`, also g (T, H k) fp16: the outputs of the k feature layers (`cache.feature_layers`), or of
    the layers a tuple names (an EAGLE-3 head's three)."""
    out = []
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["prompt_ids"]) + len(samples[i]["response_ids"]))
    feats: dict[int, dict] = {}
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        seqs = [samples[i]["prompt_ids"] + samples[i]["response_ids"] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=lm.device)  # right padding
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=lm.device)
        res = lm.model.get_decoder()(input_ids=ids, attention_mask=mask,
                                     **({"output_hidden_states": True} if layers else {}))
        hidden = res.last_hidden_state  # (B, T, H)
        extra = layer_states(res, lm.model.config, layers if isinstance(layers, tuple) else None) if layers else None
        argmax = logits_from_hidden(lm.model, hidden).argmax(-1)  # (B, T)
        for r, (i, s) in enumerate(zip(idx, seqs)):
            feats[i] = {"tokens": torch.tensor(s, dtype=torch.int32), "f": hidden[r, :len(s)].to("cpu", torch.float16),
                        "a": argmax[r, :len(s)].to("cpu", torch.int32), "start": len(samples[i]["prompt_ids"])}
            if extra is not None:
                feats[i]["g"] = extra[r, :len(s)].to("cpu", torch.float16)
        bar.update(len(idx))
    for i in range(len(samples)):
        out.append(feats[i])
    return out


def frequent_tokens(data: list[dict], k: int, vocab_size: int) -> torch.Tensor:
    """The k token ids the target produced most often (its argmax over response positions)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for d in data:
        counts += torch.bincount(d["a"][d["start"] - 1:].long(), minlength=vocab_size)[:vocab_size]
    return counts.topk(min(k, vocab_size)).indices.sort().values


# ---------------------------------------------------------------- 3. train

def _batch(data: list[dict], idx: list[int], device) -> dict[str, torch.Tensor]:
    T = max(len(data[i]["tokens"]) for i in idx)
    B, H = len(idx), data[idx[0]]["f"].shape[1]
    f = torch.zeros(B, T, H)
    tok = torch.zeros(B, T, dtype=torch.long)
    a = torch.zeros(B, T, dtype=torch.long)
    resp = torch.zeros(B, T, dtype=torch.bool)  # positions t whose next token is a response token
    for r, i in enumerate(idx):
        d, n = data[i], len(data[i]["tokens"])
        f[r, :n], tok[r, :n], a[r, :n] = d["f"].float(), d["tokens"].long(), d["a"].long()
        resp[r, d["start"] - 1:n] = True
    out = {"f": f.to(device), "tok": tok.to(device), "a": a.to(device), "resp": resp.to(device),
           "len": torch.tensor([len(data[i]["tokens"]) for i in idx], device=device)}
    if "g" in data[idx[0]]:  # the feature layers' outputs (a head with fused features)
        g = torch.zeros(B, T, data[idx[0]]["g"].shape[1])
        for r, i in enumerate(idx):
            g[r, :len(data[i]["tokens"])] = data[i]["g"].float()
        out["g"] = g.to(device)
    return out


def _shifted(x: torch.Tensor, k: int) -> torch.Tensor:
    """x[:, t + k] at t (zeros past the end)."""
    out = torch.zeros_like(x)
    if k < x.shape[1]:
        out[:, : x.shape[1] - k] = x[:, k:]
    return out


def head_losses(kind: str, head, lmh: "HeadLM", embed, b: dict, noise: float = 0.0,
                weights: tuple[float, float] = (1.0, 0.1), unroll: int = 1):
    """(loss, {name: value}, per-position (correct top1, correct top5, count) lists) on one batch.

    unroll (eagle): draft positions trained, the first teacher-forced, each next one on the head's own
    predicted features (see `_eagle_losses`).
    """
    if kind == "dflash":  # the block head (workbench.train_block)
        return dflash_losses(head, lmh, embed, b)
    if kind == "pard":  # the parallel draft model (workbench.train_pard)
        return pard_losses(head, lmh, embed, b)
    f, tok, a, resp = b["f"], b["tok"], b["a"], b["resp"]
    B, T, _ = f.shape
    stats, parts = [], {}
    if kind in ("medusa", "hydra"):
        f = _committed(head, b)
        K = len(head.blocks) if kind == "medusa" else len(head.inp)
        if kind == "medusa":
            z = head(f)  # (B, T, K, H)
        else:
            embs = torch.stack([embed(_shifted(tok, k + 1)) for k in range(K)], dim=2)  # e(x_{t+1..t+K}) (B,T,K,H)
            z = head(f, embs)
        loss = 0.0
        for k in range(K):
            ok = resp & (torch.arange(T, device=f.device)[None] + k + 1 < b["len"][:, None])
            logits = lmh.logits(z[:, :, k][ok])  # (N, k)
            labels = lmh.labels(_shifted(a, k + 1)[ok])  # a_{t+k+1}: the target's token at t + k + 2
            lk = F.cross_entropy(logits, labels, ignore_index=-100)
            loss = loss + lk * (0.8 ** k)  # Medusa's decaying head weights
            parts[f"head{k + 1}_loss"] = float(lk.detach())
            stats.append(_topk_hits(logits, labels))
        return loss, parts, stats
    if kind == "eagle3":
        return _eagle3_losses(head, lmh, embed, b, unroll)
    return _eagle_losses(head, lmh, embed, b, noise, weights, unroll)


def _committed(head, b: dict, noise: float = 0.0) -> torch.Tensor:
    """A head's input at the batch's committed positions, as `committed` gives it when drafting: the final
    states (with uniform noise of +-noise, EAGLE's), fused with the feature layers' for a fused head."""
    f = b["f"]
    if noise:
        f = f + (torch.rand_like(f) - 0.5) * 2 * noise
    return head.committed(torch.cat([f, b["g"]], dim=-1)) if head.fused else f


def _eagle_losses(head, lmh: "HeadLM", embed, b: dict, noise: float, weights: tuple[float, float], unroll: int):
    """EAGLE's feature-regression and token losses over `unroll` draft positions (`eagle_unroll`); later
    positions weigh 0.8^(j-1)."""
    f, a, resp = b["f"], b["a"], b["resp"]
    col = torch.arange(f.shape[1], device=f.device)
    feats = _committed(head, b, noise)
    loss, parts, stats = 0.0, {}, []
    for j, pred in enumerate(eagle_unroll(head, feats, b["tok"], embed, unroll), start=1):
        ok = resp & (col[None] + j < b["len"][:, None])
        f_loss = F.smooth_l1_loss(pred[ok], _shifted(f, j)[ok])
        logits = lmh.logits(pred[ok])
        labels = lmh.labels(_shifted(a, j)[ok])
        t_loss = F.cross_entropy(logits, labels, ignore_index=-100)
        suffix = "" if j == 1 else f"_{j}"
        parts.update({f"feature_loss{suffix}": float(f_loss.detach()), f"token_loss{suffix}": float(t_loss.detach())})
        stats.append(_topk_hits(logits, labels))
        loss = loss + (f_loss * weights[0] + t_loss * weights[1]) * 0.8 ** (j - 1)
    return loss, parts, stats


def _eagle3_losses(head, lmh: DraftVocabLM, embed, b: dict, unroll: int):
    """EAGLE-3's token loss over `unroll` draft positions (its training-time test: each position after the
    first reads the head's own previous output, `eagle_unroll`), labels the target's own tokens as rows of
    the draft vocabulary (a token outside it is ignored); no feature regression. Positions weigh 0.8^(j-1)."""
    a, resp = b["a"], b["resp"]
    col = torch.arange(a.shape[1], device=a.device)
    feats = head.committed(torch.cat([b["f"], b["g"]], dim=-1))  # h = fc([low; mid; high]) (B, T, H)
    loss, parts, stats = 0.0, {}, []
    for j, pred in enumerate(eagle_unroll(head, feats, b["tok"], embed, unroll), start=1):
        ok = resp & (col[None] + j < b["len"][:, None])
        logits = lmh.logits(pred[ok])  # (N, Vd)
        labels = lmh.labels(_shifted(a, j)[ok])
        t_loss = F.cross_entropy(logits, labels, ignore_index=-100)
        parts["token_loss" + ("" if j == 1 else f"_{j}")] = float(t_loss.detach())
        stats.append(_topk_hits(logits, labels))
        loss = loss + t_loss * 0.8 ** (j - 1)
    return loss, parts, stats


def eagle_unroll(head, feats: torch.Tensor, tok: torch.Tensor, embed, steps: int) -> list[torch.Tensor]:
    """The EAGLE head's predicted features at draft positions 1..steps for every pair t, each (B, T, H).

    Step 1 is teacher-forced: pair t = (f_t, x_{t+1}) at position t + 1 predicts f^_{t+1} (whose LM-head
    logits give the target's token after x_{t+1}). Step j >= 2 reads the head's own previous prediction, as
    drafting does: pair t = (f^_{t+j-1}, x_{t+j}) at position t + j, attending to the teacher-forced pairs up
    to t (the committed context when drafting from root x_{t+1}) and to pair t of the steps before it; it
    predicts f_{t+j} (EAGLE-3's training-time test, for a chain).
    """
    B, T, _ = feats.shape
    col = torch.arange(T, device=feats.device)
    pos = torch.arange(1, T + 1, device=feats.device)[None].expand(B, T)
    pred, (keys, values) = head(feats, embed(_shifted(tok, 1)), pos)  # (B, T, H)
    out = [pred]
    eye = torch.eye(T, dtype=torch.bool, device=feats.device)
    for j in range(2, steps + 1):
        mask = torch.cat([col[None] <= col[:, None]] + [eye] * (j - 1), dim=1)[None]  # (1, T, j T)
        pred, (k, v) = head(pred, embed(_shifted(tok, j)), pos + j - 1, mask=mask, past=(keys, values))
        keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        out.append(pred)
    return out


def draft_losses(model, lmh: "HeadLM", b: dict):
    """KL(target || draft) of the next-token distribution on response positions, plus top-k hits.

    The draft keeps the target's (frozen) LM head, so both distributions come from the same rows of it:
    the target's from its stored features, the draft's from its own final hidden states; with a trimmed
    vocabulary the KL runs over the kept rows (the draft model itself keeps its full head).
    """
    f, tok, resp = b["f"], b["tok"], b["resp"]
    mask = torch.arange(tok.shape[1], device=tok.device)[None] < b["len"][:, None]
    hidden = model.get_decoder()(input_ids=tok, attention_mask=mask.long()).last_hidden_state  # (B, T, H)
    ok = resp & mask
    with torch.no_grad():
        p = lmh.logits(f[ok]).log_softmax(-1)  # (N, k): the target's own distribution
    q = lmh.logits(hidden[ok].float()).log_softmax(-1)  # (N, k)
    kl = F.kl_div(q, p, log_target=True, reduction="batchmean")
    return kl, {"kl": float(kl.detach())}, [_topk_hits(q.detach(), p.argmax(-1))]


def make_draft_model(lm, layers: int):
    """A few-layer copy of the target: its config with `layers` decoder layers, initialised from evenly spaced
    target layers (first and last included), the target's embedding, final norm and LM head."""
    cfg = copy.deepcopy(lm.model.config)
    n = cfg.num_hidden_layers
    picks = sorted({round(i * (n - 1) / max(layers - 1, 1)) for i in range(layers)}) if layers > 1 else [n - 1]
    cfg.num_hidden_layers = len(picks)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in picks]
    model = type(lm.model)(cfg)
    src = lm.model.state_dict()
    dst = {}
    for k in model.state_dict():
        if ".layers." in k:
            pre, rest = k.split(".layers.", 1)
            i, tail = rest.split(".", 1)
            dst[k] = src[f"{pre}.layers.{picks[int(i)]}.{tail}"]
        else:
            dst[k] = src[k]
    model.load_state_dict(dst)
    model.config.workbench_source_layers = picks
    return model.float()


def train(cfg: TrainConfig, progress: Progress | None = None, quiet: bool = False, db: str | None = None) -> TrainResult:
    """Run the whole pipeline (see the module docstring); returns where the drafter went and its accuracy."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    lm = load_model(cfg.target, device=cfg.device)
    out = Path(cfg.out) if cfg.out else (user_heads_dir() / default_head_name(lm, cfg.kind) if cfg.kind != "draft"
                                         else user_heads_dir().parent / "drafts" / f"{default_head_name(lm, 'distilled')}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "training"
    ckpt_dir.mkdir(exist_ok=True)
    if not cfg.resume:
        for p in ckpt_dir.glob("*"):
            p.unlink()
    store, tid = _open_record(cfg, lm, out, db, environment(lm))
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        # 1. generate
        # (kept in the out dir: a resumed or larger training continues from them; a smaller one uses a prefix)
        def stage(name: str, timing: str, path: Path, n: int, make: Callable) -> list:
            """The first n items of a stage's output kept at `path`, the missing ones made first by
            make(bar, done, save) (which saves after every batch, so an interrupted stage resumes)."""
            done = json.loads(path.read_text()) if path.exists() else []
            if len(done) < n:
                bar = _Bar(name, n, progress, quiet)
                bar.update(len(done))
                done = make(bar, done, lambda items: _write_json(path, items))
                timings[timing] = timings.get(timing, 0.0) + bar.close()
            return done[:n]

        samples = stage("generate", "generate_s", ckpt_dir / "samples.json", cfg.samples,
                        lambda bar, done, save: generate_responses(
                            lm, read_prompts(cfg.prompts), cfg.samples, cfg.max_new_tokens, cfg.gen_batch, cfg.seed,
                            bar, done=done, save=save))
        if cfg.self_prompts:  # the target's own instructions, each answered once (greedy)
            own = stage("prompts", "prompts_s", ckpt_dir / "self_prompts.json", cfg.self_prompts,
                        lambda bar, done, save: write_prompts(lm, cfg.self_prompts, cfg.gen_batch, cfg.seed, bar,
                                                              done=done, save=save))
            samples = samples + stage("generate (own prompts)", "generate_s", ckpt_dir / "self_samples.json", len(own),
                                      lambda bar, done, save: generate_responses(
                                          lm, own, len(own), cfg.max_new_tokens, cfg.gen_batch, cfg.seed, bar,
                                          done=done, save=save))
        # 2. features
        feats_path = ckpt_dir / "features.pt"
        data = torch.load(feats_path) if feats_path.exists() else []
        # the feature layers a head reads: EAGLE-3's three; a fused head's (a dflash head always fuses)
        layers = (eagle3_layers(lm.model.config) if cfg.kind == "eagle3"
                  else cfg.kind == "dflash" or cfg.kind != "draft" and cfg.fuse)
        width = lm.model.config.hidden_size * (len(layers) if isinstance(layers, tuple) else 2)
        if layers and data and ("g" not in data[0] or data[0]["g"].shape[1] != width):
            data = []  # features saved without these layers: extract again
        # features are kept for the samples they were extracted from (a resumed training with other
        # --samples or --self-prompts has other samples at the same places)
        same = next((i for i, (d, smp) in enumerate(zip(data, samples))
                     if d["tokens"].tolist() != smp["prompt_ids"] + smp["response_ids"]), min(len(data), len(samples)))
        data = data[:same]
        if len(data) < len(samples):
            bar = _Bar("features", len(samples), progress, quiet)
            bar.update(len(data))
            data = data + extract_features(lm, samples[len(data):], bar, layers=layers)
            timings["features_s"] = bar.close()
            torch.save(data, feats_path)
        data = data[: len(samples)]
        rng = random.Random(cfg.seed)
        order = list(range(len(data)))
        rng.shuffle(order)
        n_hold = max(1, int(len(order) * cfg.holdout))
        held, train_idx = order[:n_hold], order[n_hold:] or order[:1]
        sizes = {"prompts": len({tuple(s["prompt_ids"]) for s in samples}), "self_prompts": cfg.self_prompts,
                 "responses": len(samples),
                 "tokens": sum(len(s["response_ids"]) for s in samples),
                 "train_responses": len(train_idx), "heldout_responses": len(held),
                 "heldout_tokens": sum(len(samples[i]["response_ids"]) for i in held)}
        _update(store, tid, data=sizes)
        # 3. train
        trim = 0 < cfg.vocab_trim < lm.vocab_size  # a k at least the vocabulary's size trims nothing
        vocab = frequent_tokens([data[i] for i in train_idx], cfg.vocab_trim, lm.vocab_size) if trim else None
        # (eagle3: its draft vocabulary, the LM head it trains; none: the whole vocabulary)
        result = _train_loop(cfg, lm, data, train_idx, held, vocab, ckpt_dir, progress, quiet, store, tid, timings)
        drafter, curves, accuracy = result
        # 4. save (+ evaluate)
        training = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "resume", "store", "device")},
                    "samples": len(samples), "tokens": sizes["tokens"], "command": cfg.command(),
                    "train_s": round(timings.get("train_s", 0.0), 1)}
        if cfg.kind == "draft":
            card = _save_draft(drafter, lm, out, training, accuracy)
        else:
            save_head(drafter, out, lm, training=training, accuracy=accuracy)
            card = json.loads((out / "card.json").read_text())
            if cfg.evaluate_prompts:
                t0 = time.perf_counter()
                accuracy["serving"] = serving_acceptance(lm, cfg.kind, out, [samples[i] for i in held],
                                                         cfg.evaluate_prompts, cfg.max_new_tokens)
                timings["evaluate_s"] = time.perf_counter() - t0
                card["accuracy"] = accuracy
                (out / "card.json").write_text(json.dumps(card, indent=1, allow_nan=False))
        timings["total_s"] = time.perf_counter() - t_all
        _finish(store, tid, "finished", accuracy=accuracy, timings=timings, curves=curves)
        return TrainResult(out_dir=str(out), card=card, training_id=tid, accuracy=accuracy, timings=timings)
    except KeyboardInterrupt:
        _finish(store, tid, "interrupted", error="interrupted; continue with --resume", timings=timings)
        raise
    except BaseException as e:
        _finish(store, tid, "failed", error=f"{type(e).__name__}: {e}", timings=timings)
        raise


def _train_loop(cfg, lm, data, train_idx, held, vocab, ckpt_dir, progress, quiet, store, tid, timings):
    device = lm.device
    embed = lm.model.get_input_embeddings()
    lmh = HeadLM(lm.model, None if vocab is None else vocab.to(device), dtype=torch.float32)  # frozen rows
    if cfg.kind == "eagle3":  # its own LM head over the draft vocabulary, trained with the rest
        model = make_head("eagle3", lm.model, vocab=vocab).to(device).float()
        lmh = DraftVocabLM(model)
        params = list(model.parameters())
    elif cfg.kind == "draft":
        model = make_draft_model(lm, cfg.layers).to(device)
        model.get_input_embeddings().requires_grad_(False)
        model.get_output_embeddings().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        model = (make_dflash_head(lm.model, block=cfg.heads, layers=cfg.layers) if cfg.kind == "dflash" else
                 make_pard_head(lm.model, block=cfg.heads, layers=cfg.layers, source=_distilled(cfg, lm))
                 if cfg.kind == "pard" else
                 make_head(cfg.kind, lm.model, cfg.heads, fuse=cfg.fuse)).to(device).float()
        if vocab is not None:
            model.set_vocab(vocab)
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.steps // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    curves: dict[str, list] = {}
    step = 0
    ckpt = ckpt_dir / "checkpoint.pt"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, curves = state["step"], state["curves"]
    rng = random.Random(cfg.seed + step)
    bar = _Bar("train", cfg.steps, progress, quiet)
    bar.update(step)
    model.train()
    while step < cfg.steps:
        idx = rng.sample(train_idx, min(cfg.batch_size, len(train_idx)))
        b = _batch(data, idx, device)
        if cfg.kind == "draft":
            loss, parts, _ = draft_losses(model, lmh, b)
        else:
            loss, parts, _ = head_losses(cfg.kind, model, lmh, embed, b, noise=0.1 if cfg.kind == "eagle" else 0.0,
                                         weights=(cfg.feature_weight, cfg.token_weight), unroll=cfg.unroll)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        for k, v in {"loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0]}.items():
            curves.setdefault(k, []).append([step, round(v, 6)])
        bar.update(1, f"loss {float(loss.detach()):.3f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step, "curves": curves}, ckpt)
            _update(store, tid, curves=curves)
    timings["train_s"] = bar.close()
    model.eval()
    accuracy = evaluate(cfg.kind, model, lmh, embed, data, held)
    return model, curves, accuracy


@torch.no_grad()
def evaluate(kind, model, lmh, embed, data, held) -> dict:
    """Held-out top-1 / top-5 per head (per draft position), teacher-forced."""
    hits: list[list[int]] = []
    for s in range(0, len(held), 8):
        b = _batch(data, held[s:s + 8], embed.weight.device)
        stats = draft_losses(model, lmh, b)[2] if kind == "draft" else \
            head_losses(kind, model, lmh, embed, b, unroll=EVAL_UNROLL)[2]
        for k, st in enumerate(stats):
            while len(hits) <= k:
                hits.append([0, 0, 0])
            for j in range(3):
                hits[k][j] += st[j]
    return {"top1": [round(h[0] / h[2], 4) if h[2] else None for h in hits],
            "top5": [round(h[1] / h[2], 4) if h[2] else None for h in hits],
            "positions": [h[2] for h in hits]}


def serving_acceptance(lm, kind: str, head_dir: Path, held: list[dict], n: int, max_new_tokens: int) -> dict:
    """What serving sees: tau and alpha per draft position of the method on up to n held-out prompts (greedy)."""
    steps, new, forwards = [], 0, 0
    for s in held[:n]:
        # the whole tree (a dflash head or a pard draft drafts its whole block: no sizing)
        params = {"head": str(head_dir)} | ({} if kind in ("dflash", "pard") else {"sizing": "fixed"})
        out = generate(lm, kind, s["prompt_ids"], params=params,
                       decode=DecodeConfig(max_new_tokens=min(64, max_new_tokens)))
        steps += out.trace.steps
        new += out.summary.new_tokens
        forwards += out.summary.target_forward_passes
    alpha = acceptance_by_position(steps)
    return {"tau": round(new / forwards, 3) if forwards else None, "prompts": min(n, len(held)),
            "alpha_by_position": [round(a, 4) if a == a else None for a in alpha]}


def _distilled(cfg, lm):
    """The distilled draft model a pard draft starts from (`--from`; None: a smaller copy of the target), checked
    to be distilled from this target (its token embedding) and to have the layers asked for."""
    if not cfg.init_from:
        return None
    loaded = load_model(cfg.init_from, device=cfg.device)
    if fingerprint(loaded) != fingerprint(lm):  # a distilled draft keeps the target's embedding
        raise ConfigError(f"--from {cfg.init_from} was not distilled from {lm.spec} (another token embedding); "
                          f"make one with `workbench train --kind draft --target {lm.spec}`")
    draft = loaded.model
    if draft.config.num_hidden_layers < cfg.layers:
        raise ConfigError(f"--from {cfg.init_from} has {draft.config.num_hidden_layers} layers, fewer than "
                          f"--layers {cfg.layers}")
    return draft


def _save_draft(model, lm, out: Path, training: dict, accuracy: dict) -> dict:
    """A distilled draft model: an ordinary model directory (use it as a draft spec), with the target's tokenizer."""
    model = model.to(lm.dtype if lm.dtype.is_floating_point else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    lm.tokenizer.save_pretrained(out)
    card = {"kind": "draft", "target": {"name": base_name(lm), "spec": lm.spec, "fingerprint": fingerprint(lm)},
            "layers": model.config.num_hidden_layers, "params": sum(p.numel() for p in model.parameters()),
            "training": training, "accuracy": accuracy}
    (out / "card.json").write_text(json.dumps(card, indent=1, allow_nan=False))
    return card


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _open_record(cfg, lm, out, db, env):
    if not cfg.store:
        return None, None
    store = RunStore(db) if db else RunStore()
    tid = store.start_training(kind=cfg.kind, target=lm.spec, out_dir=str(out),
                               config={k: v for k, v in asdict(cfg).items() if k != "store"}, env=env)
    return store, tid


def _update(store, tid, **fields) -> None:
    if store is not None:
        store.update_training(tid, **fields)


def _finish(store, tid, status: str, error: str | None = None, *, accuracy=None, timings=None, curves=None) -> None:
    if store is None:
        return
    if curves is not None:
        store.update_training(tid, curves=curves)
    store.finish_training(tid, status, error, accuracy=accuracy, timings=timings)
