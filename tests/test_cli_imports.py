"""The store commands stay light: `workbench runs ...` never imports torch or transformers.

Each case runs in a fresh interpreter, since this test process has torch loaded already.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from workbench.cli import main
rc = main(json.loads(sys.argv[1]))
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def _run_cli(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "err": proc.stderr}


@pytest.mark.parametrize("command, code", [
    (["runs", "list"], 0),
    (["runs", "list", "--json"], 0),
    (["runs", "show", "no-such-run"], 2),  # an unknown run id is a one-line error (exit 2), not a crash
    (["runs", "export", "--csv", "{tmp}/runs.csv"], 0),
    (["runs", "delete", "no-such-run"], 2),
    (["advise", "--list"], 0),  # stored advice are read without the advisor's machinery
])
def test_store_commands_do_not_import_torch(tmp_path, command, code):
    argv = ["--db", str(tmp_path / "runs.sqlite")] + [c.replace("{tmp}", str(tmp_path)) for c in command]
    out = _run_cli(argv)
    assert out["rc"] == code, out
    if code:
        assert out["err"].splitlines() == ["error: no run with id 'no-such-run'"], out["err"]
    assert out["torch"] is False and out["transformers"] is False


def test_model_error_imports_without_torch():
    code = ("import sys; from workbench.models import ModelError, AllowList, parse_spec; "
            "from workbench.models.errors import ModelError as E; "
            "assert E is ModelError; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
