"""Self-speculative decoding by layer skipping (Draft & Verify, Zhang et al. 2024; SWIFT, Xia et al. 2024).

The draft is the target itself with some decoder layers skipped: a light view
of the model that shares every weight (a shallow copy whose `model.layers` is
an nn.ModuleList of the kept layers). Attention layers index the KV cache by
their own `layer_idx`, so the draft keeps its own DynamicCache built from the
full config (every layer_idx exists; skipped ones stay empty) through the
shared DraftModelRunner, and the engine verifies with all layers. Layer 0 is
never skipped (the cache's length is read from layer 0). Drafting stops early
when the draft's top probability falls below `threshold`.

`skip` is a comma list of layer indices ("4,5,6") or "auto":
1. calibration (once per model spec, cached in memory and, except for the
   in-process tiny-random models, in workbench.paths.cache_dir()): the full
   model greedily continues a few built-in prompts; each layer is ranked by the
   top-1 agreement of the view that skips it alone, and nested skip sets are
   built in that order. For each set the view's agreement and top probability
   at every continuation position are recorded;
2. decision (every run, cheap): the gated drafting loop is replayed on those
   positions for every set, with this run's max_draft and threshold, the
   measured cost of verifying n tokens (the target's cost profile, workbench.backend.profile)
   and of one draft forward (the profile of the most-skipping view,
   interpolated linearly in the number of skipped layers). The set with the
   best replayed tokens per second wins if it beats plain decoding by
   MIN_GAIN; otherwise "auto" chooses to draft nothing and every step is a
   plain target step. `choose_skip(target, ..., costs)` returns the decision with its numbers.
On the 30-layer SmolLM2-135M skipping 6 layers keeps about half of the top-1
agreement, and on a CPU verifying several tokens costs more than one, so
"auto" drafts little or nothing there; with a flat verification cost and
cheap drafts (a GPU's shape) it drafts.

Under sampling the draft samples from its warped distribution and passes it
as q, so verification is exact: lossless either way.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from .. import kv_cache as kv
from ..backend.profile import CostModel
from ..config import ConfigError
from ..paths import cache_dir, read_json, write_json
from ..draft import Draft
from .base import DraftContext, Drafter, Param, register
from .draft_model import DraftModelRunner
from .sizing import verify_cost as verify_clause

MIN_GAIN = 1.05  # "auto" drafts only when the replayed speedup beats plain decoding by this factor
CALIBRATION_VERSION = 1
CALIBRATION_TOKENS = 32  # greedy continuation length per calibration prompt
CALIBRATION_PROMPTS = (
    ("Summarize the following paragraph in one sentence: The city council met on Tuesday to discuss the new "
     "budget, which raises spending on schools and parks while cutting road maintenance."),
    "Write a short Python function that returns the factorial of a number.",
    "What is the capital of France, and why is it famous?",
)

_CALIBRATIONS: dict[str, Calibration] = {}
_LOCK = threading.Lock()


# ---------------------------------------------------------------- the skipping view


def parse_skip(value: str) -> tuple[int, ...] | None:
    """'auto' -> None; '3, 5,7' -> (3, 5, 7)."""
    text = value.strip().lower()
    if text == "auto":
        return None
    try:
        layers = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"skip must be 'auto' or a comma list of layer indices, got {value!r}") from None
    if not layers:
        raise ConfigError("skip lists no layer; give indices like '4,5,6' or 'auto'")
    if layers[0] < 1:
        raise ConfigError("skip cannot include layer 0 (and indices are >= 0)")
    return layers


def _check_skip(value: str) -> None:
    parse_skip(value)


def _decoder(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise ConfigError(f"layer_skip needs a decoder-only model with model.layers; {type(model).__name__} has none")
    return inner


def skip_view(model: nn.Module, skip: tuple[int, ...]) -> nn.Module:
    """A shallow copy of the causal LM running only the layers not in `skip` (weights shared, nothing copied)."""
    inner = _decoder(model)
    n = len(inner.layers)
    if any(i >= n for i in skip) or len(skip) >= n:
        raise ConfigError(f"skip {','.join(map(str, skip))} does not fit a model with {n} layers (0..{n - 1})")
    kept = [i for i in range(n) if i not in skip]
    inner_view = copy.copy(inner)
    inner_view._modules = dict(inner._modules)  # its own module table: the original keeps all layers
    inner_view._modules["layers"] = nn.ModuleList([inner.layers[i] for i in kept])
    types = getattr(inner.config, "layer_types", None)
    if types is not None:  # models that pick a layer's mask by its position in the loop (Gemma 3, Qwen 2)
        cfg = copy.copy(inner.config)
        cfg.layer_types = [types[i] for i in kept]
        inner_view.config = cfg
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["model"] = inner_view
    return view


def view_model(target: Any, skip: tuple[int, ...]) -> Any:
    """A LoadedModel-like object for the view (what DraftModelRunner and cost profiles take)."""
    spec = f"{target.spec}|skip={','.join(map(str, skip))}"
    return dataclasses.replace(target, spec=spec, model=skip_view(target.model, skip))


# ---------------------------------------------------------------- calibration and the decision


@dataclass
class Calibration:
    sets: list[tuple[int, ...]]  # nested skip sets, fewest skipped first
    hits: list[list[list[bool]]]  # [set][prompt][position]: the view's argmax equals the full model's
    confs: list[list[list[float]]]  # [set][prompt][position]: the view's top probability


@dataclass(frozen=True)
class SkipChoice:
    skip: tuple[int, ...]  # empty: draft nothing
    speedup: float  # replayed speedup over plain decoding (1.0 for nothing)
    agreement: float  # top-1 agreement of the chosen (or best considered) set
    why: str = ""  # with an empty skip chosen by cost: why no set pays here, with its numbers


@torch.inference_mode()
def calibration_sequences(target: Any) -> list[tuple[torch.Tensor, int]]:
    """Each calibration prompt (its last 64 tokens) followed by the full model's own greedy continuation of
    CALIBRATION_TOKENS tokens: [(ids (1, P + CALIBRATION_TOKENS), P)], what a cheaper view is compared with."""
    model = target.model
    seqs = []
    for text in CALIBRATION_PROMPTS:
        ids = target.encode_prompt(text)[-64:]
        cache = DynamicCache(config=model.config)
        out = kv.forward(model, torch.tensor([ids], device=target.device), cache, logits_to_keep=1)
        toks = list(ids)
        for _ in range(CALIBRATION_TOKENS):
            toks.append(int(out.logits[0, -1].argmax()))
            out = kv.forward(model, torch.tensor([toks[-1:]], device=target.device), cache, logits_to_keep=1)
        seqs.append((torch.tensor([toks], device=target.device), len(ids)))
    return seqs


@torch.inference_mode()
def calibrate(target: Any) -> Calibration:
    """Rank layers by the agreement of the view without each, then record nested sets (module docstring)."""
    model = target.model
    inner = _decoder(model)
    n = len(inner.layers)
    seqs = calibration_sequences(target)
    refs = [model(input_ids=x, use_cache=False).logits[0, p - 1:-1].argmax(-1) for x, p in seqs]  # (T,) each

    def measure(skip: tuple[int, ...]) -> tuple[list[list[bool]], list[list[float]]]:
        view = skip_view(model, skip)
        hits, confs = [], []
        for (x, p), ref in zip(seqs, refs):
            probs = view(input_ids=x, use_cache=False).logits[0, p - 1:-1].float().softmax(-1)  # (T, V)
            top, arg = probs.max(-1)
            hits.append((arg == ref).tolist())
            confs.append(top.tolist())
        return hits, confs

    def agreement(h: list[list[bool]]) -> float:
        return sum(map(sum, h)) / max(1, sum(map(len, h)))

    single = {i: agreement(measure((i,))[0]) for i in range(1, n)}
    ranked = sorted(single, key=lambda i: -single[i])
    cal = Calibration([], [], [])
    skip: tuple[int, ...] = ()
    for layer in ranked[: max(1, n // 2)]:
        skip = tuple(sorted(skip + (layer,)))
        h, c = measure(skip)
        cal.sets.append(skip)
        cal.hits.append(h)
        cal.confs.append(c)
    return cal


def calibration(target: Any) -> Calibration:
    """The cached calibration for this model spec and dtype (computed on first use)."""
    key = f"v{CALIBRATION_VERSION}:{target.spec}:{target.dtype}"
    with _LOCK:
        if key in _CALIBRATIONS:
            return _CALIBRATIONS[key]
    path = None
    if not str(target.spec).startswith("tiny-random"):
        path = cache_dir() / "layer_skip_calibration.json"
        try:
            stored = json.loads(path.read_text()).get(key)
            if stored:
                cal = Calibration([tuple(s) for s in stored["sets"]], stored["hits"], stored["confs"])
                with _LOCK:
                    _CALIBRATIONS[key] = cal
                return cal
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pass
    cal = calibrate(target)
    with _LOCK:
        _CALIBRATIONS[key] = cal
    if path is not None:
        try:
            data = read_json(path)
            data[key] = {"sets": [list(s) for s in cal.sets], "hits": cal.hits,
                         "confs": [[[round(x, 4) for x in row] for row in c] for c in cal.confs]}
            write_json(path, data, indent=None)
        except OSError:
            pass  # an unwritable cache only costs a new calibration next time
    return cal


def replay(hits: list[bool], confs: list[float], gamma: int, threshold: float,
           verify_cost, draft_cost: float) -> tuple[float, float]:
    """(tokens, seconds) of the gated drafting loop over one greedy continuation.

    At position j the draft proposes while its top probability is >= threshold
    (at most γ tokens, one draft forward each plus the one that stopped it), the
    target accepts the leading hits and adds one token. Under greedy this is what
    decoding does, because the view's predictions there are conditioned on the
    same (accepted) prefix.
    """
    tokens = seconds = 0.0
    j, n = 0, len(hits)
    while j < n:
        k = 0
        while k < gamma and j + k < n and confs[j + k] >= threshold:
            k += 1
        a = 0
        while a < k and hits[j + a]:
            a += 1
        seconds += verify_cost(k + 1) + draft_cost * (1 + min(k, gamma - 1))
        tokens += min(a + 1, n - j)  # the bonus past the last position is not counted
        j += a + 1
    return tokens, seconds


def choose_skip(target: Any, max_draft: int, threshold: float, costs: CostModel,
                backend: str = "eager") -> SkipChoice:
    """The 'auto' decision from the (cached) calibration and this hardware's measured costs (`costs`)."""
    cal = calibration(target)
    if not cal.sets:
        return SkipChoice((), 1.0, float("nan"))
    deepest = cal.sets[-1]
    t_full = costs.seconds(target, backend, 1)  # verification runs on the run's backend
    t_deep = costs.seconds(view_model(target, deepest), "eager", 1)  # views run eager

    def verify_cost(m: int) -> float:
        return costs.seconds(target, backend, m)

    best = SkipChoice((), 1.0, float("nan"))
    top = (0.0, 0)  # the best replayed speedup, paying or not, and how many layers it skipped
    agreements = []
    for skip, hits, confs in zip(cal.sets, cal.hits, cal.confs):
        t_draft = max(0.0, t_full + (t_deep - t_full) * len(skip) / len(deepest))  # linear in skipped layers
        agreements.append(sum(map(sum, hits)) / max(1, sum(map(len, hits))))
        tok = sec = 0.0
        for h, c in zip(hits, confs):
            t, s = replay(h, c, max_draft, threshold, verify_cost, t_draft)
            tok, sec = tok + t, sec + s
        speedup = (tok / sec) * t_full if sec > 0 else 0.0
        top = max(top, (speedup, len(skip)))
        if speedup > best.speedup:
            best = SkipChoice(skip, speedup, agreements[-1])
    if best.speedup < MIN_GAIN:  # no set pays off here: draft nothing
        why = (f"{verify_clause([1.0, verify_cost(2) / t_full])}; the best layer set (skipping {top[1]} of "
               f"{len(_decoder(target.model).layers)} layers) replayed at {top[0]:.2f}x plain decoding on this "
               f"machine's measured costs, short of the {MIN_GAIN:.2f}x that drafting needs")
        return SkipChoice((), 1.0, max(agreements), why)
    return best


