"""The companion notebooks (notebooks/*.py, jupytext percent format) run top to bottom.

Each notebook is converted in memory with jupytext and executed with nbclient in a fresh
`python3` kernel, on the tiny random models by default and with few tokens, against a
temporary run store. Any cell that raises fails the test.

    pytest tests/test_notebooks.py                                             # tiny-random
    WORKBENCH_NOTEBOOK_MODEL=smollm2-135m pytest tests/test_notebooks.py       # the embedded model

WORKBENCH_NOTEBOOK_TOKENS sets the new tokens per run (default 16 on tiny-random, the
notebooks' own default otherwise); WORKBENCH_NOTEBOOK_CELL_TIMEOUT the seconds one cell may take.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
TINY = "tiny-random"
MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", TINY)
ON_TINY = MODEL.split(":")[0] == TINY
CELL_TIMEOUT = int(os.environ.get("WORKBENCH_NOTEBOOK_CELL_TIMEOUT", "300" if ON_TINY else "3600"))

pytestmark = pytest.mark.notebook


def _params():
    marks = [] if ON_TINY else [pytest.mark.real, pytest.mark.timeout(6 * 3600)]
    return [pytest.param(p, id=p.stem, marks=marks) for p in NOTEBOOKS]


def _kernel_env(db: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["WORKBENCH_DB"] = str(db)
    env["WORKBENCH_NOTEBOOK_MODEL"] = MODEL
    if ON_TINY:
        env.setdefault("WORKBENCH_NOTEBOOK_TOKENS", "16")
    # the kernel must import this checkout's packages even when it is not installed editable
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def test_there_are_notebooks():
    names = [p.stem for p in NOTEBOOKS]
    assert names[:4] == ["01_quickstart", "02_anatomy_of_a_step", "03_comparing_runs", "04_sweeps"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_source_is_reviewable(path):
    """Percent-format text with a parameter cell that holds the one model switch."""
    jupytext = pytest.importorskip("jupytext")
    text = path.read_text(encoding="utf-8")
    assert "format_name: percent" in text, f"{path.name} is not a jupytext percent-format notebook"
    nb = jupytext.reads(text, fmt="py:percent")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert 'os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")' in params[0].source, \
        f"{path.name}: the parameter cell must default to the embedded model and read WORKBENCH_NOTEBOOK_MODEL"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert re.search(r"^\s*import workbench\b", code, re.M), f"{path.name} does not import workbench"
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{path.name} explains nothing"


def test_no_ipynb_with_outputs_in_notebooks_dir():
    """The .py files are the source of truth; an .ipynb that carries outputs must not be committed."""
    nbformat = pytest.importorskip("nbformat")
    dirty = []
    for path in sorted(NB_DIR.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        nb = nbformat.read(path, as_version=4)
        n = sum(1 for c in nb.cells if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")))
        if n:
            dirty.append(f"{path.relative_to(ROOT)} ({n} cells with outputs)")
    assert not dirty, ("notebooks with outputs in notebooks/ (clear them with "
                       "`jupyter nbconvert --clear-output --inplace FILE` or delete them; "
                       "the .py files are the source of truth): " + ", ".join(dirty))


@pytest.mark.parametrize("path", _params())
def test_notebook_runs_top_to_bottom(path, tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from store import RunStore

    db = tmp_path / "runs.sqlite"
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute(env=_kernel_env(db))  # raises CellExecutionError on the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, json.dumps(errors, indent=1)[:2000]
    plots = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert plots, f"{path.name} drew no figure"
    # every run the notebook made is in the store, marked as a notebook run, and finished
    runs = RunStore(db).list_runs(limit=None)
    assert runs, f"{path.name} logged no run"
    ours = [r for r in runs if r.benchmark_id is None]
    assert all(r.source == "notebook" for r in ours), {r.source for r in ours}
    assert all(r.status == "finished" for r in runs), {(r.id[:8], r.status, r.error) for r in runs}
    assert all(r.target.split(":")[0] == MODEL.split(":")[0] for r in runs)
