"""The one decode loop: prefill, then propose -> verify (one target forward) -> commit.

Every method runs through `generate`; a method only supplies a drafter. The
loop keeps one invariant about the target's KV cache: it holds every committed
token except the last one, which is the *root* of the next draft. A step feeds
[root] + draft nodes (a 4D tree mask and depth positions when the draft
branches), verifies with workbench.verify, keeps the cache entries of the root
and the accepted path (a crop for chains) and appends the accepted tokens plus
the target's own bonus/correction token. Plain decoding is the empty draft.

The target's cache lives in a backend session (workbench.backend: eager over a
DynamicCache, or compiled over a static position-indexed cache); draft models
open their sessions on the same backend through DrafterEnv.session, and the
engine closes them all when the run ends.

A drafter that declares `needs_hidden_states` (the EAGLE/Medusa/Hydra heads)
gets, through `observe`, the target's final hidden states of the positions each
forward committed: every prompt position after prefill, the root and the accepted
nodes after a step (and a few middle layers' outputs, for a head that fuses
them, or an EAGLE-3 head's three: `wants_feature_layers`). They come out of the same forwards (the backend
splits the stock forward at the LM head), so a head never costs an extra
target forward.

Timing (gpt-fast): the device is synchronised before every timer read, so
draft_s and verify_s are what the step really cost. A drafter's `begin` (one-time
set-up: calibration, profiling, loading a corpus) runs before the clock starts; a
draft model's prompt prefill happens at its first `propose`, on the clock.

Options that trade quality for speed (workbench.config.AcceptanceConfig: a relaxed
acceptance rule of the shared verifier; KVConfig: a compressed target KV cache,
workbench.backend.compressed or .quantized, whose note gives the memory it saved) and a method
registered `lossless = False` are written once, when the run starts, to `trace.lossy`
(`lossy_reasons`): one line each, empty for a lossless run.

Each committed token's NLL under the full target (temperature 1) is read off the forward that verified it:
the row of its parent on the accepted path (the prefill's last row for the first token), which the tree mask
and positions make exactly the target's logits after the committed context. It goes in `Step.target_nll`, for
the quality accounting (workbench.accounting), at the cost of a log-softmax row per committed token, read back
in one sync when the run ends. Not when the target's cache is compressed (`kv`): those logits are the
compressed target's, and the accounting runs the full target instead.

What a run says about itself goes in `trace.notes` when it ends (`_run_notes`): a cost
profile measured for it first, verification forwards that disagreed with the profile
(which the CostModel then marks stale), and cost-aware sizing that chose not to draft
in most steps, with its reason (workbench.methods.sizing).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .backend import check_backend, open_session, prepare
from .backend.profile import CostModel
from .config import AcceptanceConfig, ConfigError, DecodeConfig, KVConfig, SamplingConfig
from .device import PeakMemory, device_sync
from .draft import Draft
from .kv_cache import LayerRows
from .methods import DraftContext, Drafter, DrafterEnv, StepFeedback, get_method, resolve_params
from .methods.base import RunHistory
from .preflight import check_draft_given
from .sampling import choose, logits_to_probs, make_generator, token_nll_rows
from .trace import Step, Summary, Trace
from .verify import Verdict, node_target_probs, relaxed_admits, verify_greedy, verify_stochastic

StepCallback = Callable[[Step, Trace], None]


@dataclass
class GenerationResult:
    output_ids: list[int]
    text: str
    trace: Trace
    summary: Summary
    # with a compressed cache and keep_prompt_kv: the full target's keys/values of the prompt from the prefill,
    # each layer's (1, heads, T_prompt, head_dim), for the quality accounting (workbench.accounting.token_nll)
    prompt_kv: LayerRows | None = None


# Cache room beyond prompt + new tokens: one step's draft nodes (every built-in default is smaller).
DRAFT_ROOM = 128


def build_drafter(method: str, params: dict[str, Any] | None, target, draft, sampling: SamplingConfig,
                  generator: torch.Generator | None, backend: str = "eager", max_len: int = 0,
                  costs: CostModel | None = None, history: RunHistory | None = None,
                  progress: Callable[[str], None] | None = None) -> Drafter:
    cls = get_method(method)
    resolved = resolve_params(method, params)
    check_draft_given(method, draft is not None)
    env = DrafterEnv(target=target, draft=draft, sampling=sampling, generator=generator, backend=backend,
                     max_len=max_len, costs=costs or CostModel(progress=progress), history=history)
    return cls(env, **resolved)


def prepare_run(backend: str, models: list, n_prompt: int, max_new_tokens: int,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compile (or load) what `generate` will open on `backend` for these models (None entries skipped),
    before a run's clock starts -> the run's env entries {backend, warmup_s} (seconds it took)."""
    max_len = n_prompt + max_new_tokens + DRAFT_ROOM
    seconds = sum(prepare(backend, lm, max_len, progress=progress) for lm in models if lm is not None)
    return {"backend": backend, "warmup_s": round(seconds, 3)}


