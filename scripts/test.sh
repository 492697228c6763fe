#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser test drives Debian's Chromium (Playwright cannot download its own browser here).
if [ ! -x /usr/bin/chromium ] && [ -z "${WORKBENCH_SKIP_BROWSER_INSTALL:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "test: installing chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "test: /usr/bin/chromium is missing; install Debian's chromium to run the browser test" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
