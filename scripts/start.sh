#!/usr/bin/env bash
# Set up (if needed) and launch the Decoding Workbench app on http://127.0.0.1:7860
# Extra arguments go to `workbench ui` (e.g. --port 8080, --host 0.0.0.0, --share).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/workbench ui "$@"