def _target_forward(session, ids: torch.Tensor, draft: Draft | None, past_len: int, keep: int = 0,
                    hidden: bool | str = False):
    """Run the target on `ids` (1, T) after `past_len` cached positions -> logits (T or keep, V),
    and its hidden states too when `hidden` (True: the final ones (T, H); "layers": see KVSession)."""
    session.crop(past_len)
    if draft is not None and len(draft) and not draft.is_chain:
        block = draft.ancestor_block(ids.device)  # (T, T) tree visibility of [root] + nodes
        return session.forward(ids, positions=draft.position_ids(past_len, ids.device), block=block, keep=keep,
                               hidden=hidden)
    return session.forward(ids, keep=keep, hidden=hidden)


@torch.inference_mode()
def generate(target, method: str, prompt_ids: list[int], *, draft=None, params: dict[str, Any] | None = None,
             sampling: SamplingConfig = SamplingConfig(), decode: DecodeConfig = DecodeConfig(),
             on_step: StepCallback | None = None, trace: Trace | None = None,
             backend: str = "eager", costs: CostModel | None = None,
             history: RunHistory | None = None, progress: Callable[[str], None] | None = None,
             acceptance: AcceptanceConfig = AcceptanceConfig(), kv: KVConfig = KVConfig(),
             keep_prompt_kv: bool = False) -> GenerationResult:
    """Decode up to decode.max_new_tokens tokens after prompt_ids with `method`.

    target/draft are workbench.models.LoadedModel. `trace`, when given, is filled
    in place (so a caller still has the partial steps if decoding fails).
    backend: "eager" or "compiled" (workbench.backend); the target and every draft model run on it.
    costs: what forwards cost here, for cost-aware drafters (None: the machine's measured profiles).
    history: earlier runs' outputs for drafters that read them (workbench.record.run_history).
    progress: where set-up before the clock says what it does (measuring this machine's cost profile
    for a cost-aware method: tens of seconds on a CPU), for a status line.
    acceptance: the verifier's acceptance rule (default: exact, lossless); a relaxed one makes the run lossy.
    kv: compression of the target's KV cache (eager backend only; default none); an evicting or quantising one
    makes the run lossy, and its note says the memory it saved.
    keep_prompt_kv: with a compressed `kv`, keep the prefill's full-precision keys/values of the prompt
    (GenerationResult.prompt_kv, held beside the compressed cache until the caller drops them; the run's note
    says how much), so the quality accounting scores the output by a forward over the output alone.
    """
    if not isinstance(acceptance, AcceptanceConfig):
        raise ConfigError(f"acceptance must be an AcceptanceConfig, not {type(acceptance).__name__}")
    if not isinstance(kv, KVConfig):
        raise ConfigError(f"kv must be a KVConfig, not {type(kv).__name__}")
    if not prompt_ids:
        raise ConfigError("the prompt is empty")
    backend = check_backend(backend)
    device = target.device
    generator = make_generator(sampling.seed, device)
    max_len = len(prompt_ids) + decode.max_new_tokens + DRAFT_ROOM
    drafter = build_drafter(method, params, target, draft, sampling, generator, backend, max_len, costs, history,
                            progress)
    session = open_session(backend, target, max_len, compression=kv)
    if kv.active and keep_prompt_kv:  # a compressing session is an eager one (backend.check_compression_backend)
        session.keep_prompt = True
    try:
        result = _decode(target, session, drafter, method, params, prompt_ids, sampling, decode, generator,
                         on_step, trace, acceptance, kv)
        if kv.active:  # what the compressed cache saved, measured at the end
            result.trace.notes.append(_compression_note(session))
            result.prompt_kv = session.prompt_kv
        return result
    finally:
        session.close()
        drafter.env.close_sessions()


