"""How tests/data/store_v1.sqlite was made: a run store written by the version-1 store code.

Run from a checkout of commit 9366e65 (the last with schema version 1), e.g.::

    git worktree add /tmp/wt_old 9366e65
    cd /tmp/wt_old && PYTHONPATH=. python /path/to/make_store_v1.py store_v1.sqlite

It holds two finished runs (one speculative with sampling), a failed run with
partial steps, a benchmark with one run, and a run left ``running`` since 2024
by a process that died; the file is checkpointed, VACUUMed and in rollback
journal mode, so it is one self-contained file. tests/test_store_durability.py
upgrades a copy of it. Kept for the record; today's code cannot run it.
"""
import sqlite3, sys
from pathlib import Path

import workbench.api as api
import workbench.record as record
from store import RunStore
from workbench.config import SamplingConfig

out = Path(sys.argv[1])
out.unlink(missing_ok=True)
s = RunStore(out)
record.STEP_FLUSH_EVERY = 4
# finished greedy run
api.run("autoregressive", "Hello there", target="tiny-random", chat=False, max_new_tokens=12, store=s, device="cpu")
# finished speculative run with a draft model and sampling
api.run("speculative", "Once upon a time", target="tiny-random", draft="tiny-random:seed=1", chat=False,
        max_new_tokens=10, store=s, device="cpu", params={"gamma": 3},
        sampling=SamplingConfig(temperature=0.8, top_k=20, seed=3))
# failed run with partial steps
n = {"k": 0}
def boom(step, trace):
    n["k"] += 1
    if n["k"] == 6:
        raise RuntimeError("device fell over")
try:
    api.run("prompt_lookup", "abc abc abc abc", target="tiny-random", chat=False, max_new_tokens=30, store=s,
            device="cpu", on_step=boom)
except RuntimeError:
    pass
# a benchmark with one run
b = s.start_benchmark(suite="smoke", config={"methods": ["autoregressive"]}, env={"device": "cpu"})
api.run("autoregressive", "The capital of France is", target="tiny-random", chat=False, max_new_tokens=8,
        store=s, device="cpu", benchmark_id=b, source="bench")
s.finish_benchmark(b)
# a run left `running` by a process that died long ago, with a few steps
tr = api.run("autoregressive", "Stuck", target="tiny-random", chat=False, max_new_tokens=6, log=False, device="cpu").trace
rid = s.start_run(method="autoregressive", target="tiny-random", draft=None, prompt="Stuck",
                  params={"max_new_tokens": 6, "chat": False}, sampling=SamplingConfig().to_dict(), env={"device": "cpu"},
                  prompt_ids=tr.prompt_ids)
s.append_steps(rid, tr.steps[:3])
s.close()
with sqlite3.connect(out) as c:
    c.execute("UPDATE runs SET created_at = '2024-01-02 03:04:05.000000' WHERE id = ?", (rid,))
c.close()
c = sqlite3.connect(out)
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.execute("PRAGMA journal_mode=DELETE")
c.execute("VACUUM")
c.close()
print("runs", [r for r in sqlite3.connect(out).execute("select id, method, status from runs")])
