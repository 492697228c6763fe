"""Version 6 of the run store: a run's lossless flag, what made it lossy and its quality, stored and read back;
an older file upgrades keeping its rows (every run before version 6 was lossless)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from store import SCHEMA_REVISION, SCHEMA_VERSION, RunStore
from workbench.quality import QUALITY_COLUMNS, compare

from .test_store import make_trace, start


def test_a_lossy_run_and_its_quality_are_stored_and_read_back(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as s:
        plain = start(s)
        s.finish_run(plain, make_trace(), "x")
        lossy = start(s)
        trace = make_trace()
        trace.lossy = ["relaxed acceptance: typical (eps=0.3, delta=0.09)"]
        q = compare([1, 2, 3], [1, 2, 4], output_text="a b c", baseline_text="a b d", nll=1.5, baseline_nll=1.0,
                    baseline_run=plain)
        s.finish_run(lossy, trace, "y", quality=q.to_dict())
        rec = s.get_run(lossy)
        assert rec.lossless is False and rec.lossy == trace.lossy
        assert rec.quality["agreement"] == q.agreement and rec.quality["nll_gap"] == 0.5
        assert rec.quality["first_divergence"] == 2 and rec.quality["baseline_run"] == plain
        assert s.load_trace(lossy).lossy == trace.lossy and s.load_trace(plain).lossless
        assert s.get_run(plain).lossless and s.get_run(plain).quality is None
        assert [r.id for r in s.list_runs(lossless=False)] == [lossy]
        assert [r.id for r in s.list_runs(lossless=True)] == [plain]
        df = s.runs_dataframe().set_index("id")
        assert not df.loc[lossy, "lossless"] and df.loc[lossy, "lossy"] == trace.lossy[0]
        assert df.loc[lossy, "quality.rouge_l"] == q.rouge_l and df.loc[plain, "lossless"]
        assert all(f"quality.{k}" in df.columns for k in QUALITY_COLUMNS)
        assert rec.to_dict()["lossy"] == trace.lossy and rec.to_dict()["lossless"] is False


def test_a_version_5_file_upgrades_keeping_its_runs_as_lossless(tmp_path: Path) -> None:
    from alembic import command

    from store.schema import alembic_config

    path = tmp_path / "v5.sqlite"
    with RunStore(path) as s:
        rid = start(s)
        s.finish_run(rid, make_trace(), "kept")
    command.downgrade(alembic_config(str(path)), "0005")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
        cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        assert "lossless" not in cols and "quality" not in cols
    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        rec = s.get_run(rid)
        assert rec.output_text == "kept" and rec.lossless and rec.lossy == [] and rec.quality is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_REVISION,)]
        assert conn.execute("SELECT lossless, lossy, quality FROM runs").fetchall() == [(1, None, None)]


def test_a_lossy_plain_run_is_no_baseline(tmp_path: Path) -> None:
    """Plain decoding with a lossy option is not the target's own decoding: neither speedups nor quality use it."""
    with RunStore(tmp_path / "runs.sqlite") as s:
        def plain(lossy: list[str]) -> str:
            rid = start(s, method="autoregressive")
            trace = make_trace(method="autoregressive")
            trace.lossy = lossy
            s.finish_run(rid, trace, "x")
            return rid

        good = plain([])
        plain(["KV cache: int4 keys and values"])  # newer, but lossy
        other = start(s)
        s.finish_run(other, make_trace(), "y")
        assert s.baseline_for(other).id == good