def _compression_note(session) -> dict[str, Any]:
    """The compressed session's note, with the full-precision prompt rows it kept for the accounting (if any)."""
    note = session.note()
    if session.prompt_kv:
        held = sum(t.numel() * t.element_size() for pair in session.prompt_kv for t in pair)
        note["prompt_kv_bytes"] = held
        note["text"] += (f"; the quality accounting kept the prompt's full-precision keys/values besides "
                         f"({held / 2**20:.2f} MiB, released after it)")
    return note


def _decode(target, session, drafter: Drafter, method: str, params, prompt_ids: list[int],
            sampling: SamplingConfig, decode: DecodeConfig, generator, on_step, trace,
            acceptance: AcceptanceConfig, kv: KVConfig) -> GenerationResult:
    device = target.device
    if trace is None:
        trace = Trace(method=method, params=resolve_params(method, params), prompt_ids=list(prompt_ids))
    trace.lossy = lossy_reasons(type(drafter), trace.params, sampling, target.vocab_size, acceptance, kv)
    acceptance = verification_rule(type(drafter), drafter.params, acceptance)
    eos = set(target.eos_token_ids) | set(decode.extra_eos_ids) if decode.stop_on_eos else set()
    memory = PeakMemory(device)
    drafter.begin(list(prompt_ids))  # one-time set-up (calibration, profiling, a corpus) is not decoding time
    # Drafter heads (EAGLE, Medusa, Hydra) read the target's final hidden states of every committed position
    # (a head with fused features also its feature layers': known once `begin` has loaded the head).
    wants_hidden: bool | str = False
    if drafter.needs_hidden_states:
        layers = drafter.wants_feature_layers  # True: the fused features' layers; a tuple: those (EAGLE-3)
        wants_hidden = tuple(layers) if isinstance(layers, (tuple, list)) else "layers" if layers else True

    # (step, its committed tokens' NLLs on the device): read back once at the end, never a sync per step;
    # None when the target's cache is compressed, so its logits are not the full target's
    nlls: list[tuple[Step, torch.Tensor]] | None = None if kv.active else []
    device_sync(device)
    t_start = time.perf_counter()

    # ---- prefill: the prompt in one forward, the first new token from its last position
    t_draft = time.perf_counter()
    ids = torch.tensor([prompt_ids], device=device)  # (1, T_prompt)
    out = _target_forward(session, ids, None, 0, keep=1, hidden=wants_hidden)
    logits, hidden = (out[0][-1], out[1]) if wants_hidden else (out[-1], None)  # (V,), (T_prompt, H)
    tok, p_tok = choose(logits, sampling, generator)
    if sampling.greedy and decode.trace:
        p_tok = float(logits.float().softmax(-1)[tok])
    device_sync(device)
    t_now = time.perf_counter()
    context = list(prompt_ids) + [tok]
    if wants_hidden:  # on the clock: a head's own prompt pass is part of its cost
        drafter.observe(StepFeedback(draft=None, accepted=[], committed=[tok], tokens=list(context), hidden=hidden))
        device_sync(device)
        t_now = time.perf_counter()
    step = Step(index=0, kind="prefill", bonus_token=tok, bonus_p=p_tok, committed=[tok],
                draft_s=t_draft - t_start, verify_s=t_now - t_draft, total_s=t_now - t_start, t_end=t_now - t_start)
    trace.steps.append(step)
    if nlls is not None:
        nlls.append((step, token_nll_rows(logits[None], [tok])))  # (1,)
    memory.sample()
    if on_step:
        t_start += _timed(on_step, step, trace)  # callbacks (store writes, UI streaming) are not decoding time
    stop = "eos" if tok in eos else ("max_new_tokens" if decode.max_new_tokens <= 1 else "")

    # ---- decode: propose -> verify -> commit
    while not stop:
        t0 = time.perf_counter()
        generated = len(context) - len(prompt_ids)
        dctx = DraftContext(tokens=list(context), n_prompt=len(prompt_ids),  # a copy: drafters never edit ours
                            max_tokens=decode.max_new_tokens - generated - 1, step=len(trace.steps))
        proposal = drafter.propose(dctx)
        if proposal is not None and len(proposal) == 0:
            proposal = None
        drafter.env.sizing.step(proposal is not None)
        device_sync(device)
        t1 = time.perf_counter()

        past_len = len(context) - 1
        node_tokens = proposal.tokens if proposal is not None else []
        ids = torch.tensor([[context[-1]] + node_tokens], device=device)  # (1, 1+n)
        out = _target_forward(session, ids, proposal, past_len, hidden=wants_hidden)
        logits, hidden = out if wants_hidden else (out, None)  # (1+n, V), (1+n, H)
        verdict, p_nodes = _verify(logits, proposal, sampling, generator, decode.trace, acceptance)
        # keep the root's and the accepted path's keys/values; drop the rejected ones
        session.keep(past_len, [0] + [i + 1 for i in verdict.accepted])
        device_sync(device)
        t2 = time.perf_counter()

        new = [node_tokens[i] for i in verdict.accepted] + [verdict.bonus_token]
        committed, stop = _apply_stops(new, eos, decode.max_new_tokens - generated)
        context.extend(committed)
        if drafter.wants_target_argmax:  # drafters that learn from the target's own predictions (Jacobi, lookahead)
            drafter.observe_target(logits.argmax(-1).tolist(), proposal)  # (1+n,) root row first, then each node
        kept = hidden[[0] + [i + 1 for i in verdict.accepted]] if wants_hidden else None  # root + accepted rows
        drafter.observe(StepFeedback(draft=proposal, accepted=verdict.accepted, committed=committed,
                                     tokens=context, hidden=kept))
        t3 = time.perf_counter()
        step = Step(
            index=len(trace.steps), kind="decode",
            tokens=list(node_tokens),
            parents=list(proposal.parents) if proposal is not None else [],
            q=list(proposal.q) if proposal is not None and decode.trace else [],
            p=p_nodes,
            accepted=list(verdict.accepted), bonus_token=verdict.bonus_token, bonus_p=verdict.bonus_p,
            committed=committed, draft_s=t1 - t0, verify_s=t2 - t1, total_s=t3 - t0, t_end=t3 - t_start,
            draft_forwards=proposal.forwards if proposal is not None else 0,
        )
        trace.steps.append(step)
        if nlls is not None:  # committed token j was predicted by row 0 (the root), then by accepted node j-1's row
            rows = ([0] + [i + 1 for i in verdict.accepted])[:len(committed)]
            nlls.append((step, token_nll_rows(logits[rows], committed)))  # (len(committed),)
        memory.sample()
        if on_step:
            t_start += _timed(on_step, step, trace)

    device_sync(device)
    trace.wall_s = time.perf_counter() - t_start
    trace.peak_mem_mb = memory.peak_mb()
    trace.stop_reason = stop
    if nlls:  # off the clock: one read-back for the whole run
        flat, at = torch.cat([v for _, v in nlls]).tolist(), 0
        for s, v in nlls:
            s.target_nll, at = flat[at:at + len(v)], at + len(v)
    trace.notes.extend(_run_notes(drafter, target, trace))
    out = trace.output_ids
    return GenerationResult(output_ids=out, text=target.decode(out), trace=trace, summary=trace.summary())


