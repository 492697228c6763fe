"""Run a benchmark: every arm on every prompt, R times, in one process, logged under one benchmark id.

Order of work (all in this process, on the same prompts):
1. load the target (and draft), measure copy bandwidth for the roofline, record
   the environment with a new benchmark row;
2. warm-up: one short generation per arm (and per transformers arm), not logged;
3. for each repeat r: for each prompt: for each arm (the autoregressive
   baseline, its untraced twin when measuring tracing overhead, the methods and
   sweep points, the transformers arms with --compare-hf): decode and log the
   run. All arms of a prompt run back to back, so a slow spell on a shared
   machine hits every arm alike instead of whichever arm ran then; the arm
   order rotates by one each repeat so no arm always runs first.

Multi-turn questions run turn by turn; turn k's prompt contains the baseline's
own greedy answers to the earlier turns, which the baseline's first repeat
produces before any other arm needs them.

Runs are decoded with workbench.engine.generate and written with the store's
start_run/finish_run directly (not workbench.api.run), so no store write falls
inside the timed region, and so each run carries the benchmark's own labels as
parameters: bench.arm, bench.category, bench.prompt ("question.turn"),
bench.repeat, bench.trace. Everything the report shows is computed from those
stored runs (workbench.bench.report), never from in-memory state.

With a cluster (BenchConfig.cluster, `--cluster`), workbench.cluster.fanout
spreads the same work over Ray workers in *blocks*: one question (all its
turns) for one repeat, every arm including the baseline interleaved as above
(`decode_block`), after each worker's own warm-up, so every speedup stays a
ratio measured in one process on one device. The caller stores each block's
runs (`store_run`) once the block has come back whole, with the worker's env.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..config import ConfigError, DecodeConfig, SamplingConfig
from .arms import Arm, build_arms
from .hf import HF_METHODS, hf_run, hf_settings
from .suites import PromptUnit, categories_of, filter_questions, load_suite, prompt_units, suite_path

Progress = Callable[[str], None]
GREEDY = SamplingConfig()


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

    def check(self) -> None:
        DecodeConfig(max_new_tokens=self.max_new_tokens)  # same range checks as a run
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


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class _Eta:
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


def run_benchmark(cfg: BenchConfig, store, progress: Progress | None = _stderr) -> str:
    """Run the benchmark described by `cfg`, log it to `store`, return the benchmark id."""
    from ..cluster import cluster_address
    from ..engine import generate
    from ..models import EMBEDDED_DEFAULT, check_compatible, load_model

    say = progress or (lambda _msg: None)
    cfg.check()
    arms = build_arms(cfg.methods, cfg.params, cfg.sweeps, trace_overhead=cfg.trace_overhead)
    questions = filter_questions(load_suite(cfg.suite), cfg.categories, cfg.limit)
    units = prompt_units(questions)
    if any(a.needs_draft for a in arms) and not cfg.draft:
        names = sorted({a.method for a in arms if a.needs_draft})
        raise ConfigError(f"method {', '.join(names)} needs a draft model: add --draft, e.g. smollm2-135m:bf16")
    address = cluster_address(cfg.cluster)
    if address is not None:
        from ..cluster.fanout import run_benchmark_on_cluster

        return run_benchmark_on_cluster(cfg, store, address, arms, questions, say)
    if cfg.workers is not None:
        raise ConfigError("--workers needs --cluster (in process there is one worker: this process)")

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    target_spec = cfg.target or EMBEDDED_DEFAULT
    tgt = load_model(target_spec, device=cfg.device, progress=say)
    drf = load_model(cfg.draft, device=cfg.device, progress=say) if cfg.draft else None
    if drf is not None:
        check_compatible(tgt, drf)
    hf_arms = hf_arms_for(cfg, tgt, drf)

    say(f"bench: measuring memory bandwidth ({cfg.bandwidth_mib} MiB copy)...")
    env = bench_env(tgt, drf, cfg)
    config = bench_config(cfg, tgt.spec, drf.spec if drf else None, arms, hf_arms, questions, units)
    bench_id = store.start_benchmark(suite=cfg.suite, config=config, env=env)
    say(f"bench: benchmark {bench_id} | {len(units)} prompts ({len(questions)} questions) x "
        f"{len(arms) + len(hf_arms)} arms x {cfg.repeats} repeats | target {tgt.spec}"
        + (f" draft {drf.spec}" if drf else ""))
    try:
        _warm_up(arms, hf_arms, units[0], tgt, drf, cfg, generate, say)
        labels = [a.label for a in list(arms) + hf_arms]
        eta = _Eta([lbl for _ in range(cfg.repeats) for lbl in labels for _ in units])
        total, n_done = len(eta.pending), 0
        encoded: dict[str, list[int]] = {}
        for r in range(cfg.repeats):
            for unit in units:
                for arm in _arm_order(list(arms) + hf_arms, r):
                    if unit.key not in encoded:
                        encoded[unit.key] = _encode(tgt, unit)
                    prompt_ids = encoded[unit.key]
                    t0 = time.perf_counter()
                    summary = _run_one(store, bench_id, arm, unit, r, prompt_ids, tgt, drf, cfg, env, generate)
                    if arm.label == arms[0].label and r == 0 and len(unit.history) == unit.turn:
                        unit.history.append(summary["text"])  # the baseline's answer feeds the next turn
                    n_done += 1
                    left = eta.done(arm.label, time.perf_counter() - t0)
                    where = f"{unit.category}/{unit.key}"
                    say(f"[{n_done}/{total}] r{r + 1}/{cfg.repeats} {arm.label:<28} {where:<22} "
                        f"{summary['new_tokens']:>4} tok {summary['tokens_per_s']:6.1f} tok/s "
                        f"tau {summary['tau']:.2f} | ETA {_fmt_eta(left)}")
    except BaseException as exc:
        store.finish_benchmark(bench_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    store.finish_benchmark(bench_id)
    return bench_id


def hf_arms_for(cfg: BenchConfig, tgt, drf) -> list[HFArm]:
    """The transformers arms of --compare-hf (assisted generation only with a draft model)."""
    if not cfg.compare_hf:
        return []
    return [HFArm(m, hf_settings(m, tgt, drf)) for m in HF_METHODS if m != "hf.assisted" or drf is not None]


def bench_env(tgt, drf, cfg: BenchConfig) -> dict[str, Any]:
    """The environment a benchmark's results depend on, with the models and the measured copy bandwidth."""
    from ..api import environment
    from .roofline import copy_bandwidth, weight_bytes_per_token

    env = environment(tgt)
    env.update(
        draft=drf.spec if drf else None, draft_dtype=str(drf.dtype).replace("torch.", "") if drf else None,
        copy_bandwidth_Bps=copy_bandwidth(cfg.bandwidth_mib, device=tgt.device),
        target_weight_bytes=weight_bytes_per_token(tgt.model),
        draft_weight_bytes=weight_bytes_per_token(drf.model) if drf else None,
    )
    return env


