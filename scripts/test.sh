#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest.
#
#   bash scripts/test.sh            everything (what .ci/run runs)
#   bash scripts/test.sh --quick    the fast subset: tiny models, eager backend; no compiled backend, slow,
#                                   embedded-model, browser, notebook or cluster tests (a few minutes)
#
# Each pytest process runs torch on one thread (tests/conftest.py), so on a machine with two or more CPUs
# the whole suite runs as two processes at once: the tests marked compiled, notebook or browser, and all
# the others (the two halves take about as long). WORKBENCH_TEST_JOBS=1 runs it in one process; so does
# passing -m, --pdb, --trace or --collect-only.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=()
ARGS=()
JOBS="${WORKBENCH_TEST_JOBS:-$( [ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] && echo 2 || echo 1 )}"
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=(-m "not (compiled or slow or real or browser or notebook or cluster)"); JOBS=1 ;;
    -m|-m*|--pdb|--trace|--collect-only|--co) ARGS+=("$arg"); JOBS=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
bash scripts/setup.sh
# The browser test drives Debian's Chromium (Playwright cannot download its own browser here).
if [ ${#QUICK[@]} -eq 0 ] && [ ! -x /usr/bin/chromium ] && [ -z "${WORKBENCH_SKIP_BROWSER_INSTALL:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "test: installing chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "test: /usr/bin/chromium is missing; install Debian's chromium to run the browser test" >&2
  fi
fi
PYTEST=(.venv/bin/python -m pytest)
if [ "$JOBS" = "1" ]; then
  exec "${PYTEST[@]}" ${QUICK[@]+"${QUICK[@]}"} ${ARGS[@]+"${ARGS[@]}"}  # (empty arrays: bash < 4.4 and set -u)
fi

# Two halves at once; every test is in exactly one (the second selects what the first does not).
HALF="compiled or notebook or browser"
LOG=$(mktemp)
"${PYTEST[@]}" -m "not ($HALF)" ${ARGS[@]+"${ARGS[@]}"} >"$LOG" 2>&1 &
OTHER=$!
trap 'kill "$OTHER" 2>/dev/null || true; rm -f "$LOG"' EXIT
echo "test: tests marked $HALF here; all the others in a second process, shown after these"
set +e
"${PYTEST[@]}" -m "$HALF" ${ARGS[@]+"${ARGS[@]}"}
FIRST=$?
wait "$OTHER"
SECOND=$?
set -e
echo
echo "test: all the tests not marked $HALF:"
cat "$LOG"
# pytest exits 5 when a half selects no test (e.g. a path given with none of them): fine unless both do
if [ "$FIRST" = 5 ] && [ "$SECOND" = 5 ]; then exit 5; fi
for rc in "$FIRST" "$SECOND"; do
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then exit "$rc"; fi
done
exit 0
