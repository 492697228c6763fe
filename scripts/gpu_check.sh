#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (a few minutes): make sure torch sees CUDA,
# run the lossless tests on both backends, then a small eager-vs-compiled benchmark on CUDA.
#
#   WORKBENCH_CUDA_INDEX  a PyTorch CUDA wheel index (e.g. .../whl/cu128) to install the CUDA
#                         build of the pinned torch from, when the installed torch has no CUDA
#   GPU_CHECK_TOKENS      new tokens per benchmark run (default 64)
# Prints the benchmark table; exits non-zero when CUDA is missing or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ -n "${WORKBENCH_CUDA_INDEX:-}" ]; then
    echo "gpu_check: installing the CUDA build of torch from $WORKBENCH_CUDA_INDEX"
    "$PY" -m pip install -q --force-reinstall --no-deps --index-url "$WORKBENCH_CUDA_INDEX" \
      "$("$PY" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])')"
  fi
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device;" \
         "set WORKBENCH_CUDA_INDEX to a PyTorch CUDA wheel index" >&2
    exit 2
  }
fi
"$PY" - <<'PY'
import torch
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
# Lossless under both backends (tests pin the tiny models to the CPU; these run the engine's CUDA path).
WORKBENCH_TEST_DEVICE=cuda "$PY" -m pytest -q -x tests/test_backend.py tests/test_engine.py \
  -k "greedy_token_identical or static_cache or sessions" -p no:cacheprovider
N="${GPU_CHECK_TOKENS:-64}"
.venv/bin/workbench --db "$(mktemp -d)/gpu_check.sqlite" bench --suite builtin --device cuda \
  --methods autoregressive,speculative,prompt_lookup,tree_dynamic --draft smollm2-135m:bf16 \
  --backends eager,compiled --max-new-tokens "$N" --repeats 3 --limit 1
