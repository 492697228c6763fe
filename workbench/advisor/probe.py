"""The advice's benchmarks: the probe (every configuration, once, on the probe prompts, a few dozen tokens)
and the verification (the top few and plain decoding, interleaved, on the other prompts).

Both are ordinary benchmarks (workbench.bench.runner): arms given whole, plain decoding first, every
arm of a prompt back to back, each run recorded with the benchmark's labels, so History lists them and
`workbench bench --show ID` reports them. What the probe measured is read back from the stored runs
(never from memory): each run's decode steps and prefill become a predict.Sample.
"""
from __future__ import annotations

from typing import Callable

from ..bench.arms import Arm
from ..bench.runner import BenchConfig, run_in_process
from ..config import BASELINE
from ..methods import resolve_params
from .configs import Config
from .predict import Sample
from .prompts import PromptSet

Progress = Callable[[str], None]
BANDWIDTH_MIB = 16  # the benchmark's bandwidth measurements (for its roofline): kept short here


def bench_config(target: str, arms: list[Config], prompts: PromptSet, question_ids: list[str], tokens: int,
                 repeats: int, backend: str, device: str | None) -> BenchConfig:
    """A benchmark of plain decoding and `arms` on some of the advice's questions."""
    baseline = Arm(BASELINE, BASELINE, resolve_params(BASELINE, {}))
    return BenchConfig(suite=prompts.suite, methods=list(dict.fromkeys(c.method for c in arms)), target=target,
                       max_new_tokens=tokens, repeats=repeats, categories=prompts.categories,
                       question_ids=question_ids, trace_overhead=False, device=device, warmup_tokens=4,
                       bandwidth_mib=BANDWIDTH_MIB, cluster="none", backends=[backend],
                       arms=[baseline] + [c.arm() for c in arms])


def run(store, cfg: BenchConfig, progress: Progress | None) -> str:
    """Run a benchmark in this process (the advice's timings are all this machine's); its id."""
    return run_in_process(cfg, store, progress)


def read_samples(store, bench_id: str) -> dict[str, list[Sample]]:
    """Every finished run of a benchmark as a Sample, by arm label (plain decoding under BASELINE)."""
    out: dict[str, list[Sample]] = {}
    for rec in store.list_runs(benchmark_id=bench_id, status="finished", limit=None):
        label = rec.params.get("bench.arm")
        if label is None:
            continue
        trace = store.load_trace(rec.id)
        steps = trace.steps
        prefill = next((s.total_s for s in steps if s.kind == "prefill"), 0.0)
        out.setdefault(label, []).append(Sample(
            prompt=rec.params.get("bench.prompt", rec.id), category=rec.params.get("bench.category", "?"),
            steps=[s for s in steps if s.kind == "decode"], prefill_s=prefill,
            prompt_tokens=len(trace.prompt_ids), run_id=rec.id))
    return out
