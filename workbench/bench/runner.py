"""Run a benchmark: every arm on every prompt, R times, in one process, logged under one benchmark id.

Order of work (all in this process, on the same prompts):
1. load the target (and draft), measure copy bandwidth for the roofline;
2. warm-up, before anything is timed, with progress: for each backend
   (BenchConfig.backends, `--backends eager,compiled`), compile the models for
   every cache size the prompts will need (workbench.backend.prepare: the compiled
   backend's torch.compile, loaded from the disk cache when warm; nothing for
   eager), then one short unlogged generation per arm on that backend; the
   transformers arms (--compare-hf) likewise, the static+compile one compiling
   its decode forward. The seconds each took are the benchmark's env
   (`warmup_s` per backend, `hf_warmup_s` per transformers arm), and each run's
   env carries its backend and that backend's warm-up, as workbench.api.run's;
3. record the benchmark row, then for each repeat r: for each prompt: for each
   arm on each backend (each backend's autoregressive baseline, its untraced
   twin when measuring tracing overhead, the methods and sweep points), then the
   transformers arms: decode and log the run. All arms of a prompt run back to
   back, so a slow spell on a shared machine hits every arm and backend alike
   instead of whichever ran then; the order rotates by one each repeat so no arm
   always runs first. A run's clock never includes compiling: the engine opens
   its sessions (which compile on a first use) before its clock starts.

Multi-turn questions run turn by turn; turn k's prompt contains the baseline's
own greedy answers to the earlier turns, which the baseline's first repeat
produces before any other arm needs them.

Runs are decoded with workbench.engine.generate and recorded with
workbench.record's Recording (as every run is) without streaming their steps, so
no store write falls inside the timed region; each run carries the benchmark's own labels as
parameters: bench.arm, bench.category, bench.prompt ("question.turn"),
bench.repeat, bench.trace. Everything the report shows is computed from those
stored runs (workbench.bench.report), never from in-memory state.

Each run's quality (workbench.accounting: agreement, first divergence, NLL gap, ROUGE-L, and the task
score of an item that carries a checker) is measured against the baseline arm's first run of the same
prompt after the run's clock stops, and stored with it. Runs decoded on a cluster's workers are
stored without it (the worker's model is not here).

With a cluster (BenchConfig.cluster, `--cluster`, one backend), workbench.cluster.fanout
spreads the same work over Ray workers in *blocks*: one question (all its
turns) for one repeat, every arm including the baseline interleaved as above
(`decode_block`), after each worker's own warm-up, so every speedup stays a
ratio measured in one process on one device. The caller stores each block's
runs (`store_run`) once the block has come back whole, with the worker's env.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Callable

import torch

from .. import engine
from ..backend import check_backend, check_compression_backend, prepare
from ..backend.compiled import cache_len_bucket
from ..config import BASELINE, AcceptanceConfig, ConfigError, DecodeConfig, KVConfig, SamplingConfig
from ..engine import DRAFT_ROOM
from ..methods import resolve_params
from ..models import EMBEDDED_DEFAULT, load_model
from ..preflight import check_draft_given, check_draft_vocabulary
from ..accounting import BaselineOutput, quality_against
from ..quality import Quality
from ..record import Recording, environment, run_history
from ..trace import Trace
from .arms import Arm, build_arms, on_backends
from .hf import HF_METHODS, STATIC, hf_backend, hf_run, hf_settings, hf_warm_up, static_cache_len
from .roofline import copy_bandwidth, read_bandwidth, weight_bytes_per_token
from .suites import PromptUnit, categories_of, filter_questions, load_suite, prompt_units, suite_path

Progress = Callable[[str], None]
GREEDY = SamplingConfig()
# Room for the tokens of each earlier answer of a multi-turn prompt beyond max_new_tokens (its text is
# re-encoded inside the chat template), when sizing caches before the answers exist.
ANSWER_MARGIN = 16


@dataclass
class BenchConfig:
    suite: str
    methods: list[str]
    target: str | None = None
    draft: str | None = None
    max_new_tokens: int = 128
    repeats: int = 3
    limit: int | None = None  # at most this many questions per category
    categories: list[str] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: list[tuple[str, str, list[Any]]] = field(default_factory=list)
    compare_hf: bool = False
    trace_overhead: bool = True
    device: str | None = None
    warmup_tokens: int = 8
    bandwidth_mib: int = 512
    threads: int | None = None  # torch.set_num_threads for the benchmark (None: leave torch's setting)
    cluster: str | None = None  # a cluster address (workbench.cluster); None: $WORKBENCH_CLUSTER, else in process
    workers: int | None = None  # at most this many cluster workers (None: as many as the cluster has room for)
    backends: list[str] = field(default_factory=lambda: ["eager"])  # every arm runs on each (workbench.backend)
    question_ids: list[str] | None = None  # keep only these questions of the suite (ids as text; None: all)
    # the arms themselves, baseline first (None: built from methods, params and sweeps); an arm may name its own
    # draft model (Arm.draft), which runs in process only
    arms: list[Arm] | None = None
    # every drafting arm once per acceptance rule (workbench.bench.arms; [] or None: exact only)
    accepts: list[AcceptanceConfig] | None = None
    kvs: list[KVConfig] | None = None  # every arm but the baseline once per KV-cache compression (eager only)

    def check(self) -> None:
        DecodeConfig(max_new_tokens=self.max_new_tokens)  # same range checks as a run
        if not isinstance(self.backends, (list, tuple)) or not self.backends:
            raise ConfigError(f"backends must be a non-empty list, e.g. ['eager', 'compiled'], got {self.backends!r}")
        for b in self.backends:
            check_backend(b)
        if len(set(self.backends)) != len(self.backends):
            raise ConfigError(f"a backend is given twice: {', '.join(self.backends)}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"--repeats must be a positive integer, got {self.repeats!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.bandwidth_mib < 1:
            raise ConfigError(f"bandwidth buffer must be at least 1 MiB, got {self.bandwidth_mib}")


@dataclass(frozen=True)
class HFArm:
    label: str  # = method, one of hf.HF_METHODS
    params: dict[str, Any]

    @property
    def method(self) -> str:
        return self.label

    @property
    def backend(self) -> str:
        """The backend this arm corresponds to (hf.HF_BACKEND); its speedup is against our baseline there."""
        return hf_backend(self.label)

    @property
    def key(self) -> str:
        return self.label


def to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Eta:
    """Remaining time: each pending job costs the mean time of its arm so far (else of all jobs)."""

    def __init__(self, jobs: list[str]) -> None:
        self.pending = list(jobs)
        self.times: dict[str, list[float]] = {}

    def done(self, label: str, seconds: float) -> float:
        self.pending.remove(label)
        self.times.setdefault(label, []).append(seconds)
        every = [t for ts in self.times.values() for t in ts]
        overall = sum(every) / len(every)
        mean = {k: sum(v) / len(v) for k, v in self.times.items()}
        return sum(mean.get(lbl, overall) for lbl in self.pending)


def plan_benchmark(cfg: BenchConfig, cluster: bool = False) -> tuple[list[Arm], list]:
    """Check `cfg` and expand it -> (its arms on each of its backends, its questions); ConfigError on bad input,
    before anything is loaded or recorded. cluster: the plan is for a cluster's workers (one backend)."""
    cfg.check()
    arms = check_arms(cfg.arms) if cfg.arms is not None else build_arms(cfg.methods, cfg.params, cfg.sweeps,
                                                                          trace_overhead=cfg.trace_overhead,
                                                                          accepts=cfg.accepts, kvs=cfg.kvs)
    questions = filter_questions(load_suite(cfg.suite), cfg.categories, cfg.limit, cfg.question_ids)
    check_draft_given([a.method for a in arms if not a.draft], bool(cfg.draft))
    if cluster and any(a.acceptance.rule != "exact" or a.kv.active for a in arms):
        raise ConfigError("--accept and --kv run in process only: drop --cluster")
    check_compression_backend(any(a.kv.active for a in arms), ",".join(cfg.backends))
    if cluster and any(a.draft for a in arms):
        raise ConfigError("arms with a draft model of their own run in process only: drop --cluster")
    if cluster and len(cfg.backends) > 1:
        raise ConfigError("--backends with more than one backend runs in process only: drop --cluster, or run "
                          "one benchmark per backend")
    if not cluster and cfg.workers is not None:
        raise ConfigError("--workers needs --cluster (in process there is one worker: this process)")
    return on_backends(arms, cfg.backends), questions