def lossy_reasons(cls: type[Drafter], params: dict[str, Any], sampling: SamplingConfig, vocab: int,
                  acceptance: AcceptanceConfig = AcceptanceConfig(), kv: KVConfig = KVConfig()) -> list[str]:
    """What makes a run lossy, one line each (`Trace.lossy`): a method registered `lossless = False` (with its
    setting), a relaxed acceptance rule at a setting that can change the output and a KV cache that evicts or
    quantises;
    [] for a lossless run."""
    out = []
    if not cls.lossless:
        setting = ", ".join(f"{k}={v}" for k, v in params.items())
        out.append(f"{cls.label or cls.name}" + (f" ({setting})" if setting else ""))
    if not acceptance.exact(sampling.greedy, vocab):
        out.append(acceptance.describe())
    if kv.active:
        out.append(kv.describe())
    return out


def verification_rule(cls: type[Drafter], params: dict[str, Any], acceptance: AcceptanceConfig) -> AcceptanceConfig:
    """The rule the verifier uses: the method's own (`Drafter.verify_rule`, e.g. BiLD's rollback bound) or the
    run's; a run that asks for a relaxed rule with a method that brings its own is refused."""
    own = cls.verify_rule(params)
    if own is None:
        return acceptance
    if acceptance.rule != "exact":
        raise ConfigError(f"method '{cls.name}' verifies with its own rule ({own.describe()}); "
                          f"leave out the acceptance option ({acceptance.describe()})")
    return own