# ---------------------------------------------------------------- the drafter


@register
class LayerSkip(Drafter):
    name = "layer_skip"
    label = "Self-speculative (layer skipping)"
    family = "Without a draft model"
    pays_when = ("the target is deep and its shallow layers already agree with it; on a small model on a CPU "
                 "the search may find no skip set that pays")
    description = ("The target with some layers skipped drafts for the full target (shared weights, own KV "
                   "cache). skip=auto picks the set from measured agreement and this hardware's costs, and "
                   "drafts nothing when no set is expected to beat plain decoding. No draft model. Lossless.")
    params = (
        Param("skip", "str", "auto", "layers to skip: 'auto' (calibrated per model and hardware; may choose "
              "none, then nothing is drafted) or a comma list such as '4,5,6'", check=_check_skip),
        Param("max_draft", "int", 4, "at most this many tokens drafted per step", 1, 32),
        Param("threshold", "float", 0.5, "stop drafting when the draft's top probability is below this",
              0.0, 1.0),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        skip = parse_skip(self.params["skip"])
        target = self.env.target
        self.choice = None
        if skip is None:
            self.choice = choose_skip(target, self.params["max_draft"], self.params["threshold"],
                                      self.env.costs, self.env.backend)
            skip = self.choice.skip
        # eager always: a view shares the target's weights and differs per skip set, so compiling it
        # would cost a full compile for each set tried
        self.runner = DraftModelRunner(self.env, view_model(target, skip), backend="eager") if skip else None

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft | None:
        g = min(self.params["max_draft"], ctx.max_tokens)
        if self.runner is None and self.choice is not None and self.choice.why:
            self.env.sizing.decline("cost", self.choice.why)
        if g <= 0 or self.runner is None:
            return None
        return self.runner.draft_chain(ctx.tokens, g, self.env.sampling, self.env.generator,
                                       min_confidence=self.params["threshold"])
