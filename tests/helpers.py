"""What several test modules share: prompts, fake cost profiles, small helpers. No fixtures (conftest.py).

Test modules import from here, never from one another (a test module imported by another one
has its tests' globals shared and is easy to break by editing it for its own tests).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workbench.backend import BACKENDS
from workbench.backend.profile import PROFILE_SIZES, CostModel

# Where the tiny models run: the CPU, or e.g. cuda for scripts/gpu_check.sh (WORKBENCH_TEST_DEVICE=cuda).
DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")

# The engine tests' prompts; conftest's tiny heads are trained on the target's answers to them.
PROMPTS = [
    [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100],
    [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2],
    list(range(40, 90)),
]

# Every backend as a parameter; the compiled one carries the `compiled` marker (torch.compile: minutes on a CPU).
BACKEND_PARAMS = [pytest.param(b, marks=pytest.mark.compiled) if b == "compiled" else b for b in BACKENDS]


class FlatCosts(CostModel):
    """A machine of chosen costs, handed to drafters through generate(costs=...) (their DrafterEnv): a forward of
    n tokens costs 1 + verify_x (n - 1) seconds for the model `target_spec`, draft_scale times that for any
    other model (a draft, a layer-skip view). verify_x 0 is a GPU's shape, larger values a CPU's."""

    def __init__(self, target_spec: str = "tiny-random", draft_scale: float = 0.05, verify_x: float = 0.0) -> None:
        self.target_spec, self.draft_scale, self.verify_x = target_spec, draft_scale, verify_x

    def profile(self, lm, backend: str = "eager") -> dict[int, float]:
        scale = 1.0 if lm.spec == self.target_spec else self.draft_scale
        return {n: scale * (1.0 + self.verify_x * (n - 1)) for n in PROFILE_SIZES}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`workbench ARGS` in this process: (exit code, stdout, stderr)."""
    from workbench.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def dead_pid() -> int:
    """The id of a process that has ended (a crashed writer's pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