def _run_notes(drafter: Drafter, target, trace: Trace) -> list[dict[str, Any]]:
    """What the run says about itself (the module docstring): the CostModel's notes on the profiles it served,
    checked against this run's verification forwards, the sizing log's "no_draft" note and the drafter's own."""
    env = drafter.env
    decode = [s for s in trace.steps if s.kind == "decode"]
    notes = env.costs.run_notes(target, env.backend, [(1 + s.n_draft, s.verify_s) for s in decode])
    no_draft = env.sizing.note(len(decode))
    return notes + ([no_draft] if no_draft else []) + drafter.run_notes()


def _timed(fn: StepCallback, step: Step, trace: Trace) -> float:
    """Run a step callback; return how long it took, so the run's clock can skip it."""
    t0 = time.perf_counter()
    fn(step, trace)
    return time.perf_counter() - t0


def _verify(logits: torch.Tensor, proposal: Draft | None, sampling: SamplingConfig,
            generator: torch.Generator | None, with_probs: bool,
            acceptance: AcceptanceConfig = AcceptanceConfig()) -> tuple[Verdict, list[float]]:
    """Shared verification: (1+n, V) target logits -> verdict, and p of each node when tracing."""
    draft = proposal if proposal is not None else Draft([], [])
    relaxed = acceptance.rule != "exact" and len(draft) > 0
    if sampling.greedy:
        probs = logits.float().softmax(-1) if with_probs or relaxed else None  # temperature 1
        admits = relaxed_admits(probs, draft, acceptance, scores=logits) if relaxed else None
        verdict = verify_greedy(logits, draft, admits)
        if not with_probs:
            return verdict, []
        last = verdict.accepted[-1] + 1 if verdict.accepted else 0
        verdict.bonus_p = float(probs[last, verdict.bonus_token])
        return verdict, node_target_probs(probs, draft)
    probs = logits_to_probs(logits, sampling)  # (1+n, V)
    admits = relaxed_admits(probs, draft, acceptance) if relaxed else None
    verdict = verify_stochastic(probs, draft, generator, admits)
    return verdict, (node_target_probs(probs, draft) if with_probs else [])


def _apply_stops(new: list[int], eos: set[int], budget: int) -> tuple[list[int], str]:
    """Truncate a step's tokens at the first EOS (kept) or at the token budget."""
    for i, tok in enumerate(new[:budget]):
        if tok in eos:
            return new[: i + 1], "eos"
    if len(new) >= budget:
        return new[:budget], "max_new_tokens"
    return new, ""