def check_arms(arms: list[Arm]) -> list[Arm]:
    """Arms given whole (BenchConfig.arms): the baseline first, unique labels, each parameter valid."""
    if not arms or arms[0].method != BASELINE:
        raise ConfigError(f"a benchmark's arms start with the baseline ({BASELINE})")
    labels = [a.label for a in arms]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"arm label {', '.join(twice)} is given twice")
    return [replace(a, params=resolve_params(a.method, a.params)) for a in arms]


def arm_draft(arm, drf, device: str | None = None):
    """The draft model `arm` decodes with: its own (Arm.draft, loaded once per process by workbench.models),
    else the benchmark's `drf`; None for an arm that drafts without one."""
    if isinstance(arm, HFArm):
        return drf
    if not arm.needs_draft:
        return None
    return load_model(arm.draft, device=device) if arm.draft else drf


def check_bench_models(arms: list[Arm], tgt, drf, device: str | None = None) -> None:
    """Each arm's draft vocabulary against the target (cross_vocab drafts across tokenizers)."""
    for arm in arms:
        model = arm_draft(arm, drf, device)
        if model is not None:
            check_draft_vocabulary(arm.method, tgt, model)


def run_in_process(cfg: BenchConfig, store, progress: Progress | None = to_stderr) -> str:
    """Run the benchmark described by `cfg` in this process, log it to `store`, return the benchmark id.
    (workbench.api.run_benchmark also fans one out over a cluster.)"""
    say = progress or (lambda _msg: None)
    timed, questions = plan_benchmark(cfg)
    units = prompt_units(questions)
    generate = partial(engine.generate, history=run_history(store))  # sam corpus=history reads this store
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    target_spec = cfg.target or EMBEDDED_DEFAULT
    tgt = load_model(target_spec, device=cfg.device, progress=say)
    drf = load_model(cfg.draft, device=cfg.device, progress=say) if cfg.draft else None
    check_bench_models(timed, tgt, drf, cfg.device)
    hf_arms = hf_arms_for(cfg, tgt, drf, units)

    say(f"bench: measuring memory bandwidth (reading and copying {cfg.bandwidth_mib} MiB)...")
    env = bench_env(tgt, drf, cfg)
    env.update(_warm_up(timed, hf_arms, units[0], tgt, drf, cfg, generate, say, units=units))
    config = bench_config(cfg, tgt.spec, drf.spec if drf else None, timed, hf_arms, questions, units)
    bench_id = store.start_benchmark(suite=cfg.suite, config=config, env=env)
    jobs = list(timed) + hf_arms
    say(f"bench: benchmark {bench_id} | {len(units)} prompts ({len(questions)} questions) x "
        f"{len(timed) // len(cfg.backends)} arms x {len(cfg.backends)} backend{'s' * (len(cfg.backends) != 1)} "
        f"({', '.join(cfg.backends)})" + (f" + {len(hf_arms)} transformers arms" if hf_arms else "")
        + f" x {cfg.repeats} repeats | target {tgt.spec}" + (f" draft {drf.spec}" if drf else ""))
    try:
        eta = Eta([job.key for _ in range(cfg.repeats) for job in jobs for _ in units])
        total, n_done = len(eta.pending), 0
        encoded: dict[str, list[int]] = {}
        baselines: dict[tuple[str, str], BaselineOutput] = {}  # (prompt, backend) -> its runs' quality reference
        for r in range(cfg.repeats):
            for unit in units:
                for arm in _arm_order(jobs, r):
                    if unit.key not in encoded:
                        encoded[unit.key] = encode_unit(tgt, unit)
                    prompt_ids = encoded[unit.key]
                    _compiled_for(arm, len(prompt_ids), tgt, drf, cfg, say)
                    run_env = env | bandwidths_now(arm, tgt, cfg)
                    t0 = time.perf_counter()
                    summary = _run_one(store, bench_id, arm, unit, r, prompt_ids, tgt, drf, cfg, run_env, generate,
                                       baselines)
                    if arm == jobs[0] and r == 0 and len(unit.history) == unit.turn:
                        unit.history.append(summary["text"])  # the baseline's answer feeds the next turn
                    n_done += 1
                    left = eta.done(arm.key, time.perf_counter() - t0)
                    where = f"{unit.category}/{unit.key}"
                    say(f"[{n_done}/{total}] r{r + 1}/{cfg.repeats} {_job_name(arm, cfg):<28} {where:<22} "
                        f"{summary['new_tokens']:>4} tok {summary['tokens_per_s']:6.1f} tok/s "
                        f"tau {summary['tau']:.2f}{_quality_note(summary)} | ETA {fmt_eta(left)}")
    except BaseException as exc:
        store.finish_benchmark(bench_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    store.finish_benchmark(bench_id)
    return bench_id


def _quality_note(summary: dict[str, Any]) -> str:
    """A progress line's quality: " LOSSY" for a lossy run, and its agreement with plain decoding."""
    lossy = "" if summary.get("lossless", True) else " LOSSY"
    agree = summary.get("agreement")
    return lossy + (f" agree {agree:.2f}" if agree is not None else "")


def _job_name(arm, cfg: BenchConfig) -> str:
    """An arm in progress lines: its label, with the backend when the benchmark runs several."""
    return arm.label if isinstance(arm, HFArm) or len(cfg.backends) == 1 else f"{arm.label} @{arm.backend}"


def hf_arms_for(cfg: BenchConfig, tgt, drf, units: list[PromptUnit] | None = None) -> list[HFArm]:
    """The transformers arms of --compare-hf (assisted generation only with a draft model).

    The static+compile arm's cache holds the longest prompt (`units`; None: the suite's) + max_new_tokens.
    """
    if not cfg.compare_hf:
        return []
    out = []
    for m in HF_METHODS:
        if m == "hf.assisted" and drf is None:
            continue
        size = None
        if m == STATIC:
            longest = max((hi for _, hi in prompt_bounds(cfg, tgt, units)), default=0)
            size = static_cache_len(longest + cfg.max_new_tokens, tgt.max_positions)
        out.append(HFArm(m, hf_settings(m, tgt, drf, max_cache_len=size)))
    return out


def prompt_bounds(cfg: BenchConfig, tgt, units: list[PromptUnit] | None = None) -> list[tuple[int, int]]:
    """(fewest, most) tokens of each prompt; a later turn holds the baseline's answers, not known beforehand.

    units None: the suite's, when this process can read it (a cluster worker may not: then none).
    """
    if units is None:
        try:
            units = prompt_units(filter_questions(load_suite(cfg.suite), cfg.categories, cfg.limit,
                                                      cfg.question_ids))
        except ConfigError:
            return []
    out = []
    for u in units:
        fewest = len(encode_unit(tgt, PromptUnit(u.question, u.turn, [""] * u.turn)))
        out.append((fewest, fewest + u.turn * (cfg.max_new_tokens + ANSWER_MARGIN)))
    return out


def _cache_sizes(bounds: list[tuple[int, int]], max_new_tokens: int) -> list[int]:
    """Every static cache size (workbench.backend.compiled's buckets) a run on these prompts may open."""
    sizes: set[int] = set()
    for fewest, most in bounds:
        n, top = fewest + max_new_tokens + DRAFT_ROOM, most + max_new_tokens + DRAFT_ROOM
        while True:
            bucket = cache_len_bucket(n, None)
            sizes.add(bucket)
            if bucket >= top:
                break
            n = bucket + 1
    return sorted(sizes)


def _prepare_models(backend: str, arms: list, tgt, drf, max_lens: list[int], say: Progress,
                    device: str | None = None) -> float:
    """Compile (or load) `backend` for the target (and each draft an arm uses) at every size; seconds."""
    models = [tgt] + list({id(m): m for a in arms if (m := arm_draft(a, drf, device)) is not None}.values())
    seconds = 0.0
    for lm in models:
        for n in max_lens:
            seconds += prepare(backend, lm, min(n, lm.max_positions or n), progress=say)
    return seconds


def _compiled_for(arm, n_prompt: int, tgt, drf, cfg: BenchConfig, say: Progress) -> None:
    """Before a run (and its clock): compile for its cache size if the warm-up's estimate missed it."""
    if isinstance(arm, HFArm) or arm.backend == "eager":
        return
    seconds = _prepare_models(arm.backend, [arm], tgt, drf, [n_prompt + cfg.max_new_tokens + DRAFT_ROOM], say,
                              cfg.device)
    if seconds:
        say(f"bench: compiled {arm.backend} for a {n_prompt}-token prompt in {seconds:.0f} s (before the run's clock)")


def bench_env(tgt, drf, cfg: BenchConfig) -> dict[str, Any]:
    """The environment a benchmark's results depend on, with the models and the measured read and copy bandwidths."""
    env = environment(tgt)
    env.update(
        draft=drf.spec if drf else None, draft_dtype=str(drf.dtype).replace("torch.", "") if drf else None,
        copy_bandwidth_Bps=copy_bandwidth(cfg.bandwidth_mib, device=tgt.device),
        read_bandwidth_Bps=read_bandwidth(cfg.bandwidth_mib, device=tgt.device),
        target_weight_bytes=weight_bytes_per_token(tgt.model),
        draft_weight_bytes=weight_bytes_per_token(drf.model) if drf else None,
    )
    return env


def bandwidths_now(arm, tgt, cfg: BenchConfig) -> dict[str, float]:
    """Before each plain-decoding run (ours, traced or not): the read and copy bandwidths measured again, right
    then, for the run's env. The roofline of that run is judged against them (bench.report): a shared machine's
    bandwidth moves by tens of percent within minutes, so the one measured as the benchmark started can be far
    from the one its runs met. Outside the run's clock; a fraction of a second."""
    if isinstance(arm, HFArm) or arm.method != BASELINE:
        return {}
    return {"copy_bandwidth_Bps": copy_bandwidth(cfg.bandwidth_mib, repeats=3, device=tgt.device),
            "read_bandwidth_Bps": read_bandwidth(cfg.bandwidth_mib, repeats=3, device=tgt.device)}


def bench_config(cfg: BenchConfig, target: str, draft: str | None, arms: list[Arm], hf_arms: list[HFArm],
                 questions: list, units: list[PromptUnit]) -> dict[str, Any]:
    """The benchmark row's config: what was asked, the arms (one per backend) and the prompts."""
    return {"backends": list(cfg.backends),
        "suite": cfg.suite, "suite_file": str(suite_path(cfg.suite)), "methods": list(cfg.methods),
        "target": target, "draft": draft, "max_new_tokens": cfg.max_new_tokens,
        "repeats": cfg.repeats, "limit": cfg.limit, "categories": categories_of(questions),
        "question_ids": [q.key for q in questions] if cfg.question_ids is not None else None,
        "n_questions": len(questions), "n_prompts": len(units),
        "params": cfg.params, "sweeps": [{"method": m, "key": k, "values": v} for m, k, v in cfg.sweeps],
        "arms": [asdict(a) for a in arms], "hf_arms": [asdict(a) for a in hf_arms],
        "compare_hf": cfg.compare_hf, "trace_overhead": cfg.trace_overhead, "warmup_tokens": cfg.warmup_tokens,
        "threads": cfg.threads,
        "sampling": GREEDY.to_dict(),
    }


def _arm_order(arms: list, repeat: int) -> list:
    """All arms of one prompt back to back (so load drift hits them alike), rotated by one each repeat.

    The first repeat starts with the baseline, whose answers later turns need.
    """
    k = repeat % len(arms)
    return arms[k:] + arms[:k]


def encode_unit(tgt, unit: PromptUnit) -> list[int]:
    """The token ids a benchmark decodes for one prompt: its chat through the target's template (plain
    "User: ... Assistant:" text for a model without one)."""
    messages = unit.messages()
    if tgt.has_chat_template:
        ids = tgt.encode_prompt(messages, chat=True)
    else:  # no template: the conversation as plain text
        text = "\n\n".join(("User: " if m["role"] == "user" else "Assistant: ") + m["content"] for m in messages)
        ids = tgt.encode_prompt(text + "\n\nAssistant:", chat=False)
    if not ids:
        raise ConfigError(f"prompt {unit.key} encodes to no tokens")
    return ids


def _warm_up(arms: list, hf_arms: list[HFArm], unit: PromptUnit, tgt, drf, cfg: BenchConfig, generate,
             say: Progress, units: list[PromptUnit] | None = None) -> dict[str, Any]:
    """Everything done before timing, backend by backend -> env entries {"warmup_s": {backend: s}, "hf_warmup_s"}.

    Per backend: compile the models for every cache size the prompts need (`units`; None: the
    suite's), then one short unlogged generation per arm, so first-call costs (compiling,
    allocations, lazy init) are never timed. Then one unlogged generation per transformers arm.
    """
    prompt_ids = encode_unit(tgt, PromptUnit(unit.question, 0))
    n = min(cfg.warmup_tokens, cfg.max_new_tokens)
    sizes = None
    warmup: dict[str, float] = {}
    for backend in dict.fromkeys(a.backend for a in arms):
        mine = [a for a in arms if a.backend == backend]
        t0 = time.perf_counter()
        if backend != "eager":
            if sizes is None:
                sizes = _cache_sizes(prompt_bounds(cfg, tgt, units), cfg.max_new_tokens)
            say(f"bench: preparing the {backend} backend (cache sizes {', '.join(map(str, sizes)) or '-'})...")
            _prepare_models(backend, mine, tgt, drf, sizes, say, cfg.device)
        for arm in mine:
            generate(tgt, arm.method, prompt_ids, draft=arm_draft(arm, drf, cfg.device), params=arm.params, sampling=GREEDY,
                     decode=DecodeConfig(max_new_tokens=n, trace=arm.trace), backend=backend, acceptance=arm.acceptance, kv=arm.kv,
                     progress=say)  # a cost-aware arm measures this machine's profile here, not while timed
        warmup[backend] = round(time.perf_counter() - t0, 3)
        say(f"bench: warm-up on {backend} ({len(mine)} arms x {n} tokens"
            + (", compiling first" if backend != "eager" else "") + f") took {warmup[backend]:.1f}s")
    hf_warmup: dict[str, float] = {}
    for arm in hf_arms:
        if arm.method == STATIC:
            say(f"bench: compiling {arm.label} (transformers' own torch.compile, static cache of "
                f"{arm.params.get('max_cache_len')} positions)...")
        hf_warmup[arm.label] = round(hf_warm_up(arm.method, tgt, prompt_ids, n, draft=drf,
                                                max_cache_len=arm.params.get("max_cache_len")), 3)
        say(f"bench: warm-up of {arm.label} took {hf_warmup[arm.label]:.1f}s")
    return {"backends": list(warmup), "warmup_s": warmup, "hf_warmup_s": hf_warmup}


def _run_params(arm, unit: PromptUnit, repeat: int, cfg: BenchConfig, trace: bool) -> dict[str, Any]:
    return {**arm.params, "max_new_tokens": cfg.max_new_tokens, "chat": True, "bench.arm": arm.label,
            "bench.category": unit.category, "bench.subcategory": unit.question.subcategory or unit.category,
            "bench.prompt": unit.key, "bench.question_id": unit.question.key, "bench.turn": unit.turn + 1,
            "bench.repeat": repeat, "bench.trace": trace, "bench.backend": arm.backend,
            **({"acceptance": arm.acceptance.text()} if isinstance(arm, Arm) and arm.acceptance.rule != "exact"
               else {}),
            **({"kv": arm.kv.text()} if isinstance(arm, Arm) and arm.kv.active else {})}


def _run_env(env: dict[str, Any], arm) -> dict[str, Any]:
    """A run's env: the benchmark's, with the run's backend and its warm-up (as workbench.api.run records them)."""
    out = {k: v for k, v in env.items() if k not in ("backends", "warmup_s", "hf_warmup_s")}
    warm = (env.get("hf_warmup_s") if isinstance(arm, HFArm) else env.get("warmup_s")) or {}
    out.update(backend=arm.backend, warmup_s=warm.get(arm.key if isinstance(arm, HFArm) else arm.backend))
    return out


def _recording(store, bench_id: str, arm, unit: PromptUnit, repeat: int, prompt_ids: list[int], target: str,
               draft: str | None, cfg: BenchConfig, env: dict[str, Any], trace: Trace,
               decode_text=None) -> Recording:
    """Record one of the benchmark's runs (workbench.record), with the benchmark's labels as parameters."""
    is_hf = isinstance(arm, HFArm)
    uses_draft = (arm.method == "hf.assisted") if is_hf else arm.needs_draft
    return Recording(store, trace, prompt=unit.messages(), decode_text=decode_text,
                     method=arm.method, target=target, draft=draft if uses_draft else None,
                     params=_run_params(arm, unit, repeat, cfg, True if is_hf else arm.trace),
                     sampling=GREEDY.to_dict(), env=_run_env(env, arm), benchmark_id=bench_id,
                     source="bench-hf" if is_hf else "bench", prompt_ids=prompt_ids)


def _decode(arm, prompt_ids: list[int], tgt, drf, cfg: BenchConfig, generate, trace, keep_prompt_kv: bool = False):
    """Decode one arm on one prompt -> (trace, text, the prompt's keys/values kept for the quality accounting or
    None: engine.generate's keep_prompt_kv); `trace` is filled in place for our own arms."""
    if isinstance(arm, HFArm):
        output, trace = hf_run(arm.method, tgt, prompt_ids, cfg.max_new_tokens, draft=drf,
                               max_cache_len=arm.params.get("max_cache_len"))
        return trace, tgt.decode(output), None
    result = generate(tgt, arm.method, prompt_ids, draft=arm_draft(arm, drf, cfg.device),
                      params=arm.params, sampling=GREEDY,
                      decode=DecodeConfig(max_new_tokens=cfg.max_new_tokens, trace=arm.trace), trace=trace,
                      backend=arm.backend, acceptance=arm.acceptance, kv=arm.kv, keep_prompt_kv=keep_prompt_kv)
    return result.trace, result.text, result.prompt_kv


def _brief(run_id: str | None, trace, text: str, quality: Quality | None = None) -> dict[str, Any]:
    s = trace.summary()
    return {"run_id": run_id, "text": text, "new_tokens": s.new_tokens, "tokens_per_s": s.tokens_per_s,
            "tau": s.mean_accepted_tokens, "agreement": quality.agreement if quality is not None else None,
            "lossless": trace.lossless}


def _run_one(store, bench_id: str, arm, unit: PromptUnit, repeat: int, prompt_ids: list[int], tgt, drf,
             cfg: BenchConfig, env: dict[str, Any], generate,
             baselines: dict[tuple[str, str], BaselineOutput] | None = None) -> dict[str, Any]:
    trace = Trace(method=arm.method, params=dict(arm.params), prompt_ids=list(prompt_ids))
    own = arm_draft(arm, drf, cfg.device)
    with _recording(store, bench_id, arm, unit, repeat, prompt_ids, tgt.spec, own.spec if own else None, cfg, env,
                    trace, decode_text=tgt.decode) as rec:
        trace, text, prompt_kv = _decode(arm, prompt_ids, tgt, drf, cfg, generate, trace,
                                         keep_prompt_kv=baselines is not None)
        quality = None
        if baselines is not None:  # after the decode: never inside the run's clock
            quality = _quality(arm, unit, prompt_ids, trace, text, tgt, baselines, rec.run_id, prompt_kv)
        rec.finish(trace, text, quality=quality)
    return _brief(rec.run_id, trace, text, quality)


def _quality(arm, unit: PromptUnit, prompt_ids: list[int], trace: Trace, text: str, tgt,
             baselines: dict[tuple[str, str], BaselineOutput], run_id: str | None, prompt_kv=None) -> Quality | None:
    """A run's quality (workbench.accounting) against the baseline arm's first run of its prompt on the same
    backend (any backend's when that one has none); the baseline arm's first run is its own baseline, and
    keeps its measured NLL for the arms after it. None before any baseline of the prompt ran. prompt_kv: the
    run's GenerationResult.prompt_kv."""
    mine = (unit.key, arm.backend)
    if arm.method == BASELINE and trace.lossless and mine not in baselines:
        baselines[mine] = BaselineOutput(trace.output_ids, text, None, run_id, token_nll=trace.output_nll)
    base = baselines.get(mine) or next((b for (k, _), b in baselines.items() if k == unit.key), None)
    if base is None:
        return None
    q = quality_against(tgt, prompt_ids, trace.output_ids, text, base, unit.question.task,
                        output_token_nll=trace.output_nll, prompt_kv=prompt_kv)
    if base.nll is None:
        for key, b in baselines.items():
            if b is base:
                baselines[key] = replace(b, nll=q.baseline_nll)
    return q


# ---------------------------------------------------------------- blocks (cluster workers)


def decode_block(question, repeat: int, history: list[str] | None, arms: list, tgt, drf, cfg: BenchConfig,
                 generate) -> tuple[list[dict[str, Any]], list[str]]:
    """Every arm on every turn of `question` for one repeat, in the in-process order; nothing is stored.

    `arms` starts with the baseline. `history`: the baseline's answers to the turns
    (from repeat 0), or None to make them here, as repeat 0 does in process.
    Returns one record per run (the trace as a dict) and the history.
    """
    answers = list(history or [])
    records: list[dict[str, Any]] = []
    for turn in range(len(question.turns)):
        unit = PromptUnit(question, turn, answers)
        prompt_ids = encode_unit(tgt, unit)
        for arm in _arm_order(list(arms), repeat):
            trace = Trace(method=arm.method, params=dict(arm.params), prompt_ids=list(prompt_ids))
            trace, text, _ = _decode(arm, prompt_ids, tgt, drf, cfg, generate, trace)
            if arm == arms[0] and len(answers) == turn:
                answers.append(text)  # the baseline's answer feeds the next turn
            records.append({"arm": arm.label, "turn": turn, "repeat": repeat, "prompt_ids": list(prompt_ids),
                            "trace": trace.to_dict(), "text": text})
    return records, answers


def store_run(store, bench_id: str, record: dict[str, Any], arm, question, history: list[str], cfg: BenchConfig,
              target: str, draft: str | None, env: dict[str, Any]) -> dict[str, Any]:
    """Write one run of a block that came back whole (a `decode_block` record) under the benchmark."""
    unit = PromptUnit(question, record["turn"], history)
    trace = Trace.from_dict(record["trace"])
    with _recording(store, bench_id, arm, unit, record["repeat"], record["prompt_ids"], target, draft, cfg, env,
                    trace) as rec:
        rec.finish(trace, record["text"])
    return _brief(rec.run_id, trace, record["text"])
