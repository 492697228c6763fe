"""Shared fixtures: tiny random models (fast), the embedded model (marked `real`), a temp store."""
from __future__ import annotations

import os

import pytest

from .helpers import DEVICE, PROMPTS


def pytest_configure(config):
    # Any local Ray instance a test starts binds and advertises loopback only (see workbench.cluster.address).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # The suite is a busy machine (two processes at once, one of them compiling): a cost profile measured
    # during it keeps its least noisy try instead of refusing (workbench.backend.profile); no test times it.
    os.environ.setdefault("WORKBENCH_NOISY_PROFILES", "keep")
    # Tiny models are dominated by per-op overhead: one intra-op thread is several times
    # faster than two, and far faster when the machine is busy.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_db(tmp_path, monkeypatch):
    """Never write to the user's run store from a test."""
    monkeypatch.setenv("WORKBENCH_DB", str(tmp_path / "runs.sqlite"))


@pytest.fixture(scope="session")
def tiny():
    from workbench.models import load_model

    return load_model("tiny-random", device=DEVICE)


@pytest.fixture(scope="session")
def tiny_other():
    """Same vocabulary, different weights: a draft that is often wrong."""
    from workbench.models import load_model

    return load_model("tiny-random:seed=1", device=DEVICE)


@pytest.fixture(scope="session")
def tiny_bf16():
    """A lower-precision copy of the target: a draft that is usually right."""
    from workbench.models import load_model

    return load_model("tiny-random:bf16", device=DEVICE)


@pytest.fixture(scope="session")
def smollm():
    from workbench.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smollm_bf16():
    from workbench.models import load_model

    return load_model("smollm2-135m:bf16", device="cpu")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WORKBENCH_SKIP_REAL") == "1":
        skip = pytest.mark.skip(reason="WORKBENCH_SKIP_REAL=1")
        for item in items:
            if "real" in item.keywords:
                item.add_marker(skip)


HEAD_TRAINED = ("eagle", "medusa", "hydra", "eagle3", "dflash", "pard")  # the head kinds trained for tiny-random
HEAD_METHODS = HEAD_TRAINED + ("blockwise",)  # the methods that draft with a trained head (blockwise: medusa's)


@pytest.fixture(scope="session")
def tiny_heads(tmp_path_factory):
    """Default heads for tiny-random (eagle, medusa, hydra, eagle3, dflash, pard), trained for a few seconds on its own outputs.

    The head methods find them by default through $WORKBENCH_HEADS (`_heads_dir` points it here for the
    tests that need them), so the registry-driven tests run them like every other method (subprocesses
    inherit the variable). A random model's text is noise a small head cannot learn in general, so the
    heads are trained on the target's responses to the engine tests' own prompts (greedy and sampled):
    enough for them to draft there, so a feature or position misalignment shows as a failed "actually drafts".
    The eagle, hydra and dflash heads fuse features (the engine hands them the feature layers' states too),
    the medusa head reads the final hidden states alone, the eagle3 head its three layers and drafts over a
    draft vocabulary of 128 tokens (d2t): every path runs through every registry test.
    """
    import json

    from workbench.train import TrainConfig, train

    root = tmp_path_factory.mktemp("heads")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt_ids": p}) for p in PROMPTS))
    for kind in HEAD_TRAINED:
        train(TrainConfig(kind=kind, target="tiny-random", prompts=str(prompts), samples=24, max_new_tokens=64,
                          fuse=kind in ("eagle", "hydra", "dflash"), vocab_trim=128 if kind == "eagle3" else 8192,
                          steps=200, lr=3e-3, device=DEVICE, out=str(root / f"tiny-random-{kind}"), store=False,
                          evaluate_prompts=0), quiet=True)
    return root


def _needs_heads(item) -> bool:
    """A test that runs a head method: marked `heads`, asking for `tiny_heads`, or parametrized with a head
    method (its name, or its registry class, as the registry-driven tests pass it)."""
    if item.get_closest_marker("heads") or "tiny_heads" in item.fixturenames:
        return True
    if item.get_closest_marker("real"):  # the embedded model's heads ship with the package
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(getattr(v, "name", v) in HEAD_METHODS for v in params.values() if isinstance(v, (str, type)))


@pytest.fixture(autouse=True)
def _heads_dir(request, tmp_path, monkeypatch):
    """$WORKBENCH_HEADS: the trained tiny heads for a test that needs them (trained once, on first need),
    an empty folder of its own for any other, so no test reads the user's heads or depends on another's."""
    if _needs_heads(request.node):
        monkeypatch.setenv("WORKBENCH_HEADS", str(request.getfixturevalue("tiny_heads")))
    else:
        monkeypatch.setenv("WORKBENCH_HEADS", str(tmp_path / "no-heads"))


@pytest.fixture
def recordings(monkeypatch) -> list[dict]:
    """Every Recording made while the test runs: its row and how it ended (a spy on the one class)."""
    from workbench.record import Recording

    made: list[dict] = []
    init, finish, fail = Recording.__init__, Recording.finish, Recording.fail

    def spy_init(self, store, trace, **row):
        init(self, store, trace, **row)
        made.append({"source": row.get("source"), "method": row.get("method"), "run_id": self.run_id, "ended": None})
        self._spied = made[-1]

    def spy_finish(self, trace, output_text, quality=None):
        finish(self, trace, output_text, quality)
        self._spied["ended"] = "finished"

    def spy_fail(self, exc, output_text=None, *, interrupted=False, error=None):
        if not self.closed:
            self._spied["ended"] = "interrupted" if interrupted else "failed"
        fail(self, exc, output_text, interrupted=interrupted, error=error)

    monkeypatch.setattr(Recording, "__init__", spy_init)
    monkeypatch.setattr(Recording, "finish", spy_finish)
    monkeypatch.setattr(Recording, "fail", spy_fail)
    return made