def bench_config(cfg: BenchConfig, target: str, draft: str | None, arms: list[Arm], hf_arms: list[HFArm],
                 questions: list, units: list[PromptUnit]) -> dict[str, Any]:
    """The benchmark row's config: what was asked, the arms and the prompts."""
    return {
        "suite": cfg.suite, "suite_file": str(suite_path(cfg.suite)), "methods": list(cfg.methods),
        "target": target, "draft": draft, "max_new_tokens": cfg.max_new_tokens,
        "repeats": cfg.repeats, "limit": cfg.limit, "categories": categories_of(questions),
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


def _encode(tgt, unit: PromptUnit) -> list[int]:
    messages = unit.messages()
    if tgt.has_chat_template:
        ids = tgt.encode_prompt(messages, chat=True)
    else:  # no template: the conversation as plain text
        text = "\n\n".join(("User: " if m["role"] == "user" else "Assistant: ") + m["content"] for m in messages)
        ids = tgt.encode_prompt(text + "\n\nAssistant:", chat=False)
    if not ids:
        raise ConfigError(f"prompt {unit.key} encodes to no tokens")
    return ids


def _warm_up(arms: list[Arm], hf_arms: list[HFArm], unit: PromptUnit, tgt, drf, cfg: BenchConfig, generate,
             say: Progress) -> None:
    """One short, unlogged generation per arm, so first-call costs (allocations, lazy init) are not timed."""
    prompt_ids = _encode(tgt, PromptUnit(unit.question, 0))
    n = min(cfg.warmup_tokens, cfg.max_new_tokens)
    t0 = time.perf_counter()
    for arm in arms:
        generate(tgt, arm.method, prompt_ids, draft=drf, params=arm.params, sampling=GREEDY,
                 decode=DecodeConfig(max_new_tokens=n, trace=arm.trace))
    for arm in hf_arms:
        hf_run(arm.method, tgt, prompt_ids, n, draft=drf)
    say(f"bench: warm-up ({len(arms) + len(hf_arms)} arms x {n} tokens) took {time.perf_counter() - t0:.1f}s")


def _run_params(arm, unit: PromptUnit, repeat: int, cfg: BenchConfig, trace: bool) -> dict[str, Any]:
    return {**arm.params, "max_new_tokens": cfg.max_new_tokens, "chat": True, "bench.arm": arm.label,
            "bench.category": unit.category, "bench.subcategory": unit.question.subcategory or unit.category,
            "bench.prompt": unit.key, "bench.question_id": unit.question.key, "bench.turn": unit.turn + 1,
            "bench.repeat": repeat, "bench.trace": trace}


def _start_run(store, bench_id: str, arm, unit: PromptUnit, repeat: int, prompt_ids: list[int], target: str,
               draft: str | None, cfg: BenchConfig, env: dict[str, Any]) -> str:
    is_hf = isinstance(arm, HFArm)
    uses_draft = (arm.method == "hf.assisted") if is_hf else arm.needs_draft
    messages = unit.messages()
    return store.start_run(
        method=arm.method, target=target, draft=draft if uses_draft else None,
        prompt="\n".join(f"{m['role']}: {m['content']}" for m in messages), prompt_json=messages,
        params=_run_params(arm, unit, repeat, cfg, True if is_hf else arm.trace),
        sampling=GREEDY.to_dict(), env=env, benchmark_id=bench_id, source="bench-hf" if is_hf else "bench",
        prompt_ids=prompt_ids)


def _decode(arm, prompt_ids: list[int], tgt, drf, cfg: BenchConfig, generate, trace):
    """Decode one arm on one prompt -> (trace, text); `trace` is filled in place for our own arms."""
    if isinstance(arm, HFArm):
        output, trace = hf_run(arm.method, tgt, prompt_ids, cfg.max_new_tokens, draft=drf)
        return trace, tgt.decode(output)
    result = generate(tgt, arm.method, prompt_ids, draft=drf if arm.needs_draft else None,
                      params=arm.params, sampling=GREEDY,
                      decode=DecodeConfig(max_new_tokens=cfg.max_new_tokens, trace=arm.trace), trace=trace)
    return result.trace, result.text


def _brief(run_id: str | None, trace, text: str) -> dict[str, Any]:
    s = trace.summary()
    return {"run_id": run_id, "text": text, "new_tokens": s.new_tokens, "tokens_per_s": s.tokens_per_s,
            "tau": s.mean_accepted_tokens}


def _run_one(store, bench_id: str, arm, unit: PromptUnit, repeat: int, prompt_ids: list[int], tgt, drf,
             cfg: BenchConfig, env: dict[str, Any], generate) -> dict[str, Any]:
    from ..trace import Trace

    run_id = _start_run(store, bench_id, arm, unit, repeat, prompt_ids, tgt.spec, drf.spec if drf else None,
                        cfg, env)
    trace = Trace(method=arm.method, params=dict(arm.params), prompt_ids=list(prompt_ids))
    try:
        trace, text = _decode(arm, prompt_ids, tgt, drf, cfg, generate, trace)
    except BaseException as exc:
        from ..api import close_unfinished

        close_unfinished(store, run_id, exc, trace, tgt.decode(trace.output_ids))
        raise
    store.finish_run(run_id, trace, text)
    return _brief(run_id, trace, text)


# ---------------------------------------------------------------- blocks (cluster workers)


def decode_block(question, repeat: int, history: list[str] | None, arms: list, tgt, drf, cfg: BenchConfig,
                 generate, after_run: Callable[[], None] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every arm on every turn of `question` for one repeat, in the in-process order; nothing is stored.

    `arms` starts with the baseline. `history`: the baseline's answers to the turns
    (from repeat 0), or None to make them here, as repeat 0 does in process.
    Returns one record per run (the trace as a dict) and the history.
    """
    from ..trace import Trace

    answers = list(history or [])
    records: list[dict[str, Any]] = []
    for turn in range(len(question.turns)):
        unit = PromptUnit(question, turn, answers)
        prompt_ids = _encode(tgt, unit)
        for arm in _arm_order(list(arms), repeat):
            trace = Trace(method=arm.method, params=dict(arm.params), prompt_ids=list(prompt_ids))
            trace, text = _decode(arm, prompt_ids, tgt, drf, cfg, generate, trace)
            if arm.label == arms[0].label and len(answers) == turn:
                answers.append(text)  # the baseline's answer feeds the next turn
            records.append({"arm": arm.label, "turn": turn, "repeat": repeat, "prompt_ids": list(prompt_ids),
                            "trace": trace.to_dict(), "text": text})
            if after_run is not None:
                after_run()
    return records, answers


def store_run(store, bench_id: str, record: dict[str, Any], arm, question, history: list[str], cfg: BenchConfig,
              target: str, draft: str | None, env: dict[str, Any]) -> dict[str, Any]:
    """Write one run of a block that came back whole (a `decode_block` record) under the benchmark."""
    from ..trace import Trace

    unit = PromptUnit(question, record["turn"], history)
    trace = Trace.from_dict(record["trace"])
    run_id = _start_run(store, bench_id, arm, unit, record["repeat"], record["prompt_ids"], target, draft, cfg, env)
    store.finish_run(run_id, trace, record["text"])
    return _brief(run_id, trace, record["text"])
